"""Detached worker behind ``POST /train``: optional ingestion, then ``dagster job launch`` with a fixed
run id. Run as ``python -m earnopt_assets.service.launch_worker <launch-record.json>``; it updates the
record's ``state``/``detail`` so ``GET /runs/{id}`` can explain a failed launch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.service.training import INGEST_SELECTION


def _dagster_cli() -> list[str]:
    beside = Path(sys.executable).with_name("dagster")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dagster")
    if found:
        return [found]
    return [sys.executable, "-m", "dagster"]


def _update(path: Path, record: dict, **changes: object) -> None:
    record.update(changes)
    atomic_write_json(path, record)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    record_path = Path(args[0])
    record = json.loads(record_path.read_text())
    module = record["workspace_module"]
    cli = _dagster_cli()
    env = dict(os.environ)
    if record.get("ingest_first"):
        _update(record_path, record, state="LAUNCHING", detail="ingesting posted rows")
        ingest = subprocess.run(
            [*cli, "asset", "materialize", "-m", module, "--select", INGEST_SELECTION],
            env=env, capture_output=True, text=True,
        )
        sys.stdout.write(ingest.stdout + ingest.stderr)
        if ingest.returncode != 0:
            _update(record_path, record, state="FAILURE",
                    detail="ingesting the posted rows failed, training not started:\n" + _tail(ingest.stderr or ingest.stdout))
            return 1
    _update(record_path, record, state="LAUNCHING", detail="submitting the run to the Dagster instance")
    tags = {"dagster/partition": record["partition"], "earnopt/launched_by": "api"}
    command = [*cli, "job", "launch", "-m", module, "-j", record["job"], "--run-id", record["run_id"], "--tags", json.dumps(tags)]
    if record.get("run_config"):
        command += ["--config-json", json.dumps(record["run_config"])]
    launch = subprocess.run(
        command,
        env=env, capture_output=True, text=True,
    )
    sys.stdout.write(launch.stdout + launch.stderr)
    if launch.returncode != 0:
        _update(record_path, record, state="FAILURE", detail="dagster job launch failed:\n" + _tail(launch.stderr or launch.stdout))
        return 1
    _update(record_path, record, state="LAUNCHED", detail=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
