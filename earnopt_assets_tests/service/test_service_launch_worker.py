"""The detached launch worker behind POST /train, run in-process: it records why a launch failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.service import launch_worker


def _record(tmp: Path, **overrides) -> Path:
    record = {"run_id": "6f1d3c2a-0000-4000-8000-000000000001", "protocol": "honeygain", "job": "no_such_job",
              "partition": "honeygain", "state": "LAUNCHING", "ingest_first": False, "run_config": {"ops": {}},
              "workspace_module": "earnopt_assets.definitions", "detail": None, **overrides}
    path = tmp / "record.json"
    atomic_write_json(path, record)
    return path


@pytest.mark.slow
def test_unknown_job_fails_the_launch(data_dir, small_catalog_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(data_dir / "dagster_home"))
    (data_dir / "dagster_home").mkdir()
    path = _record(data_dir, run_config={"ops": {"earnings_model": {"config": {"epochs": 1}}}})
    assert launch_worker.main([str(path)]) == 1
    record = json.loads(path.read_text())
    assert record["state"] == "FAILURE" and record["detail"].startswith("dagster job launch failed")
    assert "no_such_job" in record["detail"]


@pytest.mark.slow
def test_failed_ingestion_stops_before_training(data_dir, small_catalog_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(data_dir / "dagster_home"))
    (data_dir / "dagster_home").mkdir()
    path = _record(data_dir, ingest_first=True, workspace_module="earnopt_assets.no_such_module")
    assert launch_worker.main([str(path)]) == 1
    record = json.loads(path.read_text())
    assert record["state"] == "FAILURE" and "ingesting the posted rows failed" in record["detail"]
