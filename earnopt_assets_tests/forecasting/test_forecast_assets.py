"""Forecasting assets end to end: landing -> raw_earnings -> earnings_features -> earnings_model (2
partitions) + mape_within_target -> earnings_forecast, plus the automation condition, schedule and sensor."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.defs import forecasting, ingestion
from earnopt_assets.forecasting.registry import current_version, read_serving_decision
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate_to_dir
from earnopt_assets.warehouse import connect

TINY_MODEL_CONFIG = {"epochs": 2, "lstm_units_1": 8, "lstm_units_2": 4}
END = "2026-06-30T23:00"
# the model needs ~4 weeks of training rows after the feature warm-up and a 7-day holdout
SIMULATED_DAYS = 42


def model_run_config(target: float = 15.0) -> dict:
    return {"ops": {"earnings_model": {"config": {**TINY_MODEL_CONFIG, "mape_target_pct": target}}}}


@pytest.fixture
def pipeline(small_catalog, small_resources, data_dir):
    """Simulated telemetry in landing, ingested and featurised through the real ingestion assets."""
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(small_catalog, days=SIMULATED_DAYS, seed=7, out_dir=paths.landing, end=END)
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


@pytest.mark.slow
def test_two_partitions_end_to_end(pipeline):
    _, resources, paths, instance = pipeline
    decisions = {}
    for protocol in ("honeygain", "storj"):
        result = materialize_model(resources, instance, protocol)
        materializations = result.asset_materializations_for_node("earnings_model")
        assert len(materializations) == 1
        metadata = materializations[0].metadata
        # the one-line summary comes first and names the failing partitions (akash has never been trained)
        assert next(iter(metadata)) == "summary"
        assert "akash (serves not trained)" in metadata["summary"].value
        scores = metadata["metrics"]
        assert isinstance(scores, dg.TableMetadataValue)
        columns = [c.name for c in scores.schema.columns]
        assert {"candidate", "role", "serves", "mape_%", "mase", "mae_usd", "coverage_80_%", "coverage_95_%"} <= set(columns)
        candidates = {r.data["candidate"]: r.data for r in scores.records}
        assert {"seasonal_naive_24", "seasonal_naive_168", "mstl", "ets", "lstm"} <= set(candidates)
        assert candidates["lstm"]["role"] == "challenger"
        assert sum(bool(r["serves"]) for r in candidates.values()) == 1
        assert metadata["holdout_plot"].value.startswith("![") and "data:image/png;base64," in metadata["holdout_plot"].value
        assert isinstance(metadata["protocols"], dg.TableMetadataValue)
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 1 and checks[0].asset_check_key.name == "mape_within_target"
        decision = read_serving_decision(paths.models, protocol)
        assert decision is not None and decision.training["check"]["passed"] == checks[0].passed
        assert metadata["serves"].value == decision.source and metadata["check_passed"].value == checks[0].passed
        # CURRENT names the challenger only if it was promoted
        promoted = decision.training["promoted"]
        assert (current_version(paths.models, protocol) == decision.training["challenger_version"]) == promoted
        decisions[protocol] = decision

    result = dg.materialize([forecasting.earnings_forecast], resources=resources, instance=instance)
    assert result.success
    rows = forecasts(paths)
    assert set(rows["protocol"]) == {"honeygain", "storj", "akash"}
    for _, group in rows.groupby("protocol"):
        assert len(group) == 24
        assert np.isfinite(group["value"]).all() and (group["value"] >= 0).all()
        assert group["horizon_hours"].tolist() == list(range(1, 25))
        assert (group["target_ts"] - group["origin_ts"] == group["horizon_hours"].map(lambda h: pd.Timedelta(hours=h))).all()
    first = rows.groupby("protocol").first()
    # no training run yet with 10 days in the forecast window (#17): the statistical step, scored on the last 3 days
    assert first.loc["akash", "source"] in ("seasonal_naive_24", "seasonal_naive_168", "mstl", "ets")
    assert first.loc["akash", "reason"].startswith("no training run yet")
    for protocol, decision in decisions.items():
        group = rows.loc[rows["protocol"] == protocol]
        assert set(group["source"]) == {decision.source}  # named truthfully: the decided source, not "lstm"
        assert group["reason"].iloc[0] == decision.reason
        assert group[["lower_80", "upper_80", "lower_95", "upper_95"]].notna().all().all()
        assert (group["lower_95"] <= group["lower_80"]).all() and (group["upper_80"] <= group["upper_95"]).all()
        # a model version only where a model (the champion) produced the rows
        assert set(group["model_version"].dropna()) == ({decision.model_version} if decision.model_version else set())
    metadata = result.asset_materializations_for_node("earnings_forecast")[0].metadata
    assert metadata["rows_written"].value == 72
    serving = {r.data["protocol"]: r.data for r in metadata["serving"].records}
    assert serving["storj"]["source"] == decisions["storj"].source and serving["akash"]["below_target"] is True
    assert [c.name for c in metadata["forecasts"].schema.columns][:4] == ["protocol", "hour_utc", "earnings_usd_per_h", "lower_80_usd_per_h"]
    # the asset-level check is visible from the asset list and names the protocol below target
    (check,) = result.get_asset_check_evaluations()
    assert check.asset_check_key.name == "all_protocols_meet_target" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN and "akash" in check.description


def sabotage_challengers(monkeypatch):
    """Every model fitted from now on gets +8 standard deviations of correction on every hour at full blend
    weight (a deliberately bad challenger, through the real network weights it saves), so it scores far worse
    than the statistical candidates."""
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor

    fit = EarningsPredictor.fit

    def bad_fit(self, *args, **kwargs):
        history = fit(self, *args, **kwargs)
        for member in self.network.members:
            member.weights[-1]["bias"] = member.weights[-1]["bias"] + 8.0
        self.state.blend = 1.0
        return history

    monkeypatch.setattr(EarningsPredictor, "fit", bad_fit)


@pytest.mark.slow
def test_failing_challenger_is_not_used_by_the_forecast_job(pipeline, monkeypatch):
    """The blocking check's visible effect, through the real Dagster job: a challenger that fails its check
    never becomes champion, and earnings_forecast serves the previous champion or the statistical source."""
    _, resources, paths, instance = pipeline
    materialize_model(resources, instance, "storj")  # passes or not: it sets the champion or leaves none
    before = read_serving_decision(paths.models, "storj")
    champion_before = current_version(paths.models, "storj")

    sabotage_challengers(monkeypatch)
    result = materialize_model(resources, instance, "storj")
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "is worse than" in evaluation.description
    after = read_serving_decision(paths.models, "storj")
    challenger = after.training["challenger_version"]
    assert challenger != before.training["challenger_version"] and not after.training["promoted"]
    assert current_version(paths.models, "storj") == champion_before  # CURRENT did not move
    assert after.model_version != challenger and after.source == before.source
    metadata = result.asset_materializations_for_node("earnings_model")[0].metadata
    assert metadata["promoted"].value is False
    assert ("stays" if champion_before else "statistical candidates serve") in metadata["decision"].value

    forecast = dg.materialize([forecasting.earnings_forecast], resources=resources, instance=instance)
    assert forecast.success
    storj = forecasts(paths).query("protocol == 'storj'")
    assert set(storj["source"]) == {after.source}
    assert challenger not in set(storj["model_version"].dropna())
    if after.source in ("lstm", "lstm_base_only"):
        assert set(storj["model_version"]) == {champion_before}


def test_model_needs_the_feature_snapshot(small_resources, data_dir):
    EarnoptPaths(data_dir).ensure()
    with pytest.raises(FileNotFoundError, match="materialize earnings_features first"):
        dg.materialize([forecasting.earnings_model], partition_key="storj", resources=small_resources, run_config={"ops": {"earnings_model": {"config": TINY_MODEL_CONFIG}}})


def test_forecast_refreshes_when_telemetry_lands_without_a_daemon(pipeline):
    _, resources, _, instance = pipeline
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
        scheduled_execution_time=datetime(2026, 7, 1, 2, 30, tzinfo=UTC), resources={"earnopt": small_resources["earnopt"]}
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
