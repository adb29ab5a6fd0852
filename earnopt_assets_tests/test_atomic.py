"""A writer killed with SIGKILL leaves its temp file or staging directory; the next write removes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from earnopt_assets.atomic import atomic_write_text
from earnopt_assets.modelstore import ModelStore


def _killed_writer(code: str) -> None:
    """Run ``code`` in a child that prints READY when its partial write exists, then SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "READY"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "latest.json"
    atomic_write_text(target, "old")
    _killed_writer(f"""
        import os, time
        open(os.path.join({str(tmp_path)!r}, ".latest.json." + str(os.getpid()) + ".abc.tmp"), "w").write("half")
        print("READY", flush=True); time.sleep(60)
    """)
    live = tmp_path / f".latest.json.{os.getppid()}.xyz.tmp"  # a live writer's (the test runner's parent)
    live.write_text("in progress")
    assert len(list(tmp_path.glob(".latest.json.*.tmp"))) == 2
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and list(tmp_path.glob(".latest.json.*.tmp")) == [live]


def test_a_killed_saves_staging_directory_is_removed_by_the_next_save(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "forecasting")
    with store.stage("honeygain") as staged:
        (staged / "weights.npz").write_bytes(b"good")
    _killed_writer(f"""
        from earnopt_assets.modelstore import ModelStore
        import time
        with ModelStore({str(tmp_path)!r}, "forecasting").stage("honeygain") as staged:
            (staged / "weights.npz").write_bytes(b"half")
            print("READY", flush=True); time.sleep(60)
    """)
    versions = store.model_dir("honeygain") / "versions"
    assert len(list(versions.glob(".staging-*"))) == 1
    with store.stage("honeygain") as staged:
        (staged / "weights.npz").write_bytes(b"next")
    assert not list(versions.glob(".staging-*")) and len(store.versions("honeygain")) == 2
