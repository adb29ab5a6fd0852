"""Every cycle starts from the allocation actually in force (issue #12 section 3).

The last applied plan counts when telemetry confirms it (or while its first hour has not arrived), else the
last share telemetry reports; disagreements are said; a kept plan never records catalog shares as running;
potentials are computed at the share the forecast was made for.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from earnopt_assets.allocation import store
from earnopt_assets.allocation.cycle import read_cycle_inputs, run_allocation_cycle
from earnopt_assets.allocation.plan import allocation_in_force, initial_allocation
from earnopt_assets.defs.allocation import allocation_metadata
from earnopt_assets.forecasting.store import ensure_forecasts_table
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.allocation.helpers import load_telemetry

END = datetime(2026, 11, 20, 12)
NOW = END + timedelta(minutes=20)
LOOSE = {"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0}


def _tight(small_catalog, **settings):
    host = small_catalog.host.model_copy(update={"cpu_cores": 4.0, "memory_gb": 6.0})
    return small_catalog.model_copy(update={"host": host, "allocation": small_catalog.allocation.model_copy(update=settings)})


def _telemetry(catalog, end: datetime, days: int, shares: dict[str, float], after: datetime | None = None) -> pd.DataFrame:
    frame = simulate(catalog, days=days, seed=5, end=end, inject_anomalies=False).telemetry
    frame["allocation"] = frame["protocol"].map(shares)
    return frame if after is None else frame[frame["ts"] > pd.Timestamp(after)]


@pytest.fixture
def running(data_dir: Path, small_catalog):
    """A tight host whose protocols report running at a feasible share (the catalog's initial one)."""
    catalog = _tight(small_catalog, **LOOSE)
    shares = initial_allocation(catalog)
    db = data_dir / "earnopt.duckdb"
    load_telemetry(db, _telemetry(catalog, END, 6, shares))
    return catalog, db, shares


def _cycle(db: Path, catalog, now: datetime):
    latest = db.parent / "allocation" / "latest.json"
    plan, realised = run_allocation_cycle(lambda: connect(db), catalog, latest, now=now)
    with connect(db) as conn:
        cycles = store.recent_cycles(conn, plan.device)
    return plan, allocation_metadata(plan, catalog, cycles, realised, latest), json.loads(latest.read_text())


def test_without_a_plan_the_cycle_starts_from_the_reported_shares(data_dir: Path, small_catalog) -> None:
    catalog = small_catalog.model_copy(update={"allocation": small_catalog.allocation.model_copy(update={"min_improvement_pct": 1e6})})
    reported = {"honeygain": 0.42, "storj": 0.67, "akash": 0.5}
    db = data_dir / "earnopt.duckdb"
    load_telemetry(db, _telemetry(catalog, END, 4, reported))
    plan, metadata, document = _cycle(db, catalog, NOW)
    assert plan.status == "kept"
    assert {n: p.current_allocation for n, p in plan.inputs.protocols.items()} == pytest.approx(reported)
    assert {p.current_source for p in plan.inputs.protocols.values()} == {"telemetry"}
    assert document["allocations"] == pytest.approx(reported)  # what runs, not the catalog's initial shares
    with connect(db) as conn:
        assert store.read_allocation_state_rows(conn, "local", list(reported)) == {}
    assert {r.data["current_basis"] for r in metadata["allocation_table"].records} == {"telemetry"}


def test_nothing_known_means_nothing_in_force(data_dir: Path, small_catalog) -> None:
    plan, _, document = _cycle(data_dir / "earnopt.duckdb", small_catalog, NOW)
    assert plan.status == "kept" and document["allocations"] == {}
    assert all(not p.in_force for p in plan.inputs.protocols.values())
    assert all("share not known" in p.reason for p in plan.protocols.values())


def test_an_applied_plan_is_in_force_while_its_first_hour_is_pending_then_when_confirmed(running) -> None:
    catalog, db, _ = running
    first, _, _ = _cycle(db, catalog, NOW)
    assert first.applied
    # 15 minutes later no hour after the plan has been reported: the plan counts, nothing moves again.
    pending, _, _ = _cycle(db, catalog, NOW + timedelta(minutes=15))
    assert {p.current_source for p in pending.inputs.protocols.values()} == {"applied_plan_unconfirmed"}
    assert {n: p.current_allocation for n, p in pending.inputs.protocols.items()} == pytest.approx(first.target)
    assert pending.status == "kept" and pending.restarts == []
    # The orchestrator applied it: the hours after report the plan's shares.
    load_telemetry(db, _telemetry(catalog, END + timedelta(hours=3), 1, first.target, after=END))
    confirmed, metadata, _ = _cycle(db, catalog, END + timedelta(hours=3, minutes=5))
    assert {p.current_source for p in confirmed.inputs.protocols.values()} == {"applied_plan"}
    assert {n: p.current_allocation for n, p in confirmed.inputs.protocols.items()} == pytest.approx(first.target)
    assert not any(p.disagreement for p in confirmed.inputs.protocols.values())
    assert "agree" in metadata["plan_not_in_force"].value


def test_a_plan_the_orchestrator_did_not_apply_is_said_and_not_assumed(running) -> None:
    catalog, db, shares = running
    first, _, _ = _cycle(db, catalog, NOW)
    assert first.applied and first.restarts
    moved = [n for n in first.target if abs(first.target[n] - shares[n]) > 0.01]
    # The hours after the plan still report the old shares: the plan never ran.
    load_telemetry(db, _telemetry(catalog, END + timedelta(hours=3), 1, shares, after=END))
    again, metadata, _ = _cycle(db, catalog, END + timedelta(hours=3, minutes=5))
    for name in moved:
        item = again.inputs.protocols[name]
        assert item.current_source == "telemetry" and item.current_allocation == pytest.approx(shares[name])
        assert "did not apply" in item.disagreement
        assert f"- {name}: telemetry reports" in metadata["plan_not_in_force"].value
        assert any(note.startswith(f"{name}: telemetry reports") for note in again.inputs.notes)
    # The move is decided again from what runs, through the restart-cost rule.
    cost = again.decision.reallocation_cost
    assert {n: i.current for n, i in cost.items.items()} == pytest.approx(shares)
    assert again.applied and sorted(again.restarts) == sorted(cost.restarted)


def test_allocation_in_force_rules() -> None:
    plan = {"allocation": 0.4, "updated_at": datetime(2026, 11, 20, 12, 20), "cycle_id": "c1"}
    series = pd.DataFrame({"ts": pd.to_datetime(["2026-11-20 12:00", "2026-11-20 13:00"]), "allocation": [0.7, 0.405]})
    now = datetime(2026, 11, 20, 13, 30)
    assert allocation_in_force(plan, series, 0.9, now)[:2] == (0.4, "applied_plan")
    share, source, _, note = allocation_in_force(plan, series.assign(allocation=[0.7, 0.7]), 0.9, now)
    assert (share, source) == (0.7, "telemetry") and "did not apply" in note
    assert allocation_in_force(plan, series.iloc[:1], 0.9, datetime(2026, 11, 20, 13, 0))[:2] == (0.4, "applied_plan_unconfirmed")
    share, source, _, note = allocation_in_force(plan, series.iloc[:1], 0.9, datetime(2026, 11, 20, 18, 0))
    assert (share, source) == (0.7, "telemetry") and "no telemetry since" in note
    assert allocation_in_force(None, series, 0.9, now)[:2] == (0.405, "telemetry")
    assert allocation_in_force(None, None, 0.9, now)[:2] == (0.9, "catalog_initial")


def _insert_forecast(db: Path, protocol: str, forecast_time: datetime, origin: datetime, value: float) -> None:
    from earnopt_assets.forecasting.store import FORECAST_COLUMNS, write_forecasts

    rows = pd.DataFrame(
        {
            "forecast_time": forecast_time, "device": "local", "protocol": protocol, "origin_ts": origin,
            "target_ts": [origin + timedelta(hours=h + 1) for h in range(24)], "horizon_hours": list(range(1, 25)),
            "value": value, "model_version": "v1", "source": "lstm", "reason": None,
        }
    )
    for column in FORECAST_COLUMNS:  # the forecasting area's optional columns (intervals, flags), if any
        if column not in rows:
            rows[column] = False if column == "below_target" else None
    with connect(db) as conn:
        ensure_forecasts_table(conn)
        write_forecasts(conn, rows)


def test_potential_uses_the_share_the_forecast_was_made_for(running) -> None:
    catalog, db, shares = running
    # No plan yet: the forecast held the share reported at its origin hour.
    _insert_forecast(db, "akash", END, END, 0.05)
    with connect(db) as conn:
        held = read_cycle_inputs(conn, catalog, NOW).protocols["akash"]
    assert held.potential_usd_per_hour == pytest.approx(0.05 / shares["akash"] ** held.curve.beta)
    assert "held" in held.forecast_detail

    first, _, _ = _cycle(db, catalog, NOW)
    assert first.applied
    # A forecast made after the plan was conditioned on the plan's share (the forecast asset reads allocation_state).
    _insert_forecast(db, "akash", NOW + timedelta(minutes=5), END, 0.05)
    with connect(db) as conn:
        assert store.planned_allocations(conn, "local", ["akash"]) == {"akash": first.target["akash"]}
        planned = read_cycle_inputs(conn, catalog, NOW + timedelta(minutes=15)).protocols["akash"]
    assert planned.potential_usd_per_hour == pytest.approx(0.05 / first.target["akash"] ** planned.curve.beta)
    assert "conditioned on the planned share" in planned.forecast_detail
