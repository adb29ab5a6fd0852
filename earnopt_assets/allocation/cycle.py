"""One allocation cycle with its I/O: read inputs through the stores, plan (pure), record, publish.

Phases (the warehouse connection is held only in 1 and 3):

1. :func:`read_cycle_inputs` - telemetry (``raw_earnings``, which also reports the share each protocol ran
   at), the latest forecasts
   (:func:`earnopt_assets.forecasting.store.latest_forecasts`), the allocation in force
   (:mod:`earnopt_assets.allocation.store`) and the degraded set (:mod:`earnopt_assets.anomaly.store`);
   :func:`earnopt_assets.allocation.plan.assemble_inputs` (pure) turns them into :class:`CycleInputs`.
2. :func:`earnopt_assets.allocation.plan.compute_plan` (no I/O) - optimiser, checks, decision, actions.
3. :func:`earnopt_assets.allocation.store.write_plan` - one transaction; then :func:`write_latest_plan`
   replaces ``data/allocation/latest.json`` atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from earnopt_assets.allocation import store
from earnopt_assets.allocation.allocator import ResourceAllocator
from earnopt_assets.allocation.plan import (
    CURVE_WINDOW_DAYS,
    AllocationPlan,
    CycleInputs,
    assemble_inputs,
    compute_plan,
    utc_now,
)
from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.catalog import Catalog
from earnopt_assets.ingestion import store as ingestion_store

logger = logging.getLogger("earnopt.allocation")


def _latest_forecasts(conn: duckdb.DuckDBPyConnection, device: str, names: set[str]) -> dict[str, pd.DataFrame]:
    from earnopt_assets.forecasting.store import latest_forecasts

    frame = latest_forecasts(conn, device)
    if frame.empty:
        return {}
    return {str(name): group for name, group in frame.groupby("protocol", sort=False) if name in names}


def _degraded(conn: duckdb.DuckDBPyConnection, device: str, notes: list[str]) -> dict[str, str]:
    from earnopt_assets.anomaly.store import read_state
    from earnopt_assets.warehouse import table_exists

    try:
        if not table_exists(conn, "protocol_state"):
            notes.append("alerts have not run yet (no protocol_state): no degraded caps, every protocol treated as healthy")
            return {}
        rows = read_state(conn, device)
    except duckdb.Error as exc:
        notes.append(f"protocol_state unreadable ({exc}); every protocol treated as healthy")
        return {}
    return {str(p): (row.get("reason") or "degraded") for p, row in rows.items() if row.get("state") == "degraded"}


def read_cycle_inputs(conn: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime | None = None) -> CycleInputs:
    """Phase 1: read everything the cycle needs (short, read-only queries), then assemble it (pure)."""
    now = now or utc_now()
    device = catalog.host.device
    names = [catalog.require(name).name for name in catalog.enabled_names]
    name_set = set(names)
    notes: list[str] = []

    history: dict[str, pd.DataFrame] = {}
    newest = ingestion_store.latest_ts(conn, device=device)
    if newest is not None:
        raw = ingestion_store.read_telemetry(
            conn, device=device, start=pd.Timestamp(newest) - pd.Timedelta(days=CURVE_WINDOW_DAYS),
            columns=["protocol", "ts", "earnings_usd", "allocation"],
        )
        history = {str(n): g for n, g in raw.groupby("protocol", sort=False) if n in name_set}
    forecasts = _latest_forecasts(conn, device, name_set)
    plans = {n: row for n, row in store.read_allocation_state_rows(conn, device, names).items() if row["source"] == "optimizer"}
    # The share each forecast was conditioned on: the applied plan in force when it was made (the forecast
    # asset reads allocation_state), else the forecast held the last reported share (assemble_inputs).
    forecast_times = {n: pd.Timestamp(f["forecast_time"].iloc[0]).to_pydatetime() for n, f in forecasts.items() if len(f)}
    applied_then = {t: store.applied_shares_at(conn, device, t) for t in set(forecast_times.values())}
    forecast_plans = {n: applied_then[t][n] for n, t in forecast_times.items() if n in applied_then[t]}
    degraded = _degraded(conn, device, notes)
    from earnopt_assets.actuation.store import confirmed_shares  # the actuator's docker-inspect confirmations

    return assemble_inputs(
        catalog, now, history=history, forecasts=forecasts, state=plans, degraded=degraded, notes=notes,
        forecast_plans=forecast_plans, confirmed=confirmed_shares(conn, device, names),
    )


def write_latest_plan(path: Path, plan: AllocationPlan, catalog: Catalog | None = None) -> Path:
    """Replace the orchestrator's plan file atomically (a crash leaves the previous file). With the catalog
    the file carries ``limits``: the absolute CPU/memory limits and bandwidth/storage entitlements of each
    share in force (docs/plan.schema.json, earnopt_assets.actuation.limits)."""
    document = plan.to_json()
    if catalog is not None:
        from earnopt_assets.actuation.limits import plan_limits

        document["limits"] = plan_limits(catalog, document["allocations"])
    return atomic_write_json(path, document)


def run_allocation_cycle(
    open_connection: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    catalog: Catalog,
    latest_plan_path: Path,
    *,
    now: datetime | None = None,
    allocator: ResourceAllocator | None = None,
    log: logging.Logger | Any | None = None,
) -> tuple[AllocationPlan, int]:
    """All three phases; the connection is opened twice, briefly. Returns (plan, realised cycles updated)."""
    with open_connection() as conn:
        store.ensure_allocation_tables(conn)
        inputs = read_cycle_inputs(conn, catalog, now)
    plan = compute_plan(inputs, catalog, allocator, log=log)
    with open_connection() as conn:
        realised = store.write_plan(conn, plan)
    write_latest_plan(latest_plan_path, plan, catalog)
    return plan, realised
