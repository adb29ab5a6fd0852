"""A real ``dagster-webserver`` for tests (not a test module): free port, tmp DAGSTER_HOME, no daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from earnopt_assets_tests.service.helpers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_daemonless_instance(home: Path) -> Path:
    """The shipped local instance config, but runs go straight to the launcher (no daemon in tests)."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@contextmanager
def running_webserver(home: Path, data_dir: Path, catalog_path: Path, log_path: Path, timeout_s: float = 180) -> Iterator[str]:
    """Serve the workspace as the UI does; yields the base URL and stops the server afterwards."""
    write_daemonless_instance(home)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(catalog_path)}
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if httpx.get(url + "/server_info", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dagster-webserver did not start:\n" + log_path.read_text()[-4000:])
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
