"""Forecasting assets end to end: landing -> raw_earnings -> earnings_features -> earnings_model (2
partitions) + mape_within_target -> earnings_forecast, plus the automation condition, schedule and sensor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.defs import forecasting, ingestion
from earnopt_assets.forecasting.registry import read_model_summary
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate_to_dir
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.forecasting.helpers import END

TINY_MODEL_CONFIG = {"epochs": 2, "lstm_units_1": 8, "lstm_units_2": 4}


def model_run_config(target: float = 15.0) -> dict:
    return {
        "ops": {
            "earnings_model": {"config": {**TINY_MODEL_CONFIG, "mape_target_pct": target}},
            "earnings_model_mape_within_target": {"config": {"mape_target_pct": target}},
        }
    }


@pytest.fixture
def pipeline(small_catalog, small_resources, data_dir):
    """Simulated telemetry in landing, ingested and featurised through the real ingestion assets."""
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=21, seed=7, out_dir=paths.landing, end=END)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([ingestion.raw_earnings, ingestion.earnings_features], resources=small_resources, instance=instance)
    assert result.success
    return small_catalog, small_resources, paths, instance


def materialize_model(resources, instance, protocol: str, target: float = 15.0) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [forecasting.earnings_model, forecasting.mape_within_target],
        partition_key=protocol,
        resources=resources,
        instance=instance,
        run_config=model_run_config(target),
        raise_on_error=False,
    )


def forecasts(paths: EarnoptPaths) -> pd.DataFrame:
    with connect(paths.warehouse, read_only=True) as conn:
        return conn.execute("SELECT * FROM forecasts ORDER BY forecast_time, protocol, target_ts").df()


def test_two_partitions_end_to_end(pipeline):
    catalog, resources, paths, instance = pipeline
    outcomes = {}
    for protocol in ("honeygain", "storj"):
        result = materialize_model(resources, instance, protocol)
        materializations = result.asset_materializations_for_node("earnings_model")
        assert len(materializations) == 1
        metadata = materializations[0].metadata
        for key in ("model_mape", "naive24_mape", "naive168_mape", "model_r2", "epochs_run", "training_seconds", "parameter_count"):
            assert key in metadata, key
        assert metadata["epochs_run"].value == 2
        assert "| model |" in metadata["metrics"].value
        assert metadata["holdout_plot"].value.startswith("![")
        assert "data:image/png;base64," in metadata["holdout_plot"].value
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 1 and checks[0].asset_check_key.name == "mape_within_target"
        summary = read_model_summary(paths.models, protocol)
        assert summary is not None and summary["mape_check"]["passed"] == checks[0].passed
        assert (paths.models / protocol / "versions" / summary["version"] / "model.keras").exists()
        outcomes[protocol] = checks[0].passed

    result = dg.materialize([forecasting.earnings_forecast], resources=resources, instance=instance)
    assert result.success
    rows = forecasts(paths)
    assert set(rows["protocol"]) == {"honeygain", "storj", "akash"}
    for protocol, group in rows.groupby("protocol"):
        assert len(group) == 24
        assert np.isfinite(group["value"]).all() and (group["value"] >= 0).all()
        assert group["horizon_hours"].tolist() == list(range(1, 25))
        assert (group["target_ts"] - group["origin_ts"] == group["horizon_hours"].map(lambda h: pd.Timedelta(hours=h))).all()
    sources = rows.groupby("protocol")["source"].first().to_dict()
    reasons = rows.groupby("protocol")["reason"].first().to_dict()
    assert sources["akash"] == "seasonal_naive_fallback" and reasons["akash"].startswith("no_model")
    for protocol, passed in outcomes.items():
        assert sources[protocol] == ("lstm" if passed else "seasonal_naive_fallback")
        if not passed:
            assert reasons[protocol].startswith("check_failed")
    metadata = result.asset_materializations_for_node("earnings_forecast")[0].metadata
    assert metadata["rows_written"].value == 72


def test_failed_check_blocks_and_forces_the_fallback(pipeline):
    catalog, resources, paths, instance = pipeline
    # A target no model can meet: the blocking check fails and says why.
    result = materialize_model(resources, instance, "storj", target=0.001)
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "not below the 0.001% target" in evaluation.metadata["reasons"].value
    assert read_model_summary(paths.models, "storj")["mape_check"]["passed"] is False

    dg.materialize([forecasting.earnings_forecast], resources=resources, instance=instance)
    storj = forecasts(paths).query("protocol == 'storj'")
    assert set(storj["source"]) == {"seasonal_naive_fallback"}
    assert storj["reason"].iloc[0].startswith("check_failed: holdout MAPE")
    assert storj["model_version"].iloc[0] == read_model_summary(paths.models, "storj")["version"]


def test_model_needs_the_feature_snapshot(small_resources, data_dir):
    EarnoptPaths(data_dir).ensure()
    with pytest.raises(FileNotFoundError, match="materialize earnings_features first"):
        dg.materialize([forecasting.earnings_model], partition_key="storj", resources=small_resources, run_config={"ops": {"earnings_model": {"config": TINY_MODEL_CONFIG}}})


def test_forecast_refreshes_when_telemetry_lands_without_a_daemon(pipeline):
    _, resources, paths, instance = pipeline
    defs = dg.Definitions(
        assets=[ingestion.raw_earnings, ingestion.earnings_features, forecasting.earnings_model, forecasting.earnings_forecast],
        resources=resources,
    )
    key = dg.AssetKey("earnings_forecast")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # first tick only sets the cursor
    dg.materialize([ingestion.raw_earnings], resources=resources, instance=instance)  # new telemetry lands
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert landed.get_num_requested(key) == 1
    dg.materialize([forecasting.earnings_forecast], resources=resources, instance=instance)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=landed.cursor)
    assert quiet.get_num_requested(key) == 0  # handled; missing models (no partition trained) do not block


def test_daily_schedule_requests_every_enabled_partition(small_resources, small_catalog):
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 7, 1, 2, 30, tzinfo=timezone.utc), resources={"earnopt": small_resources["earnopt"]}
    )
    requests = forecasting.daily_model_retrain(context)
    assert sorted(r.partition_key for r in requests) == sorted(small_catalog.enabled_names)
    assert all(r.run_key.startswith("daily:2026-07-01:") for r in requests)
    assert requests[0].run_config["ops"]["earnings_model"]["config"]["epochs"] == forecasting.DAILY_RETRAIN_EPOCHS


@pytest.mark.slow
def test_definitions_load_without_tensorflow():
    import subprocess
    import sys

    code = "import sys, earnopt_assets.definitions as d; d.defs.get_repository_def(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
