"""One allocation cycle: read inputs from DuckDB, optimise, decide, verify, record, publish the plan.

Phases (the warehouse connection is held only in 1 and 3):

1. :func:`read_cycle_inputs` - expected earnings per protocol from the latest ``forecasts`` (or a
   seasonal-naive fallback computed from ``raw_earnings``), the response curve fitted to the last 30 days
   of (allocation, earnings) pairs, the current allocation from ``allocation_state`` (initialised from the
   catalog when a protocol has no row), and the degraded set from ``protocol_state``.
2. :func:`compute_plan` (no I/O) - optimiser, the two plan checks, the reallocation decision, actions.
   The plan is APPLIED only if the decision says reallocate AND both checks passed.
3. :func:`write_plan` - one transaction: ``allocations`` history rows, the ``optimization_cycles`` record,
   ``allocation_state`` (only for an applied plan; missing protocols get their initial row), and the
   realised earnings of earlier cycles whose telemetry has arrived since. Then
   :func:`write_latest_plan` replaces ``data/allocation/latest.json`` atomically.

Potential earnings. A forecast f_i ($/h) describes the protocol at the allocation a_i it ran at (mean of
its last 24 observed hours), so its full-allocation potential is p_i = f_i / a_i**beta_i; when a_i < 0.02
or there is no forecast the fitted curve's scale k_i is used instead.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd

from earnopt_assets.allocation.allocator import (
    RESOURCES,
    AllocationResult,
    CheckOutcome,
    DecisionThresholds,
    ProtocolRequirements,
    ReallocationDecision,
    ResourceAllocator,
    ResourceConstraints,
    check_constraints,
    check_solver_status,
    resource_use,
    should_reallocate,
    utilization_pct,
)
from earnopt_assets.numerics.response import ResponseCurve, fit_response_curve
from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.catalog import Catalog
from earnopt_assets.warehouse import table_exists

logger = logging.getLogger("earnopt.allocation")

PLAN_VERSION = 1
CURVE_WINDOW_DAYS = 30
OBSERVED_ALLOCATION_HOURS = 24
MIN_OBSERVED_ALLOCATION = 0.02
REALISED_WINDOW_HOURS = 24
REALISED_LOOKBACK_DAYS = 7
NO_CHANGE = 1e-6

ForecastSource = Literal["lstm", "seasonal_naive_fallback", "no_data"]
Action = Literal["restart", "adjust", "keep"]
PlanStatus = Literal["applied", "kept", "rejected"]

ALLOCATION_DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS allocation_state (
        device      VARCHAR   NOT NULL,
        protocol    VARCHAR   NOT NULL,
        allocation  DOUBLE    NOT NULL,
        updated_at  TIMESTAMP NOT NULL,
        cycle_id    VARCHAR,              -- the applied cycle that set it; NULL for the initial row
        source      VARCHAR   NOT NULL,   -- 'initial' | 'optimizer'
        PRIMARY KEY (device, protocol)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS allocations (
        cycle_id                       VARCHAR   NOT NULL,
        device                         VARCHAR   NOT NULL,
        protocol                       VARCHAR   NOT NULL,
        created_at                     TIMESTAMP NOT NULL,
        current_allocation             DOUBLE    NOT NULL,
        proposed_allocation            DOUBLE,             -- NULL when the solver found no solution
        target_allocation              DOUBLE    NOT NULL,   -- what runs after this cycle
        action                         VARCHAR   NOT NULL,   -- restart | adjust | keep
        degraded                       BOOLEAN   NOT NULL,
        expected_current_usd_per_hour  DOUBLE    NOT NULL,
        expected_proposed_usd_per_hour DOUBLE    NOT NULL,
        potential_usd_per_hour         DOUBLE    NOT NULL,
        response_beta                  DOUBLE    NOT NULL,
        forecast_source                VARCHAR   NOT NULL,
        status                         VARCHAR   NOT NULL,   -- applied | kept | rejected (of the cycle)
        PRIMARY KEY (cycle_id, protocol)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS optimization_cycles (
        cycle_id                      VARCHAR   PRIMARY KEY,
        device                        VARCHAR   NOT NULL,
        created_at                    TIMESTAMP NOT NULL,
        decision                      VARCHAR   NOT NULL,   -- reallocate | keep
        status                        VARCHAR   NOT NULL,   -- applied | kept | rejected
        applied                       BOOLEAN   NOT NULL,
        checks_passed                 BOOLEAN   NOT NULL,
        solver                        VARCHAR,
        solver_status                 VARCHAR   NOT NULL,
        solve_seconds                 DOUBLE    NOT NULL,
        expected_current_usd_per_hour  DOUBLE   NOT NULL,
        expected_proposed_usd_per_hour DOUBLE   NOT NULL,
        expected_gain_usd_per_hour     DOUBLE   NOT NULL,   -- proposed - current
        expected_target_usd_per_hour   DOUBLE   NOT NULL,   -- of the allocation that runs after the cycle
        net_benefit_usd_per_hour       DOUBLE   NOT NULL,
        reallocation_cost_usd          DOUBLE   NOT NULL,
        change_l1                      DOUBLE   NOT NULL,
        analysis                       VARCHAR  NOT NULL,   -- JSON: decision analysis, checks, inputs
        realised_usd_per_hour          DOUBLE,             -- mean hourly earnings after the cycle
        realised_hours                 INTEGER,
        realised_vs_expected_pct       DOUBLE,
        realised_updated_at            TIMESTAMP
    )
    """,
)


def ensure_allocation_tables(conn: duckdb.DuckDBPyConnection) -> None:
    for ddl in ALLOCATION_DDL:
        conn.execute(ddl)


def utc_now() -> datetime:
    """Naive UTC, like every TIMESTAMP in the warehouse."""
    return datetime.now(UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ProtocolInputs:
    """Everything the cycle knows about one protocol."""

    name: str
    forecast_usd_per_hour: float  # expected $/h at the observed allocation
    forecast_source: ForecastSource
    forecast_detail: str
    observed_allocation: float | None
    curve: ResponseCurve
    potential_usd_per_hour: float  # p_i, at allocation 1.0
    current_allocation: float
    state_source: Literal["state", "initial"]
    degraded_reason: str | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None


@dataclass(frozen=True)
class CycleInputs:
    device: str
    now: datetime
    protocols: dict[str, ProtocolInputs]
    notes: list[str] = field(default_factory=list)


def initial_allocation(catalog: Catalog) -> dict[str, float]:
    """Allocation for protocols without state: every enabled protocol at l_i + theta (u_i - l_i).

    theta in [0, 1] is the largest value that fits every resource (an even share of the headroom left
    by the minimums): theta = min(1, min_r (T_r - sum_i l_i R_ir) / sum_i (u_i - l_i) R_ir), floored
    at 0 (if the minimums alone do not fit, start at the minimums and let the checks report it).
    """
    specs = catalog.enabled
    totals = catalog.host.totals()
    theta = 1.0
    for resource in RESOURCES:
        base = sum(s.min_allocation * s.resource_vector()[resource] for s in specs)
        span = sum((s.max_allocation - s.min_allocation) * s.resource_vector()[resource] for s in specs)
        if span > 0:
            theta = min(theta, (totals[resource] - base) / span)
    theta = max(0.0, theta)
    # 1e-9 below the boundary so float rounding never puts the initial plan a hair over a total.
    return {s.name: s.min_allocation + max(0.0, theta - 1e-9) * (s.max_allocation - s.min_allocation) for s in specs}


def _expected_from_forecast(values: np.ndarray, targets: np.ndarray, now: datetime, mode: str) -> float:
    """Next-hour value (the first target after ``now``, else the first) or the mean of the horizon."""
    if mode == "next_hour":
        future = np.nonzero(targets > np.datetime64(now))[0]
        return float(values[future[0]] if future.size else values[0])
    return float(np.mean(values))


def _latest_forecasts(conn: duckdb.DuckDBPyConnection, device: str, names: set[str]) -> dict[str, pd.DataFrame]:
    if not table_exists(conn, "forecasts"):
        return {}
    frame = conn.execute(
        """
        SELECT f.protocol, f.target_ts, f.value, f.source, f.model_version, f.forecast_time
        FROM forecasts f
        JOIN (SELECT protocol, max(forecast_time) AS forecast_time FROM forecasts WHERE device = ? GROUP BY protocol) latest
          ON f.protocol = latest.protocol AND f.forecast_time = latest.forecast_time
        WHERE f.device = ?
        ORDER BY f.protocol, f.target_ts
        """,
        [device, device],
    ).df()
    return {str(name): group for name, group in frame.groupby("protocol", sort=False) if name in names}


def _degraded(conn: duckdb.DuckDBPyConnection, device: str, notes: list[str]) -> dict[str, str]:
    if not table_exists(conn, "protocol_state"):
        return {}
    try:
        rows = conn.execute(
            "SELECT protocol, coalesce(reason, '') FROM protocol_state WHERE device = ? AND state = 'degraded'", [device]
        ).fetchall()
    except duckdb.Error as exc:
        notes.append(f"protocol_state unreadable ({exc}); every protocol treated as healthy")
        return {}
    return {str(p): (r or "degraded") for p, r in rows}


def read_cycle_inputs(conn: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime | None = None) -> CycleInputs:
    """Phase 1: read everything the cycle needs from the warehouse (short, read-only queries)."""
    from earnopt_assets.numerics.baselines import fallback_forecast

    now = now or utc_now()
    device = catalog.host.device
    settings = catalog.allocation
    names = [catalog.require(name).name for name in catalog.enabled_names]
    name_set = set(names)
    notes: list[str] = []

    history: dict[str, pd.DataFrame] = {}
    if table_exists(conn, "raw_earnings"):
        raw = conn.execute(
            """
            SELECT protocol, ts, earnings_usd, allocation FROM raw_earnings
            WHERE device = ? AND ts >= (SELECT max(ts) FROM raw_earnings WHERE device = ?) - to_days(CAST(? AS INTEGER))
            ORDER BY protocol, ts
            """,
            [device, device, CURVE_WINDOW_DAYS],
        ).df()
        history = {str(n): g for n, g in raw.groupby("protocol", sort=False) if n in name_set}
    forecasts = _latest_forecasts(conn, device, name_set)

    state: dict[str, float] = {}
    if table_exists(conn, "allocation_state"):
        rows = conn.execute("SELECT protocol, allocation FROM allocation_state WHERE device = ?", [device]).fetchall()
        state = {str(p): float(a) for p, a in rows if p in name_set}
    degraded = _degraded(conn, device, notes)
    initial = initial_allocation(catalog)

    protocols: dict[str, ProtocolInputs] = {}
    for name in names:
        series = history.get(name)
        if series is not None and len(series):
            curve = fit_response_curve(series["allocation"].to_numpy(float), series["earnings_usd"].to_numpy(float))
            recent_alloc = series["allocation"].to_numpy(float)[-OBSERVED_ALLOCATION_HOURS:]
            observed: float | None = float(np.mean(recent_alloc))
        else:
            curve, observed = ResponseCurve(method="no_data"), None

        forecast = forecasts.get(name)
        last_target = forecast["target_ts"].max() if forecast is not None and len(forecast) else None
        if last_target is not None and pd.Timestamp(last_target) >= pd.Timestamp(now) - pd.Timedelta(hours=1):
            values = forecast["value"].to_numpy(float)
            value = _expected_from_forecast(values, forecast["target_ts"].to_numpy("datetime64[us]"), now, settings.expected_earnings)
            sources = set(forecast["source"].astype(str))
            source: ForecastSource = "lstm" if sources == {"lstm"} else "seasonal_naive_fallback"
            detail = f"forecast of {pd.Timestamp(forecast['forecast_time'].iloc[0])} ({', '.join(sorted(sources))})"
        elif series is not None and len(series):
            _, values = fallback_forecast(series["ts"], series["earnings_usd"].to_numpy(float))
            value = float(values[0] if settings.expected_earnings == "next_hour" else np.mean(values))
            source = "seasonal_naive_fallback"
            why = "no forecast" if last_target is None else f"latest forecast ends {pd.Timestamp(last_target)}, before now"
            detail = f"{why}: seasonal naive from raw_earnings up to {pd.Timestamp(series['ts'].iloc[-1])}"
        else:
            value, source, detail = 0.0, "no_data", "no forecast and no telemetry"
        if not math.isfinite(value) or value < 0:
            notes.append(f"{name}: forecast {value!r} replaced by 0")
            value = 0.0

        if observed is not None and observed >= MIN_OBSERVED_ALLOCATION and source != "no_data":
            potential = value / float(curve.relative(observed))
        else:
            potential = curve.scale_usd_per_hour
        protocols[name] = ProtocolInputs(
            name=name,
            forecast_usd_per_hour=value,
            forecast_source=source,
            forecast_detail=detail,
            observed_allocation=observed,
            curve=curve,
            potential_usd_per_hour=float(potential),
            current_allocation=state.get(name, initial[name]),
            state_source="state" if name in state else "initial",
            degraded_reason=degraded.get(name),
        )
    unknown_degraded = sorted(set(degraded) - name_set)
    if unknown_degraded:
        notes.append(f"degraded protocols not enabled in the catalog ignored: {', '.join(unknown_degraded)}")
    return CycleInputs(device=device, now=now, protocols=protocols, notes=notes)


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ProtocolPlan:
    name: str
    current: float
    proposed: float | None
    target: float
    action: Action
    reason: str
    degraded: bool
    expected_current_usd_per_hour: float
    expected_proposed_usd_per_hour: float
    potential_usd_per_hour: float
    response_beta: float
    forecast_source: str
    restart_minutes: float


@dataclass(frozen=True)
class AllocationPlan:
    cycle_id: str
    device: str
    created_at: datetime
    status: PlanStatus
    applied: bool
    result: AllocationResult
    decision: ReallocationDecision
    checks: dict[str, CheckOutcome]
    protocols: dict[str, ProtocolPlan]
    target_utilization: dict[str, float]
    inputs: CycleInputs

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks.values())

    @property
    def target(self) -> dict[str, float]:
        return {n: p.target for n, p in self.protocols.items()}

    @property
    def expected_target_usd_per_hour(self) -> float:
        return self.decision.proposed_usd_per_hour if self.applied else self.decision.current_usd_per_hour

    def to_json(self) -> dict[str, Any]:
        """The document the orchestrator consumes (``data/allocation/latest.json``)."""
        return {
            "version": PLAN_VERSION,
            "cycle_id": self.cycle_id,
            "device": self.device,
            "created_at": self.created_at.isoformat() + "Z",
            "status": self.status,
            "applied": self.applied,
            "decision": "reallocate" if self.decision.reallocate else "keep",
            "allocations": self.target,
            "actions": {
                n: {
                    "action": p.action,
                    "allocation": p.target,
                    "previous": p.current,
                    "proposed": p.proposed,
                    "restart_minutes": p.restart_minutes if p.action == "restart" else 0.0,
                    "reason": p.reason,
                }
                for n, p in self.protocols.items()
            },
            "expected_usd_per_hour": {
                "current": self.decision.current_usd_per_hour,
                "proposed": self.decision.proposed_usd_per_hour,
                "target": self.expected_target_usd_per_hour,
            },
            "expected_gain_usd_per_hour": self.decision.improvement_usd_per_hour if self.applied else 0.0,
            "resource_utilization_pct": {"target": self.target_utilization, "proposed": self.result.resource_utilization},
            "solver": {
                "name": self.result.solver,
                "status": self.result.solver_status,
                "solve_seconds": self.result.solve_seconds,
                "fallback_reason": self.result.fallback_reason,
                "diagnosis": self.result.diagnosis,
            },
            "checks": {n: asdict(c) for n, c in self.checks.items()},
            "decision_analysis": self.decision.to_dict(),
            "inputs": {
                n: {
                    "forecast_usd_per_hour": p.forecast_usd_per_hour,
                    "forecast_source": p.forecast_source,
                    "forecast_detail": p.forecast_detail,
                    "observed_allocation": p.observed_allocation,
                    "potential_usd_per_hour": p.potential_usd_per_hour,
                    "response_curve": p.curve.to_dict(),
                    "state_source": p.state_source,
                    "degraded_reason": p.degraded_reason,
                }
                for n, p in self.inputs.protocols.items()
            },
            "notes": self.inputs.notes,
        }


_ALLOCATORS: dict[ResourceConstraints, ResourceAllocator] = {}


def shared_allocator(constraints: ResourceConstraints) -> ResourceAllocator:
    """One allocator per host totals in this process, so a long-lived process (the API service, a
    benchmark) re-solves its cached DPP problem instead of rebuilding it every cycle."""
    allocator = _ALLOCATORS.get(constraints)
    if allocator is None:
        if len(_ALLOCATORS) >= 8:
            _ALLOCATORS.clear()
        allocator = _ALLOCATORS[constraints] = ResourceAllocator(constraints)
    return allocator


def _action(current: float, target: float, degraded: bool, threshold: float) -> tuple[Action, str]:
    change = abs(target - current)
    if degraded:
        return "restart", "degraded: restart (capped at its minimum when the plan is applied)"
    if change > threshold + 1e-9:
        return "restart", f"change {change:.3f} > {threshold:g} restarts the protocol"
    if change > NO_CHANGE:
        return "adjust", f"change {change:.3f} <= {threshold:g}: adjust limits in place"
    return "keep", "unchanged"


def compute_plan(
    inputs: CycleInputs,
    catalog: Catalog,
    allocator: ResourceAllocator | None = None,
    *,
    cycle_id: str | None = None,
    log: logging.Logger | Any | None = None,
) -> AllocationPlan:
    """Phase 2 (pure): optimise, check, decide and derive the per-protocol actions."""
    settings = catalog.allocation
    constraints = ResourceConstraints.from_totals(catalog.host.totals())
    allocator = allocator or shared_allocator(constraints)
    specs = {n: catalog.require(n) for n in inputs.protocols}
    requirements = {n: ProtocolRequirements.from_spec(s) for n, s in specs.items()}
    degraded = frozenset(n for n, p in inputs.protocols.items() if p.degraded)
    potentials = {n: p.potential_usd_per_hour for n, p in inputs.protocols.items()}
    curves = {n: p.curve for n, p in inputs.protocols.items()}
    current = {n: p.current_allocation for n, p in inputs.protocols.items()}

    result = allocator.optimize_allocation(
        requirements, potentials, current, degraded, response_curves=curves, change_penalty=settings.change_penalty
    )
    checks = {
        "solver_status_optimal": check_solver_status(result),
        "constraints_satisfied": check_constraints(result.allocations, requirements, constraints, degraded),
    }
    proposed = result.allocations or dict(current)

    def earnings(allocation: Mapping[str, float]) -> dict[str, float]:
        return {n: float(potentials[n] * curves[n].relative(allocation[n])) for n in inputs.protocols}

    current_check = check_constraints(current, requirements, constraints)
    force = None if current_check.passed else f"the current allocation breaks the catalog ({current_check.description})"
    decision = should_reallocate(
        current,
        proposed,
        current_earnings=earnings(current),
        proposed_earnings=earnings(proposed),
        restart_minutes={n: r.restart_minutes for n, r in requirements.items()},
        thresholds=DecisionThresholds.from_settings(settings),
        exempt_from_cost=degraded,
        force_reason=force,
        log=log,
    )
    checks_passed = all(c.passed for c in checks.values())
    applied = decision.reallocate and checks_passed
    status: PlanStatus = "applied" if applied else ("kept" if checks_passed else "rejected")
    target = proposed if applied else current

    current_earnings, proposed_earnings = earnings(current), earnings(proposed)
    protocols: dict[str, ProtocolPlan] = {}
    for name, item in inputs.protocols.items():
        action, reason = _action(current[name], target[name], item.degraded, settings.change_threshold)
        protocols[name] = ProtocolPlan(
            name=name,
            current=current[name],
            proposed=result.allocations.get(name),
            target=target[name],
            action=action,
            reason=reason if not item.degraded else f"{reason}; {item.degraded_reason}",
            degraded=item.degraded,
            expected_current_usd_per_hour=current_earnings[name],
            expected_proposed_usd_per_hour=proposed_earnings[name],
            potential_usd_per_hour=potentials[name],
            response_beta=curves[name].beta,
            forecast_source=item.forecast_source,
            restart_minutes=requirements[name].restart_minutes,
        )
    return AllocationPlan(
        cycle_id=cycle_id or f"{inputs.now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        device=inputs.device,
        created_at=inputs.now,
        status=status,
        applied=applied,
        result=result,
        decision=decision,
        checks=checks,
        protocols=protocols,
        target_utilization=utilization_pct(resource_use(target, requirements), constraints),
        inputs=inputs,
    )


# ---------------------------------------------------------------------------------------------- writes


def update_realised_earnings(conn: duckdb.DuckDBPyConnection, device: str, now: datetime) -> int:
    """Fill realised earnings of recent cycles whose telemetry arrived.

    For a cycle at time s the window is the hours [floor_h(s) + 1h, floor_h(s) + 1h + 24h); realised is
    the mean over observed hours of the summed earnings of the cycle's protocols, and
    realised_vs_expected_pct = 100 * (realised - expected_target) / expected_target. Cycles whose window
    is complete (24 observed hours) or older than 7 days are left alone. Returns the cycles updated.
    """
    if not table_exists(conn, "raw_earnings"):
        return 0
    before = conn.execute(
        "SELECT count(*) FROM optimization_cycles WHERE device = ? AND realised_updated_at = ?", [device, now]
    ).fetchone()[0]
    conn.execute(
        """
        UPDATE optimization_cycles AS c
        SET realised_usd_per_hour = s.realised,
            realised_hours = s.hours,
            realised_vs_expected_pct = CASE WHEN c.expected_target_usd_per_hour > 0
                THEN 100.0 * (s.realised - c.expected_target_usd_per_hour) / c.expected_target_usd_per_hour END,
            realised_updated_at = ?
        FROM (
            SELECT h.cycle_id, avg(h.total) AS realised, count(*) AS hours
            FROM (
                SELECT p.cycle_id, r.ts, sum(r.earnings_usd) AS total
                FROM optimization_cycles p
                JOIN allocations a ON a.cycle_id = p.cycle_id
                JOIN raw_earnings r
                  ON r.device = p.device AND r.protocol = a.protocol
                 AND r.ts >= date_trunc('hour', p.created_at) + INTERVAL 1 HOUR
                 AND r.ts < date_trunc('hour', p.created_at) + INTERVAL 1 HOUR + to_hours(CAST(? AS BIGINT))
                WHERE p.device = ? AND coalesce(p.realised_hours, 0) < ? AND p.created_at >= ?
                GROUP BY p.cycle_id, r.ts
            ) h
            GROUP BY h.cycle_id
        ) s
        WHERE c.cycle_id = s.cycle_id AND s.hours > coalesce(c.realised_hours, 0)
        """,
        [now, REALISED_WINDOW_HOURS, device, REALISED_WINDOW_HOURS, now - timedelta(days=REALISED_LOOKBACK_DAYS)],
    )
    after = conn.execute(
        "SELECT count(*) FROM optimization_cycles WHERE device = ? AND realised_updated_at = ?", [device, now]
    ).fetchone()[0]
    return int(after - before)


def write_plan(conn: duckdb.DuckDBPyConnection, plan: AllocationPlan) -> int:
    """Phase 3: record the cycle in one transaction. Returns how many earlier cycles got realised figures."""
    ensure_allocation_tables(conn)
    now = plan.created_at
    analysis = json.dumps(
        {k: v for k, v in plan.to_json().items() if k in ("decision_analysis", "checks", "solver", "inputs", "notes", "actions")},
        default=str,
        allow_nan=False,
    )
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.executemany(
            """
            INSERT INTO allocations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                [
                    plan.cycle_id, plan.device, p.name, now, p.current, p.proposed, p.target, p.action, p.degraded,
                    p.expected_current_usd_per_hour, p.expected_proposed_usd_per_hour, p.potential_usd_per_hour,
                    p.response_beta, p.forecast_source, plan.status,
                ]
                for p in plan.protocols.values()
            ],
        )
        d = plan.decision
        conn.execute(
            """
            INSERT INTO optimization_cycles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)
            """,
            [
                plan.cycle_id, plan.device, now, "reallocate" if d.reallocate else "keep", plan.status, plan.applied,
                plan.checks_passed, plan.result.solver, plan.result.solver_status, plan.result.solve_seconds,
                d.current_usd_per_hour, d.proposed_usd_per_hour, d.improvement_usd_per_hour,
                plan.expected_target_usd_per_hour, d.net_benefit_usd_per_hour, d.reallocation_cost.total_usd,
                d.change_l1, analysis,
            ],
        )
        if plan.applied:
            conn.executemany(
                """
                INSERT INTO allocation_state VALUES (?, ?, ?, ?, ?, 'optimizer')
                ON CONFLICT (device, protocol) DO UPDATE SET allocation = excluded.allocation,
                    updated_at = excluded.updated_at, cycle_id = excluded.cycle_id, source = excluded.source
                """,
                [[plan.device, p.name, p.target, now, plan.cycle_id] for p in plan.protocols.values()],
            )
        else:
            conn.executemany(
                "INSERT INTO allocation_state VALUES (?, ?, ?, ?, NULL, 'initial') ON CONFLICT (device, protocol) DO NOTHING",
                [[plan.device, p.name, p.current, now] for p in plan.protocols.values()],
            )
        realised = update_realised_earnings(conn, plan.device, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return realised


def write_latest_plan(path: Path, plan: AllocationPlan) -> Path:
    """Replace the orchestrator's plan file atomically (a crash leaves the previous file)."""
    return atomic_write_json(path, plan.to_json())


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
        ensure_allocation_tables(conn)
        inputs = read_cycle_inputs(conn, catalog, now)
    plan = compute_plan(inputs, catalog, allocator, log=log)
    with open_connection() as conn:
        realised = write_plan(conn, plan)
    write_latest_plan(latest_plan_path, plan)
    return plan, realised


# ---------------------------------------------------------------------------------------------- report


def plan_markdown(plan: AllocationPlan) -> str:
    """Current vs proposed vs target per protocol, for the asset's metadata."""
    lines = [
        "| protocol | current | proposed | target | action | expected $/h now | expected $/h proposed | beta | source | degraded |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for p in plan.protocols.values():
        proposed = f"{p.proposed:.3f}" if p.proposed is not None else "-"
        lines.append(
            f"| {p.name} | {p.current:.3f} | {proposed} | {p.target:.3f} | {p.action} | {p.expected_current_usd_per_hour:.5f}"
            f" | {p.expected_proposed_usd_per_hour:.5f} | {p.response_beta:.2f} | {p.forecast_source} | {'yes' if p.degraded else ''} |"
        )
    return "\n".join(lines)


def utilization_markdown(plan: AllocationPlan, catalog: Catalog) -> str:
    totals = catalog.host.totals()
    lines = ["| resource | total | target % | proposed % |", "| --- | ---: | ---: | ---: |"]
    for r in RESOURCES:
        proposed = plan.result.resource_utilization.get(r, 0.0) if plan.result.allocations else float("nan")
        lines.append(f"| {r} | {totals[r]:g} | {plan.target_utilization[r]:.1f} | {proposed:.1f} |")
    return "\n".join(lines)


def decision_markdown(plan: AllocationPlan) -> str:
    d = plan.decision
    verdict = "REALLOCATE" if d.reallocate else "KEEP"
    lines = [f"**Decision: {verdict}** - plan {plan.status}" + ("" if plan.checks_passed else " (a blocking check failed)"), ""]
    lines += [f"- {'PASS' if d.criteria.get(k) else 'FAIL'} {k}: {reason}" for k, reason in zip(d.criteria, d.reasons)]
    lines += [f"- {reason}" for reason in d.reasons[len(d.criteria):]]
    for check in plan.checks.values():
        lines.append(f"- check {check.name}: {'passed' if check.passed else 'FAILED (' + check.severity + ')'} - {check.description}")
    if plan.inputs.notes:
        lines += [f"- note: {note}" for note in plan.inputs.notes]
    return "\n".join(lines)


def recent_cycles_markdown(conn: duckdb.DuckDBPyConnection, device: str, limit: int = 8) -> str:
    """The last cycles with their expected and (once telemetry arrived) realised earnings."""
    if not table_exists(conn, "optimization_cycles"):
        return "no cycles recorded yet"
    rows = conn.execute(
        """
        SELECT created_at, decision, status, expected_gain_usd_per_hour, expected_target_usd_per_hour,
               realised_usd_per_hour, realised_hours, realised_vs_expected_pct
        FROM optimization_cycles WHERE device = ? ORDER BY created_at DESC LIMIT ?
        """,
        [device, limit],
    ).fetchall()
    lines = [
        "| cycle time (UTC) | decision | status | expected gain $/h | expected $/h | realised $/h | hours | realised vs expected |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for created, decision, status, gain, expected, realised, hours, vs in rows:
        realised_text = f"{realised:.5f}" if realised is not None else "pending"
        vs_text = f"{vs:+.1f} %" if vs is not None else "-"
        lines.append(
            f"| {created:%Y-%m-%d %H:%M} | {decision} | {status} | {gain:.5f} | {expected:.5f} | {realised_text} | {hours or 0} | {vs_text} |"
        )
    return "\n".join(lines)
