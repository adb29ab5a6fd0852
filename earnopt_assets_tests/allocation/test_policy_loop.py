"""The closed loop (#12 s2, s4): policies replayed against the environment, the risk rule, and the same loop
through the real allocation_job."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from earnopt_assets import closed_loop as cl
from earnopt_assets.allocation.allocator import DecisionThresholds, ReallocationCost, ReallocationDecision
from earnopt_assets.allocation.plan import assemble_inputs, compute_plan, initial_allocation
from earnopt_assets.allocation.risk import RISK_CRITERION, apply_risk_rule, downside_sd, gain_sd, planning_potentials
from earnopt_assets.environment import HostEnvironment
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.numerics.response import ResponseCurve
from earnopt_assets.warehouse import connect

END = "2026-01-31T23:00:00"


def _decision(net: float, *, forced: str | None = None) -> ReallocationDecision:
    return ReallocationDecision(
        reallocate=True, criteria={"net_benefit": True}, reasons=["base"], current_usd_per_hour=1.0, proposed_usd_per_hour=1.0 + net,
        improvement_usd_per_hour=net, improvement_pct=100 * net, change_l1=0.5,
        reallocation_cost=ReallocationCost(total_usd=0.0, items={}, change_threshold=0.05), amortised_cost_usd_per_hour=0.0,
        net_benefit_usd_per_hour=net, thresholds=DecisionThresholds(min_net_benefit_usd_per_hour=0.01), forced_reason=forced,
    )


def test_risk_rule_moves_only_when_the_gain_beats_the_cost_with_the_set_probability() -> None:
    assert downside_sd(1.0, 1.0 - 1.2815515655446004) == pytest.approx(1.0)
    assert downside_sd(1.0, None) == 0.0 and downside_sd(1.0, 1.5) == 0.0  # no interval, or one above the mean
    assert planning_potentials({"a": 1.0, "b": 0.1}, {"a": 0.2, "b": 0.5}, 1.0) == {"a": pytest.approx(0.8), "b": 0.0}
    curves = {"a": ResponseCurve(beta=1.0, scale_usd_per_hour=1.0), "b": ResponseCurve(beta=1.0, scale_usd_per_hour=1.0)}
    assert gain_sd({"a": 0.1, "b": 0.2}, curves, {"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 0.0}) == pytest.approx(0.05 + 0.1)

    neutral = apply_risk_rule(_decision(0.05), sd=0.05, risk_aversion=0.0)
    assert neutral.reallocate and neutral.criteria[RISK_CRITERION]
    cautious = apply_risk_rule(_decision(0.05), sd=0.05, risk_aversion=0.84)  # 0.05 - 0.042 = 0.008 < 0.01
    assert not cautious.reallocate and not cautious.criteria[RISK_CRITERION]
    assert "probability 84 %" in cautious.reasons[-1]
    assert apply_risk_rule(_decision(0.05, forced="breaks the host"), sd=0.05, risk_aversion=3.0).reallocate


def test_forecast_intervals_reach_the_plan(small_catalog) -> None:
    """assemble_inputs reads the 80 % interval; the plan records the gain's interval and the risk setting."""
    env = HostEnvironment(small_catalog, hours=15 * 24, seed=3, end=END)
    telemetry = env.run(env.random_allocation)
    now = (env.ts[-1] + pd.Timedelta(hours=1)).to_pydatetime()
    history = {n: g[["ts", "earnings_usd", "allocation"]] for n, g in telemetry.groupby("protocol")}
    targets = pd.date_range(now, periods=24, freq="h")
    forecasts = {n: pd.DataFrame({"target_ts": targets, "value": 0.01, "lower_80": 0.006, "source": "seasonal_naive_24_alloc",
                                  "forecast_time": now, "origin_ts": env.ts[-1]}) for n in history}
    inputs = assemble_inputs(small_catalog, now, history=history, forecasts=forecasts, state={}, degraded={})
    assert [p.forecast_sd_usd_per_hour for p in inputs.protocols.values()] == pytest.approx([0.004 / 1.2815515655446004] * 3)
    plan = compute_plan(inputs, small_catalog)
    low, high = plan.gain_interval_80
    assert plan.risk_aversion == small_catalog.allocation.risk_aversion == pytest.approx(0.84)
    assert low <= plan.decision.improvement_usd_per_hour <= high and RISK_CRITERION in plan.decision.criteria
    assert plan.to_json()["expected_gain_interval_80_usd_per_hour"] == [pytest.approx(low), pytest.approx(high)]


def test_static_policies_and_the_oracle_fit_the_host(catalog) -> None:
    for shares in (initial_allocation(catalog), cl.equal_shares(catalog)):
        assert cl.fits(shares, catalog)
    env, _ = cl.make_environment(catalog, seed=1, history_days=14, loop_days=2, end=END)
    oracle = cl.oracle_allocation(env, catalog)
    assert cl.fits(oracle, catalog) and set(oracle) == set(catalog.enabled_names)
    totals = {}
    for name, shares in (("catalog_initial", initial_allocation(catalog)), ("oracle", oracle)):
        env, _ = cl.make_environment(catalog, seed=1, history_days=14, loop_days=2, end=END)
        totals[name] = cl.static_policy(name, env, shares, seed=1).total_usd
    assert totals["oracle"] > totals["catalog_initial"]  # knowing the curves pays


def test_earnopt_loop_runs_hour_by_hour_and_applies_its_plans(small_catalog) -> None:
    env, history = cl.make_environment(small_catalog, seed=2, history_days=14, loop_days=1, end=END)
    first = env.hour
    loop = cl.EarnoptLoop(small_catalog, history)
    while not env.done:
        shares, _plan = loop.decide(env.now.to_pydatetime())
        loop.observe(env.step(shares))
    assert len(loop.plans) == 24 and loop.forecaster_used <= set(cl.FORECAST_CANDIDATES) and loop.forecaster_used
    targets = np.array([[p.protocols[n].target for n in env.names] for p in loop.plans])
    assert np.allclose(env.applied[first:], targets)  # what each plan set is what the host ran
    assert all(p.inputs.protocols[n].forecast_sd_usd_per_hour >= 0 for p in loop.plans for n in env.names)


def _insert(db: Path, rows: pd.DataFrame) -> None:
    with connect(db) as conn:
        ensure_raw_earnings(conn)
        conn.register("hour_rows", rows)
        conn.execute("INSERT INTO raw_earnings (device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb,"
                     " allocation, connection_failures, latency_ms) SELECT device, protocol, ts, earnings_usd, cpu_cores, memory_gb,"
                     " bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms FROM hour_rows")


def test_the_benchmarked_loop_is_the_one_the_schedule_runs(data_dir: Path, small_catalog, small_resources) -> None:
    """A short closed loop through the REAL allocation_job: each hour the job plans from the warehouse, the
    environment runs latest.json's shares, the hour is ingested; the benchmark's loop (same inputs: no
    forecast or alerts run yet) makes the same plan every hour."""
    from earnopt_assets.definitions import build_definitions

    now_hour = pd.Timestamp.now("UTC").floor("h").tz_localize(None)
    loop_hours = 3
    env = HostEnvironment(small_catalog, hours=12 * 24 + loop_hours, seed=5, end=now_hour, inject_anomalies=False)
    history = env.run(env.random_allocation[: 12 * 24])
    db = data_dir / "earnopt.duckdb"
    _insert(db, history)
    loop = cl.EarnoptLoop(small_catalog, history, use_forecasts=False, use_alerts=False)
    job = build_definitions(resources=small_resources).resolve_job_def("allocation_job")
    instance = dg.DagsterInstance.ephemeral()
    ran = []
    for _ in range(loop_hours):
        result = job.execute_in_process(instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("resource_allocation")[0].metadata
        assert " .. " in metadata["proposal_gain_interval_80_usd_per_h"].value and "80 % interval" in metadata["decision_analysis"].value
        document = json.loads((data_dir / "allocation" / "latest.json").read_text())
        scheduled = {n: a["allocation"] for n, a in document["actions"].items()}
        created = pd.Timestamp(document["created_at"].rstrip("Z")).to_pydatetime()
        shares, plan = loop.decide(created)
        assert shares == pytest.approx(scheduled, abs=1e-6)
        assert plan.status == document["status"] and plan.decision.reallocate == (document["decision"] == "reallocate")
        rows = env.step(scheduled)  # the orchestrator applies latest.json
        ran.append([scheduled[n] for n in env.names])
        _insert(db, rows)
        loop.observe(rows)
    assert np.allclose(env.applied[-loop_hours:], ran) and env.done
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM optimization_cycles").fetchone()[0] == loop_hours


def test_the_loop_forecasts_at_the_share_in_force_with_the_learned_curve(small_catalog) -> None:
    """Lags at another share are re-expressed at the share in force by the curve the last cycle learned,
    e'_t = e_t r(a_0) / r(a_t), so the forecast and the potential p = f / r(a_0) use one curve."""
    env, history = cl.make_environment(small_catalog, seed=2, history_days=30, loop_days=1, end=END)
    loop = cl.EarnoptLoop(small_catalog, history, use_forecasts=False, use_alerts=False)
    loop.decide(env.now.to_pydatetime())
    name = env.names[0]
    curve = loop.plans[-1].inputs.protocols[name].curve
    assert curve.learned
    frame = history[history["protocol"] == name].tail(48).reset_index(drop=True)
    low, high = curve.knots[0], curve.knots[-1]
    frame["allocation"] = [low] * 24 + [high] * 24
    out = loop._at_share_in_force(name, frame)
    assert (out["allocation"] == high).all()
    ratio = float(curve.at_share(high)) / float(curve.at_share(low))
    assert out["earnings_usd"].to_numpy()[:24] == pytest.approx(frame["earnings_usd"].to_numpy()[:24] * ratio)
    assert out["earnings_usd"].to_numpy()[24:] == pytest.approx(frame["earnings_usd"].to_numpy()[24:])
    assert cl.EarnoptLoop(small_catalog, history)._at_share_in_force(name, frame) is frame  # no cycle yet: unchanged


def test_a_lag_at_a_share_the_curve_pays_under_2_percent_at_says_nothing_about_the_share_in_force(small_catalog) -> None:
    """Seed 3: golem's lags at 0.15 (r ~ 1e-3, below its first lease) earned 0, and as 0 x r(0.75) / r(0.15)
    they made its forecast at 0.75 near zero; below the allocator's r = 0.02 they take the others' mean."""
    from dataclasses import replace

    env, history = cl.make_environment(small_catalog, seed=2, history_days=30, loop_days=1, end=END)
    loop = cl.EarnoptLoop(small_catalog, history, use_forecasts=False, use_alerts=False)
    loop.decide(env.now.to_pydatetime())
    name = env.names[0]
    curve = ResponseCurve(beta=0.5, scale_usd_per_hour=1.0, method="learned", knots=(0.15, 0.75), levels=(0.001, 1.0), hours=(24, 24))
    plan = loop.plans[-1]
    protocols = {**plan.inputs.protocols, name: replace(plan.inputs.protocols[name], curve=curve)}
    loop.plans[-1] = replace(plan, inputs=replace(plan.inputs, protocols=protocols))
    frame = history[history["protocol"] == name].tail(48).reset_index(drop=True)
    frame["allocation"] = [0.15] * 24 + [0.75] * 24
    frame["earnings_usd"] = [0.0] * 24 + [0.02] * 24
    out = loop._at_share_in_force(name, frame)
    assert out["earnings_usd"].to_numpy() == pytest.approx([0.02] * 48)
