"""Command 1's driver: from an empty data dir to every asset materialized on a persistent instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from earnopt_assets.catalog import load_catalog
from earnopt_assets.cli import main
from earnopt_assets.demo import ALLOCATION_STAGE, DOWNSTREAM_STAGE, INGEST_STAGE
from earnopt_assets_tests.integration.demo_process import run_demo_process

TINY = {"epochs": 2, "lstm_units_1": 8, "lstm_units_2": 4, "min_holdout_days": 3}


@pytest.mark.slow
def test_demo_simulates_once_and_materializes_everything(data_dir: Path, small_catalog_path: Path, dagster_home: Path) -> None:
    catalog = load_catalog(small_catalog_path)
    code, out = run_demo_process(data_dir, days=24, seed=5, model_config=TINY)
    assert "no telemetry yet: simulating 24 days" in out

    instance = dg.DagsterInstance.get()
    for key in (*INGEST_STAGE, *DOWNSTREAM_STAGE, *ALLOCATION_STAGE):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    materialized = instance.get_materialized_partitions(dg.AssetKey("earnings_model"))
    assert materialized == set(catalog.enabled_names)
    # Exit code is 0 exactly when no step or check failed; tiny models may honestly fail MAPE.
    assert (code == 0) == ("FAILED" not in out)
    assert (data_dir / "allocation" / "latest.json").exists()

    # A second run finds the archived telemetry and does not simulate again.
    code_again, out = run_demo_process(data_dir, days=24, seed=5, model_config=TINY)
    assert "not simulating" in out
    assert code_again in (0, 1)


def test_cli_simulate_writes_landing_and_labels(tmp_path: Path, small_catalog_path: Path) -> None:
    out = tmp_path / "landing"
    assert main(["simulate", "--days", "9", "--seed", "1", "--out", str(out), "--catalog", str(small_catalog_path), "--format", "csv"]) == 0
    assert sorted(p.suffix for p in out.iterdir() if p.is_file()) == [".csv"] * 3
    assert (tmp_path / "labels" / "labels.parquet").exists()
