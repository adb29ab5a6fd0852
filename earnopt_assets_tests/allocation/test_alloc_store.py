"""allocation.store: the one owner of the allocation tables (DDL, reads, writes) on a real DuckDB file."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from earnopt_assets.allocation import store
from earnopt_assets.allocation.cycle import read_cycle_inputs
from earnopt_assets.allocation.plan import compute_plan
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
END = datetime(2026, 11, 20, 12)
NOW = END + timedelta(minutes=20)
LOOSE = {"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0}
TABLES = ("allocations", "allocation_state", "optimization_cycles")


def _catalog(small_catalog, tight: bool, **settings):
    host = small_catalog.host.model_copy(update={"cpu_cores": 4.0, "memory_gb": 6.0}) if tight else small_catalog.host
    return small_catalog.model_copy(update={"host": host, "allocation": small_catalog.allocation.model_copy(update=settings)})


def _warehouse(data_dir: Path, catalog) -> Path:
    db = data_dir / "earnopt.duckdb"
    telemetry = simulate(catalog, days=6, seed=5, end=END, inject_anomalies=False).telemetry
    with connect(db) as conn:
        ensure_raw_earnings(conn)
        conn.register("telemetry", telemetry)
        conn.execute(
            "INSERT INTO raw_earnings (device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb,"
            " allocation, connection_failures, latency_ms) SELECT device, protocol, ts,"
            " earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms FROM telemetry"
        )
    return db


def test_reads_before_any_cycle_are_empty(data_dir: Path) -> None:
    with connect(data_dir / "w.duckdb") as conn:
        assert store.read_allocation_state(conn, "local", ["akash"]) == {}
        assert store.planned_allocations(conn, "local", ["akash"]) == {}
        assert store.latest_cycle_time(conn) is None
        assert store.last_applied_cycle(conn, "local") is None
        assert list(store.recent_cycles(conn, "local").columns) == list(store.RECENT_CYCLE_COLUMNS)
        store.ensure_allocation_tables(conn)
        assert store.recent_cycles(conn, "local").empty and store.latest_cycle_time(conn, "local") is None


def test_applied_plan_round_trips_through_the_store(data_dir: Path, small_catalog) -> None:
    catalog = _catalog(small_catalog, tight=True, **LOOSE)
    db = _warehouse(data_dir, catalog)
    with connect(db) as conn:
        plan = compute_plan(read_cycle_inputs(conn, catalog, NOW), catalog)
        assert plan.applied
        store.write_plan(conn, plan)
        assert store.read_allocation_state(conn, "local", list(plan.protocols)) == plan.target
        assert store.planned_allocations(conn, "local", ["akash"]) == {"akash": plan.target["akash"]}
        assert store.read_allocation_state(conn, "other-device", list(plan.protocols)) == {}
        applied = store.last_applied_cycle(conn, "local")
        assert applied["cycle_id"] == plan.cycle_id and applied["allocations"] == plan.target
        assert store.latest_cycle_time(conn, "local") == NOW
        cycles = store.recent_cycles(conn, "local")
    assert len(cycles) == 1 and cycles.loc[0, "status"] == "applied"
    assert pd.isna(cycles.loc[0, "realised_usd_per_hour"])


def test_a_kept_plan_puts_nothing_in_force(data_dir: Path, small_catalog) -> None:
    """A kept cycle (default thresholds) records its history but sets no share as in force."""
    db = _warehouse(data_dir, small_catalog)
    # the code's default net-benefit floor ($0.50/h) keeps it; data/catalog.yaml scales it down for a home node
    small_catalog = small_catalog.model_copy(update={"allocation": small_catalog.allocation.model_copy(update={"min_net_benefit_usd_per_hour": 0.5})})
    with connect(db) as conn:
        plan = compute_plan(read_cycle_inputs(conn, small_catalog, NOW), small_catalog)
        assert plan.status == "kept"
        store.write_plan(conn, plan)
        assert store.read_allocation_state(conn, "local", list(plan.protocols)) == {}
        assert store.last_applied_cycle(conn, "local") is None
        assert len(store.recent_cycles(conn, "local")) == 1


def test_no_other_module_writes_sql_against_the_allocation_tables() -> None:
    """One owner: SQL naming an allocation table appears only in allocation/store.py."""
    pattern = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE(?: IF NOT EXISTS)?)\s+(" + "|".join(TABLES) + r")\b", re.IGNORECASE)
    offenders = []
    for path in sorted((REPO_ROOT / "earnopt_assets").rglob("*.py")):
        if path == REPO_ROOT / "earnopt_assets" / "allocation" / "store.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_plan_module_is_pure() -> None:
    """plan.py plans; it neither opens connections nor writes files."""
    source = (REPO_ROOT / "earnopt_assets" / "allocation" / "plan.py").read_text()
    assert "import duckdb" not in source and ".execute(" not in source and "atomic_write" not in source
