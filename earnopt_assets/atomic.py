"""Atomic file writes: write beside the target, fsync, then rename, so a crash leaves the old file.

The temp file's name carries the writer's pid (``.<name>.<pid>.<random>.tmp``): a writer killed with
SIGKILL cannot remove its temp file, so the next write of the same target removes the temp files of
writers that are no longer alive (a live concurrent writer's file is left alone).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_writers_temp_files(target: Path) -> list[Path]:
    """Remove ``target``'s temp files left by writers that died (their pid no longer exists)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[^/]*\.tmp$")
    removed = []
    for candidate in target.parent.glob(f".{target.name}.*.tmp"):
        found = pattern.match(candidate.name)
        if found and int(found.group(1)) != os.getpid() and not pid_alive(int(found.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_temp_files(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
