"""The allocation cycle on a real DuckDB file: inputs, decision gating, history, realised earnings, plan file."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from earnopt_assets.allocation.allocator import (
    AllocationResult,
    ProtocolRequirements,
    ResourceAllocator,
    ResourceConstraints,
    check_constraints,
)
from earnopt_assets.allocation.cycle import read_cycle_inputs, run_allocation_cycle, write_latest_plan
from earnopt_assets.allocation.plan import compute_plan, initial_allocation
from earnopt_assets.allocation.store import ensure_allocation_tables, recent_cycles
from earnopt_assets.anomaly.store import ensure_state_tables
from earnopt_assets.defs.render import (
    allocation_decision_markdown,
    allocation_frame,
    recent_cycles_frame,
    utilisation_frame,
)
from earnopt_assets.forecasting.store import ensure_forecasts_table
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.allocation.helpers import load_telemetry

END = datetime(2026, 11, 20, 12)
NOW = END + timedelta(minutes=20)
LOOSE = {"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0}


def with_settings(catalog, **settings):
    return catalog.model_copy(update={"allocation": catalog.allocation.model_copy(update=settings)})


@pytest.fixture
def warehouse(data_dir: Path, small_catalog) -> Path:
    db = data_dir / "earnopt.duckdb"
    load_telemetry(db, simulate(small_catalog, days=10, seed=5, end=END, inject_anomalies=False).telemetry)
    return db


@pytest.fixture
def tight_catalog(small_catalog):
    """Three protocols on a host too small to run them all at full allocation: a real trade-off."""
    return small_catalog.model_copy(update={"host": small_catalog.host.model_copy(update={"cpu_cores": 4.0, "memory_gb": 6.0})})


def opener(db: Path):
    return lambda: connect(db)


def test_initial_allocation_is_feasible_and_uses_the_headroom(catalog, small_catalog) -> None:
    for cat in (catalog, small_catalog):
        initial = initial_allocation(cat)
        reqs = {p.name: ProtocolRequirements.from_spec(p) for p in cat.enabled}
        assert check_constraints(initial, reqs, ResourceConstraints.from_totals(cat.host.available())).passed
        assert all(initial[p.name] >= p.min_allocation for p in cat.enabled)
    # The default catalog does not fit at full allocation, so some resource is nearly full.
    used = check_constraints(initial_allocation(catalog), {p.name: ProtocolRequirements.from_spec(p) for p in catalog.enabled}, ResourceConstraints.from_totals(catalog.host.available())).metadata
    assert max(used[f"used_{r}"] / used[f"total_{r}"] for r in ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")) > 0.99


def test_empty_warehouse_gives_a_kept_plan_from_the_catalog(data_dir: Path, small_catalog) -> None:
    plan, realised = run_allocation_cycle(opener(data_dir / "earnopt.duckdb"), small_catalog, data_dir / "latest.json", now=NOW)
    assert plan.status == "kept" and not plan.applied and realised == 0
    # no telemetry yet (#17): the catalog prior, with the prior's wide interval
    assert {p.forecast_source for p in plan.protocols.values()} == {"prior"}
    assert all(p.forecast_sd_usd_per_hour > 0 for p in plan.inputs.protocols.values())
    assert {n: p.potential_usd_per_hour for n, p in plan.inputs.protocols.items()} == {
        s.name: s.prior_expected_usd_per_hour for s in small_catalog.enabled}
    assert all(p.action == "keep" for p in plan.protocols.values())
    with connect(data_dir / "earnopt.duckdb") as conn:
        state = dict(conn.execute("SELECT protocol, source FROM allocation_state").fetchall())
    assert state == {}  # catalog initial shares are not in force: nothing recorded as running
    assert json.loads((data_dir / "latest.json").read_text())["allocations"] == {}


def test_fallback_forecast_and_response_curves_from_raw_earnings(warehouse: Path, small_catalog) -> None:
    with connect(warehouse) as conn:
        inputs = read_cycle_inputs(conn, small_catalog, NOW)
    for item in inputs.protocols.values():
        assert item.forecast_source == "seasonal_naive_fallback" and "no forecast" in item.forecast_detail
        assert item.forecast_usd_per_hour > 0 and item.observed_allocation is not None
        assert item.curve.method in ("fit", "prior", "learned") and 0.1 <= item.curve.beta <= 0.95
        # p = f / r(a) at the share the fallback was made for (the learned curve's interpolant there)
        assert item.potential_usd_per_hour == pytest.approx(item.forecast_usd_per_hour / item.curve.at_share(item.observed_allocation))
        assert item.state_source == "initial" and not item.degraded


def insert_forecasts(db: Path, protocol: str, forecast_time: datetime, values: list[float], source: str = "lstm") -> None:
    with connect(db) as conn:
        ensure_forecasts_table(conn)  # the forecasting area's own DDL, so a schema change shows up here
        conn.executemany(
            "INSERT INTO forecasts (forecast_time, device, protocol, origin_ts, target_ts, horizon_hours, value, model_version, source)"
            " VALUES (?, 'local', ?, ?, ?, ?, ?, 'v1', ?)",
            [[forecast_time, protocol, forecast_time, forecast_time + timedelta(hours=h + 1), h + 1, v, source] for h, v in enumerate(values)],
        )


def test_latest_forecast_is_used_mean_or_next_hour(warehouse: Path, small_catalog) -> None:
    insert_forecasts(warehouse, "akash", END - timedelta(hours=3), [9.0] * 24)  # older: ignored
    insert_forecasts(warehouse, "akash", END, [0.02] + [0.04] * 23)
    insert_forecasts(warehouse, "storj", END - timedelta(days=3), [0.5] * 24)  # stale: fallback
    insert_forecasts(warehouse, "ghost", END, [1.0] * 24)  # not in the catalog: ignored
    with connect(warehouse) as conn:
        mean = read_cycle_inputs(conn, small_catalog, NOW).protocols
        next_hour = read_cycle_inputs(conn, with_settings(small_catalog, expected_earnings="next_hour"), NOW).protocols
    assert mean["akash"].forecast_source == "lstm"
    assert mean["akash"].forecast_usd_per_hour == pytest.approx((0.02 + 23 * 0.04) / 24)
    assert next_hour["akash"].forecast_usd_per_hour == pytest.approx(0.02)
    assert mean["storj"].forecast_source == "seasonal_naive_fallback" and "before now" in mean["storj"].forecast_detail
    assert "ghost" not in mean


def test_degraded_protocol_is_capped_and_restarted(warehouse: Path, tight_catalog) -> None:
    with connect(warehouse) as conn:
        ensure_state_tables(conn)  # the anomaly area's own DDL
        conn.executemany(
            "INSERT INTO protocol_state (device, protocol, state, reason, since, updated_at) VALUES ('local', ?, ?, ?, ?, ?)",
            [
                ["honeygain", "degraded", "earnings 80% below baseline", NOW, NOW],
                ["akash", "healthy", "", NOW, NOW],
                ["retired", "degraded", "x", NOW, NOW],
            ],
        )
    catalog = with_settings(tight_catalog, **LOOSE)
    plan, _ = run_allocation_cycle(opener(warehouse), catalog, warehouse.parent / "latest.json", now=NOW)
    honeygain = plan.protocols["honeygain"]
    assert honeygain.degraded and honeygain.action == "restart" and "80% below" in honeygain.reason
    assert honeygain.proposed == pytest.approx(tight_catalog.require("honeygain").min_allocation, abs=1e-7)
    assert not plan.protocols["akash"].degraded
    assert any("retired" in note for note in plan.inputs.notes)
    assert plan.decision.reallocation_cost.items["honeygain"].total_usd == 0.0  # restarts anyway: not charged


def test_applied_plan_updates_state_history_and_latest_json(warehouse: Path, tight_catalog) -> None:
    catalog = with_settings(tight_catalog, **LOOSE)
    latest = warehouse.parent / "allocation" / "latest.json"
    plan, _ = run_allocation_cycle(opener(warehouse), catalog, latest, now=NOW)
    assert plan.status == "applied" and plan.applied and plan.checks_passed and plan.decision.reallocate
    document = json.loads(latest.read_text())
    assert document["applied"] and document["decision"] == "reallocate"
    assert document["allocations"] == pytest.approx(plan.result.allocations)
    assert set(document["actions"]) == {"honeygain", "storj", "akash"}
    assert {a["action"] for a in document["actions"].values()} <= {"restart", "adjust", "keep"}
    assert document["expected_gain_usd_per_hour"] == pytest.approx(plan.decision.improvement_usd_per_hour)
    with connect(warehouse) as conn:
        state = {p: (a, s) for p, a, s in conn.execute("SELECT protocol, allocation, source FROM allocation_state").fetchall()}
        history = conn.execute("SELECT count(*), min(status) FROM allocations WHERE cycle_id = ?", [plan.cycle_id]).fetchone()
        cycle = conn.execute("SELECT decision, status, applied, checks_passed, analysis FROM optimization_cycles").fetchone()
    assert {p: v[0] for p, v in state.items()} == pytest.approx(plan.result.allocations)
    assert {v[1] for v in state.values()} == {"optimizer"}
    assert history == (3, "applied")
    assert cycle[:4] == ("reallocate", "applied", True, True)
    assert json.loads(cycle[4])["decision_analysis"]["reallocate"] is True

    # Next tick: the optimum is already running, so nothing moves.
    again, _ = run_allocation_cycle(opener(warehouse), catalog, latest, now=NOW + timedelta(minutes=15))
    assert again.status == "kept" and all(p.action == "keep" for p in again.protocols.values())
    assert again.decision.change_l1 < 1e-4


def test_default_thresholds_keep_the_running_allocation(warehouse: Path, small_catalog) -> None:
    # the code's default floor ($0.50/h; data/catalog.yaml scales it down for a home node)
    small_catalog = with_settings(small_catalog, min_net_benefit_usd_per_hour=0.5)
    plan, _ = run_allocation_cycle(opener(warehouse), small_catalog, warehouse.parent / "latest.json", now=NOW)
    assert plan.status == "kept" and not plan.decision.criteria["net_benefit"]  # cents per hour never reach $0.50/h
    assert plan.target == {n: p.current for n, p in plan.protocols.items()}
    with connect(warehouse) as conn:
        assert conn.execute("SELECT count(*) FROM allocation_state").fetchone()[0] == 0  # a kept plan sets nothing in force
    assert "Decision: keep" in allocation_decision_markdown(plan) and "akash" in set(allocation_frame(plan, small_catalog)["protocol"])
    assert "memory_gb" in set(utilisation_frame(plan, small_catalog)["resource"])


def test_infeasible_catalog_is_rejected_and_not_applied(data_dir: Path, small_catalog) -> None:
    crowded = small_catalog.model_copy(update={"host": small_catalog.host.model_copy(update={"memory_gb": 1.0, "reserved": small_catalog.host.reserved.model_copy(update={"memory_gb": 0.5})})})
    crowded = with_settings(crowded, **LOOSE)
    load_telemetry(data_dir / "earnopt.duckdb", simulate(small_catalog, days=3, seed=1, end=END).telemetry)
    latest = data_dir / "latest.json"
    plan, _ = run_allocation_cycle(opener(data_dir / "earnopt.duckdb"), crowded, latest, now=NOW)
    assert plan.status == "rejected" and not plan.applied
    assert plan.result.solver_status == "infeasible"
    assert not plan.checks["solver_status_optimal"].passed and "memory_gb" in plan.checks["solver_status_optimal"].description
    assert not plan.checks["constraints_satisfied"].passed
    document = json.loads(latest.read_text())
    assert document["status"] == "rejected" and document["allocations"] == pytest.approx(plan.target)
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert conn.execute("SELECT count(*) FROM allocation_state WHERE source = 'optimizer'").fetchone()[0] == 0


class OverAllocating(ResourceAllocator):
    """A broken optimiser: reports optimal but hands back 20 % more than the host has."""

    def optimize_allocation(self, *args, **kwargs) -> AllocationResult:
        result = super().optimize_allocation(*args, **kwargs)
        return AllocationResult(
            allocations={n: min(1.0, x * 1.2 + 0.1) for n, x in result.allocations.items()},
            expected_earnings=result.expected_earnings * 2,
            resource_utilization=result.resource_utilization,
            is_optimal=True,
            solver_status="optimal",
            solve_seconds=result.solve_seconds,
            solver=result.solver,
        )


def test_failed_constraints_check_blocks_an_otherwise_wanted_reallocation(warehouse: Path, tight_catalog) -> None:
    catalog = with_settings(tight_catalog, **LOOSE)
    with connect(warehouse) as conn:
        inputs = read_cycle_inputs(conn, catalog, NOW)
    allocator = OverAllocating(ResourceConstraints.from_totals(catalog.host.available()))
    plan = compute_plan(inputs, catalog, allocator)
    assert plan.decision.reallocate and plan.checks["solver_status_optimal"].passed
    assert not plan.checks["constraints_satisfied"].passed and "uses" in plan.checks["constraints_satisfied"].description
    assert plan.status == "rejected" and not plan.applied
    assert plan.target == {n: p.current for n, p in plan.protocols.items()}


def test_realised_earnings_are_filled_when_telemetry_arrives(warehouse: Path, tight_catalog) -> None:
    catalog = with_settings(tight_catalog, **LOOSE)
    first, _ = run_allocation_cycle(opener(warehouse), catalog, warehouse.parent / "latest.json", now=NOW)
    later = simulate(tight_catalog, days=1, seed=9, end=END + timedelta(hours=24), inject_anomalies=False).telemetry
    later = later[later["ts"] > pd.Timestamp(END)]
    arrived = later[later["ts"] <= pd.Timestamp(END + timedelta(hours=5))]
    load_telemetry(warehouse, arrived)
    _, updated = run_allocation_cycle(opener(warehouse), catalog, warehouse.parent / "latest.json", now=END + timedelta(hours=5, minutes=10))
    assert updated == 1
    with connect(warehouse) as conn:
        realised, hours, vs_expected, expected = conn.execute(
            "SELECT realised_usd_per_hour, realised_hours, realised_vs_expected_pct, expected_target_usd_per_hour"
            " FROM optimization_cycles WHERE cycle_id = ?",
            [first.cycle_id],
        ).fetchone()
    window = arrived[arrived["ts"] >= pd.Timestamp(END + timedelta(hours=1))]
    assert hours == 5
    assert realised == pytest.approx(window.groupby("ts")["earnings_usd"].sum().mean())
    assert vs_expected == pytest.approx(100 * (realised - expected) / expected)

    load_telemetry(warehouse, later[later["ts"] > pd.Timestamp(END + timedelta(hours=5))])
    _, updated = run_allocation_cycle(opener(warehouse), catalog, warehouse.parent / "latest.json", now=END + timedelta(hours=24, minutes=5))
    with connect(warehouse) as conn:
        hours = conn.execute("SELECT realised_hours FROM optimization_cycles WHERE cycle_id = ?", [first.cycle_id]).fetchone()[0]
    assert hours == 24 and updated >= 1  # hours END+1h .. END+24h: the whole 24-hour window
    with connect(warehouse) as conn:
        table = recent_cycles_frame(recent_cycles(conn, "local"))
    assert len(table) == 3 and ("reallocate", "applied") in set(zip(table["decision"], table["status"]))
    assert (table["realised_hours"] == 0).any()  # the newest cycle's hours have not arrived: pending


def test_plan_file_write_is_atomic(warehouse: Path, small_catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    latest = warehouse.parent / "allocation" / "latest.json"
    plan, _ = run_allocation_cycle(opener(warehouse), small_catalog, latest, now=NOW)
    before = latest.read_bytes()
    with connect(warehouse) as conn:
        second = compute_plan(read_cycle_inputs(conn, small_catalog, NOW + timedelta(minutes=15)), small_catalog)

    def crash(fd: int) -> None:
        raise OSError("disk went away mid-write")

    import earnopt_assets.atomic as atomic

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="mid-write"):
        write_latest_plan(latest, second)
    monkeypatch.undo()
    assert latest.read_bytes() == before
    assert json.loads(before)["cycle_id"] == plan.cycle_id
    assert [p.name for p in latest.parent.iterdir()] == ["latest.json"]  # no temp file left behind
    write_latest_plan(latest, second)
    assert json.loads(latest.read_text())["cycle_id"] == second.cycle_id


def test_tables_are_created_idempotently(data_dir: Path) -> None:
    with connect(data_dir / "w.duckdb") as conn:
        assert recent_cycles(conn, "local").empty  # no table yet
        ensure_allocation_tables(conn)
        ensure_allocation_tables(conn)
        assert recent_cycles(conn, "local").empty and list(recent_cycles_frame(recent_cycles(conn, "local")).columns)
        names = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"allocation_state", "allocations", "optimization_cycles"} <= names


def test_json_is_strict_and_complete(warehouse: Path, small_catalog) -> None:
    with connect(warehouse) as conn:
        plan = compute_plan(read_cycle_inputs(conn, small_catalog, NOW), small_catalog)
    text = json.dumps(plan.to_json(), default=str, allow_nan=False)
    document = json.loads(text)
    assert {"cycle_id", "status", "allocations", "actions", "expected_gain_usd_per_hour", "decision_analysis", "checks", "solver"} <= set(document)
    assert document["inputs"]["akash"]["response_curve"]["method"] in ("fit", "prior")
    assert os.path.basename(str(warehouse)) == "earnopt.duckdb"


def test_odd_neighbour_tables_degrade_gracefully(warehouse: Path, small_catalog) -> None:
    insert_forecasts(warehouse, "akash", END, [-0.01] * 24)  # a forecast below zero is not an earning
    with connect(warehouse) as conn:
        conn.execute("CREATE TABLE protocol_state (device VARCHAR, protocol VARCHAR, health VARCHAR)")  # wrong schema
        inputs = read_cycle_inputs(conn, small_catalog, NOW)
    assert inputs.protocols["akash"].forecast_usd_per_hour == 0.0
    assert any("akash: forecast" in note for note in inputs.notes)
    assert any("protocol_state unreadable" in note for note in inputs.notes)
    assert not any(p.degraded for p in inputs.protocols.values())


class Inaccurate(ResourceAllocator):
    """Reports its (feasible) answer as optimal_inaccurate, as ECOS and CLARABEL both might on a hard instance."""

    def optimize_allocation(self, *args, **kwargs) -> AllocationResult:
        result = super().optimize_allocation(*args, **kwargs)
        return AllocationResult(**{**result.__dict__, "is_optimal": False, "solver_status": "optimal_inaccurate"})


def test_inaccurate_solve_warns_and_is_not_applied(warehouse: Path, tight_catalog) -> None:
    import dagster as dg

    from earnopt_assets.defs.allocation import _check_results

    catalog = with_settings(tight_catalog, **LOOSE)
    with connect(warehouse) as conn:
        inputs = read_cycle_inputs(conn, catalog, NOW)
    plan = compute_plan(inputs, catalog, Inaccurate(ResourceConstraints.from_totals(catalog.host.available())))
    assert plan.decision.reallocate and plan.checks["constraints_satisfied"].passed
    assert plan.status == "rejected" and not plan.applied
    results = {r.check_name: r for r in _check_results(plan)}
    assert not results["solver_status_optimal"].passed
    assert results["solver_status_optimal"].severity == dg.AssetCheckSeverity.WARN
    assert results["constraints_satisfied"].passed


class OutOfBoundsSolver(ResourceAllocator):
    """A solver whose raw x leaves a protocol's bounds; clipping alone would make the plan look fine."""

    def optimize_allocation(self, *args, **kwargs) -> AllocationResult:
        result = super().optimize_allocation(*args, **kwargs)
        name = sorted(result.allocations)[0]
        raw = {**result.allocations, name: result.allocations[name] + 0.3}
        return AllocationResult(**{**result.__dict__, "raw_allocations": raw, "max_clip": 0.3})


def test_constraints_check_reads_the_solvers_raw_solution_before_clipping(warehouse: Path, tight_catalog) -> None:
    catalog = with_settings(tight_catalog, **LOOSE)
    with connect(warehouse) as conn:
        inputs = read_cycle_inputs(conn, catalog, NOW)
    totals = ResourceConstraints.from_totals(catalog.host.available())
    good = compute_plan(inputs, catalog, ResourceAllocator(totals))
    assert good.checks["constraints_satisfied"].passed
    assert good.checks["constraints_satisfied"].metadata["max_clip_share"] < 1e-6  # clipping recorded, tiny
    bad = compute_plan(inputs, catalog, OutOfBoundsSolver(totals))
    check = bad.checks["constraints_satisfied"]
    assert not check.passed and check.metadata["max_clip_share"] == pytest.approx(0.3)
    assert bad.status == "rejected" and not bad.applied
