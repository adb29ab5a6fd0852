"""The landing directory: listing, locking and keeping files. Nothing here ever deletes a file.

Files at the top level of ``landing/`` are processed oldest modification time first (hidden files,
i.e. temp files of an atomic write, are skipped). After a batch commits, each file moves to
``archive/`` (ingested) or ``landing/rejected/`` (unreadable); a name collision gets a ``__N`` suffix.
An ``flock`` on ``<data_dir>/.landing.ingest.lock`` (beside landing, so landing only ever holds data)
serialises ingestions across threads and processes, so no file is read by two ingestions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0


def landing_files(landing: Path) -> list[Path]:
    """Regular, non-hidden files at the top of ``landing``, oldest mtime first (then by name)."""
    if not landing.is_dir():
        return []
    files = [p for p in landing.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def unique_destination(directory: Path, name: str, reserved: set[Path] | None = None) -> Path:
    """``directory/name``, or ``stem__N.suffix`` with the first free N: never overwrite a kept file.
    ``reserved`` holds targets already promised to other files of the batch (and receives this one)."""
    directory.mkdir(parents=True, exist_ok=True)
    reserved = set() if reserved is None else reserved
    target = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while target.exists() or target in reserved:
        target = directory / f"{stem}__{n}{suffix}"
        n += 1
    reserved.add(target)
    return target


@contextlib.contextmanager
def landing_lock(landing: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive ``flock`` on ``<landing parent>/.<landing name>.ingest.lock`` (blocks threads and
    processes alike). The lock file lives beside landing so that landing only ever holds data files."""
    landing.mkdir(parents=True, exist_ok=True)
    lock_path = landing.parent / f".{landing.name}.ingest.lock"
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another ingestion holds {lock_path} for > {timeout_s}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class FileFacts:
    """What the ingest log records about a file as it arrived."""

    size_bytes: int
    mtime: datetime  # naive UTC
    sha256: str


def file_facts(path: Path) -> FileFacts:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return FileFacts(stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None), digest.hexdigest())


def keep_files(moves: list[tuple[Path, Path]]) -> None:
    """Move each processed landing file to its planned place (archive/ or landing/rejected/)."""
    for source, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        if target.parent.name == "rejected":
            log.warning("rejected landing file %s -> %s", source.name, target)
