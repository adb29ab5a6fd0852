"""End to end through Dagster's own execution APIs: landing files in, an applied (or kept) plan out.

Uses the one ``Definitions`` object the UI loads (built with resources pointing at a tmp data dir), real
DuckDB, real tiny LSTMs, real sensors and the real 15-minute job.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from earnopt_assets.catalog import load_catalog
from earnopt_assets.definitions import build_definitions
from earnopt_assets.demo import materialize_stage
from earnopt_assets.resources import resources_for
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect

END = pd.Timestamp("2026-06-30T23:00")
DAYS = 26  # past the LSTM's 25-day minimum history (forecasting.warmup), so every model trains
HELD_BACK_HOURS = 6
TINY_MODEL = {"epochs": 2, "lstm_units_1": 8, "lstm_units_2": 4, "min_holdout_days": 3}
RESOURCE_KEYS = {"cpu_cores": "cpu_cores", "memory_gb": "memory_gb", "bandwidth_mbps": "bandwidth_mbps", "storage_gb": "storage_gb"}

# trains every protocol and runs the whole pipeline end to end
pytestmark = pytest.mark.slow


def _write_landing(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def _query(paths: EarnoptPaths, sql: str, params: list | None = None) -> pd.DataFrame:
    with connect(paths.warehouse, read_only=True) as conn:
        return conn.execute(sql, params or []).df()


class Pipeline:
    """The product wired as the UI wires it, on a tmp data dir."""

    def __init__(self, data_dir: Path, catalog_path: Path):
        self.paths = EarnoptPaths(data_dir).ensure()
        self.catalog_path = catalog_path
        self.catalog = load_catalog(catalog_path)
        self.defs = build_definitions(resources_for(data_dir, catalog_path))
        self.instance = dg.DagsterInstance.ephemeral()

    def reload(self) -> None:
        self.catalog = load_catalog(self.catalog_path)

    def run(self, *keys: str, partition_key: str | None = None, run_config: dict | None = None, must_succeed: bool = True) -> dg.ExecuteInProcessResult:
        if run_config is None:
            result = materialize_stage(self.defs, self.instance, list(keys), partition_key)
        else:
            result = dg.materialize(
                list(self.defs.assets) + list(self.defs.asset_checks),
                selection=dg.AssetSelection.assets(*keys),
                instance=self.instance,
                resources=self.defs.resources,
                partition_key=partition_key,
                run_config=run_config,
                raise_on_error=False,
            )
        assert result.success or not must_succeed, f"run of {keys} failed"
        return result

    def train_all(self) -> dict[str, bool]:
        passed = {}
        for protocol in self.catalog.enabled_names:
            result = self.run(
                "earnings_model",
                partition_key=protocol,
                run_config={"ops": {"earnings_model": {"config": TINY_MODEL}}},
                must_succeed=False,  # a failing blocking MAPE check fails the run; the fallback covers it
            )
            assert result.get_asset_materialization_events(), f"{protocol}: no model was materialized"
            evaluations = result.get_asset_check_evaluations()
            assert [e.check_name for e in evaluations] == ["mape_within_target"]
            passed[protocol] = evaluations[0].passed
        return passed

    def tick(self) -> dg.ExecuteInProcessResult:
        """One scheduled 15-minute tick: the schedule's own job, in process."""
        job = self.defs.resolve_job_def("allocation_job")
        result = job.execute_in_process(instance=self.instance, raise_on_error=False)
        assert result.success
        return result

    def latest_cycle(self) -> pd.Series:
        return _query(self.paths, "SELECT * FROM optimization_cycles ORDER BY created_at DESC LIMIT 1").iloc[0]


@pytest.fixture
def simulated(small_catalog):
    return simulate(small_catalog, days=DAYS, seed=11, end=END)


# A bar no plan clears: the cycle keeps, so the allocation telemetry reports stays in force.
BAR_THAT_KEEPS = {"min_improvement_pct": 1e6, "min_net_benefit_usd_per_hour": 1e6}
BAR_IN_CENTS = {"min_improvement_pct": 0.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 50.0, "risk_aversion": 0.0}


def _set_allocation_settings(pipe: Pipeline, settings: dict | None) -> None:
    """Replace the catalog's ``allocation`` settings (None: the catalog's defaults) and reload it."""
    raw = yaml.safe_load(pipe.catalog_path.read_text())
    raw.pop("allocation", None)
    if settings is not None:
        raw["allocation"] = dict(settings)
    pipe.catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    pipe.reload()


@pytest.fixture
def pipeline(request, data_dir, small_catalog_path, simulated) -> Pipeline:
    """Everything but the last few hours has landed and been materialized, and one tick has run.

    Parametrised indirectly with a dict of ``allocation`` settings, that tick (and the catalog the test
    starts from) uses them instead of the catalog's."""
    # A replay ending in the past: wall-clock silence (alerts.silent_lag_hours) would flag every protocol.
    raw = yaml.safe_load(small_catalog_path.read_text())
    raw.setdefault("alerts", {})["silent_lag_hours"] = 0
    fixture_settings = getattr(request, "param", None)
    if fixture_settings is not None:
        raw["allocation"] = dict(fixture_settings)
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    pipe = Pipeline(data_dir, small_catalog_path)
    telemetry = simulated.telemetry
    cutoff = END - pd.Timedelta(hours=HELD_BACK_HOURS)
    _write_landing(telemetry[telemetry["ts"] <= cutoff], pipe.paths.landing / "history.parquet")
    pipe.run("raw_earnings", "earnings_features")
    pipe.checks_passed = pipe.train_all()
    pipe.run("earnings_forecast", "anomaly_model", "anomalies", "alerts")
    pipe.tick()
    return pipe


def test_prediction_pipeline_reconciles_from_landing_to_plan(pipeline: Pipeline, simulated) -> None:
    paths, catalog = pipeline.paths, pipeline.catalog
    cutoff = END - pd.Timedelta(hours=HELD_BACK_HOURS)
    landed = simulated.telemetry[simulated.telemetry["ts"] <= cutoff]

    # Row counts reconcile: every landed row is in raw_earnings or quarantine, and the file was archived.
    raw_rows = int(_query(paths, "SELECT count(*) AS n FROM raw_earnings")["n"].iloc[0])
    quarantined = int(_query(paths, "SELECT count(*) AS n FROM quarantine")["n"].iloc[0])
    assert raw_rows + quarantined == len(landed)
    assert quarantined == 0
    assert not [p for p in paths.landing.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert any(paths.archive.rglob("history*.parquet"))
    feature_rows = _query(paths, "SELECT protocol, count(*) AS n, min(ts) AS first FROM earnings_features GROUP BY protocol")
    assert set(feature_rows["protocol"]) == set(catalog.enabled_names)
    # Features start after lag-168's warm-up and never outnumber the raw rows.
    assert (feature_rows["n"] <= raw_rows / len(catalog.enabled_names)).all()

    # Forecasts cover the next 24 hours for every enabled protocol, from the last observed hour.
    forecasts = _query(
        paths,
        "SELECT * FROM forecasts WHERE forecast_time = (SELECT max(forecast_time) FROM forecasts) ORDER BY protocol, target_ts",
    )
    for protocol in catalog.enabled_names:
        rows = forecasts[forecasts["protocol"] == protocol]
        assert len(rows) == 24, protocol
        targets = pd.DatetimeIndex(rows["target_ts"])
        assert targets[0] == cutoff + pd.Timedelta(hours=1)
        assert (targets[1:] - targets[:-1] == pd.Timedelta(hours=1)).all()
        assert np.isfinite(rows["value"]).all() and (rows["value"] >= 0).all()
        # the source its training run decided (the LSTM champion or the best statistical candidate), by name
        from earnopt_assets.forecasting.registry import read_serving_decision

        decision = read_serving_decision(paths.models, protocol)
        expected_source = decision.source if decision is not None else "seasonal_naive_fallback"
        assert set(rows["source"]) == {expected_source}, (protocol, rows["reason"].iloc[0])

    # The allocation respects every constraint of the catalog, and its checks passed.
    plan = json.loads(paths.latest_plan.read_text())
    allocation = plan["allocations"]
    for spec in catalog.enabled:
        share = allocation[spec.name]
        assert spec.min_allocation - 1e-6 <= share <= spec.max_allocation + 1e-6
    for resource, total in catalog.host.totals().items():
        used = sum(allocation[s.name] * getattr(s, resource) for s in catalog.enabled)
        assert used <= total * (1 + 1e-6), resource
    assert plan["checks"]["solver_status_optimal"]["passed"]
    assert plan["checks"]["constraints_satisfied"]["passed"]

    # The plan file on disk is the latest DuckDB cycle, protocol by protocol.
    cycle = pipeline.latest_cycle()
    assert plan["cycle_id"] == cycle["cycle_id"]
    assert plan["applied"] == bool(cycle["applied"])
    rows = _query(paths, "SELECT protocol, target_allocation, action FROM allocations WHERE cycle_id = ?", [plan["cycle_id"]])
    assert dict(zip(rows["protocol"], rows["target_allocation"])) == pytest.approx(allocation)
    assert dict(zip(rows["protocol"], rows["action"])) == {n: a["action"] for n, a in plan["actions"].items()}


def _decision_holds(analysis: dict, settings) -> bool:
    """The reallocation rule recomputed from the recorded figures (a forced restart of a degraded
    protocol also reallocates)."""
    improvement_pct = analysis["improvement_pct"]
    improvement_pct = float("inf") if improvement_pct == "inf" else float(improvement_pct or 0.0)
    if analysis.get("forced_reason"):
        return True
    return (
        improvement_pct >= settings.min_improvement_pct
        and analysis["net_benefit_usd_per_hour"] > settings.min_net_benefit_usd_per_hour
        and analysis["change_l1"] <= settings.max_change_l1 + 1e-9
        and analysis["criteria"].get("gain_beats_cost_with_probability", True)  # allocation.risk_aversion
    )


@pytest.mark.parametrize("pipeline", [BAR_THAT_KEEPS], indirect=True)
def test_new_telemetry_refreshes_forecasts_and_the_tick_follows_the_decision_rule(pipeline: Pipeline, simulated) -> None:
    """The fixture's tick ran under a bar that keeps, so the allocation in force is the one telemetry
    reports (the simulator's own shares), not the allocator's plan: a situation with a gain to take."""
    from earnopt_assets.defs.ingestion import landing_sensor

    paths = pipeline.paths
    first = pipeline.latest_cycle()
    assert not bool(first["applied"])
    assert _query(paths, "SELECT count(*) AS n FROM allocation_state WHERE source = 'optimizer'")["n"].iloc[0] == 0
    first_forecast = _query(paths, "SELECT max(forecast_time) AS t, max(target_ts) AS last FROM forecasts").iloc[0]

    # New telemetry arrives; the landing sensor asks for exactly one ingestion run, keyed by the file.
    fresh = simulated.telemetry[simulated.telemetry["ts"] > END - pd.Timedelta(hours=HELD_BACK_HOURS)]
    _write_landing(fresh, paths.landing / "fresh.parquet")
    context = dg.build_sensor_context(instance=pipeline.instance, resources=pipeline.defs.resources)
    result = landing_sensor(context)
    requests = result.run_requests if isinstance(result, dg.SensorResult) else list(result or [])
    assert len(requests) == 1 and requests[0].run_key
    pipeline.run("raw_earnings", "earnings_features")
    pipeline.run("earnings_forecast")
    refreshed = _query(paths, "SELECT max(forecast_time) AS t, max(target_ts) AS last FROM forecasts").iloc[0]
    assert refreshed["t"] >= first_forecast["t"]
    assert refreshed["last"] == first_forecast["last"] + pd.Timedelta(hours=HELD_BACK_HOURS)

    # Under the bar in force the tick applies the plan only if the rule holds (here it cannot: it keeps).
    pipeline.tick()
    cycle = pipeline.latest_cycle()
    analysis = json.loads(cycle["analysis"])["decision_analysis"]
    assert bool(cycle["applied"]) == _decision_holds(analysis, pipeline.catalog.allocation)
    assert not bool(cycle["applied"])
    # The situation has a gain: the plan beats the reported shares it starts from.
    assert float(analysis["improvement_pct"]) > 0.0, analysis

    # An operator lowers the bar to cents: the same situation now reallocates, and state follows.
    _set_allocation_settings(pipeline, BAR_IN_CENTS)
    pipeline.tick()
    cycle = pipeline.latest_cycle()
    analysis = json.loads(cycle["analysis"])["decision_analysis"]
    assert _decision_holds(analysis, pipeline.catalog.allocation)
    assert bool(cycle["applied"])
    state = _query(paths, "SELECT protocol, allocation FROM allocation_state")
    plan = json.loads(paths.latest_plan.read_text())
    assert dict(zip(state["protocol"], state["allocation"])) == pytest.approx(plan["allocations"])

    # Back on the catalog's default bar, the plan just applied is the allocation in force: the tick
    # again applies exactly when the rule holds.
    _set_allocation_settings(pipeline, None)
    pipeline.tick()
    cycle = pipeline.latest_cycle()
    analysis = json.loads(cycle["analysis"])["decision_analysis"]
    assert bool(cycle["applied"]) == _decision_holds(analysis, pipeline.catalog.allocation)


def test_injected_earnings_drop_alerts_degrades_and_caps_the_protocol(pipeline: Pipeline, simulated) -> None:
    paths, catalog = pipeline.paths, pipeline.catalog
    victim = "akash"
    spec = catalog.require(victim)
    fresh = simulated.telemetry[simulated.telemetry["ts"] > END - pd.Timedelta(hours=HELD_BACK_HOURS)].copy()
    hit = fresh["protocol"] == victim
    fresh.loc[hit, "earnings_usd"] = fresh.loc[hit, "earnings_usd"] * 0.02
    fresh.loc[hit, "connection_failures"] = 40
    _write_landing(fresh, paths.landing / "drop.parquet")
    pipeline.run("raw_earnings", "earnings_features")
    pipeline.run("anomalies", "alerts")

    alerts = _query(paths, "SELECT protocol, rule, severity, status FROM alerts WHERE protocol = ?", [victim])
    assert ((alerts["severity"] == "critical") & (alerts["status"] == "open")).any(), alerts
    state = _query(paths, "SELECT state FROM protocol_state WHERE protocol = ?", [victim])
    assert list(state["state"]) == ["degraded"]

    pipeline.tick()
    plan = json.loads(paths.latest_plan.read_text())
    action = plan["actions"][victim]
    # Capped at its minimum and restarted; the healthy protocols are not restarted for its sake.
    assert action["action"] == "restart"
    assert action["proposed"] == pytest.approx(spec.min_allocation, abs=1e-6)
    assert plan["inputs"][victim]["degraded_reason"]
    assert all(plan["inputs"][n]["degraded_reason"] is None for n in catalog.enabled_names if n != victim)
