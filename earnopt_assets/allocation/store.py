"""The allocation area's tables: ``allocations``, ``optimization_cycles``, ``allocation_state``.

This module is their ONE owner: the DDL, every read and every write. Nobody else writes SQL against them;
other areas (the API service, the forecast asset) call the read functions here.

* ``allocation_state`` - per (device, protocol) the share the orchestrator was told to run by the last
  applied plan (``source = 'optimizer'``). Kept and rejected cycles write no row here (earlier versions
  wrote catalog initial shares as ``source = 'initial'``; the reads ignore those rows).
* ``allocations`` - per cycle and protocol: current, proposed and after-cycle shares, action, expected $/h.
* ``optimization_cycles`` - per cycle: decision, status, checks, expected $/h and, once telemetry has
  arrived, the realised $/h of the 24 hours after the cycle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from earnopt_assets.warehouse import table_exists

if TYPE_CHECKING:  # plan.py is pure and imports nothing from here; the type is only for annotations
    from earnopt_assets.allocation.plan import AllocationPlan

REALISED_WINDOW_HOURS = 24
REALISED_LOOKBACK_DAYS = 7

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


# ---------------------------------------------------------------------------------------------- reads


def read_allocation_state(conn: duckdb.DuckDBPyConnection, device: str, protocols: Sequence[str]) -> dict[str, float]:
    """The share each protocol was set to by the last APPLIED plan (``source = 'optimizer'``).

    Rows of older versions that recorded catalog initial shares (``source = 'initial'``) are not
    returned: they were never in force. Empty when no allocation cycle has run yet.
    """
    state = read_allocation_state_rows(conn, device, protocols)
    return {name: row["allocation"] for name, row in state.items() if row["source"] == "optimizer"}


def read_allocation_state_rows(conn: duckdb.DuckDBPyConnection, device: str, protocols: Sequence[str]) -> dict[str, dict]:
    """Every ``allocation_state`` row of ``device`` for ``protocols``: allocation, updated_at, cycle_id, source."""
    if not protocols or not table_exists(conn, "allocation_state"):
        return {}
    rows = conn.execute(
        "SELECT protocol, allocation, updated_at, cycle_id, source FROM allocation_state"
        " WHERE device = ? AND list_contains(?, protocol)",
        [device, list(protocols)],
    ).fetchall()
    return {
        str(p): {"allocation": float(a), "updated_at": u, "cycle_id": c, "source": str(s)}
        for p, a, u, c, s in rows
        if a is not None and 0.0 <= float(a) <= 1.0
    }


def planned_allocations(conn: duckdb.DuckDBPyConnection, device: str, protocols: Sequence[str]) -> dict[str, float]:
    """The share each protocol will run at, as the forecast asset conditions on it (applied plans only)."""
    return read_allocation_state(conn, device, protocols)


RECENT_CYCLE_COLUMNS: tuple[str, ...] = (
    "cycle_id",
    "created_at",
    "decision",
    "status",
    "expected_gain_usd_per_hour",
    "expected_target_usd_per_hour",
    "realised_usd_per_hour",
    "realised_hours",
    "realised_vs_expected_pct",
)


def recent_cycles(conn: duckdb.DuckDBPyConnection, device: str, limit: int = 8) -> pd.DataFrame:
    """The last ``limit`` cycles of ``device``, newest first, with expected and (once known) realised $/h."""
    if not table_exists(conn, "optimization_cycles"):
        return pd.DataFrame(columns=list(RECENT_CYCLE_COLUMNS))
    return conn.execute(
        f"SELECT {', '.join(RECENT_CYCLE_COLUMNS)} FROM optimization_cycles WHERE device = ?"
        " ORDER BY created_at DESC LIMIT ?",
        [device, int(limit)],
    ).df()


def latest_cycle_time(conn: duckdb.DuckDBPyConnection, device: str | None = None) -> datetime | None:
    """When the newest allocation cycle (of ``device``, or of any device) was recorded; None before the first."""
    if not table_exists(conn, "optimization_cycles"):
        return None
    return conn.execute(
        "SELECT max(created_at) FROM optimization_cycles WHERE ? IS NULL OR device = ?", [device, device]
    ).fetchone()[0]


def last_applied_cycle(conn: duckdb.DuckDBPyConnection, device: str) -> dict | None:
    """The newest applied cycle of ``device`` (cycle_id, created_at) with its after-cycle shares, or None."""
    if not table_exists(conn, "optimization_cycles"):
        return None
    row = conn.execute(
        "SELECT cycle_id, created_at FROM optimization_cycles WHERE device = ? AND applied ORDER BY created_at DESC LIMIT 1",
        [device],
    ).fetchone()
    if row is None:
        return None
    shares = conn.execute(
        "SELECT protocol, target_allocation FROM allocations WHERE cycle_id = ?", [row[0]]
    ).fetchall()
    return {"cycle_id": row[0], "created_at": row[1], "allocations": {str(p): float(a) for p, a in shares}}


def applied_shares_at(conn: duckdb.DuckDBPyConnection, device: str, when: datetime) -> dict[str, float]:
    """The after-cycle shares of the newest applied cycle recorded at or before ``when`` (empty if none):
    what ``allocation_state`` held at that moment, e.g. the share a forecast made then was conditioned on."""
    if not table_exists(conn, "optimization_cycles"):
        return {}
    rows = conn.execute(
        """
        SELECT a.protocol, a.target_allocation FROM allocations a
        JOIN (SELECT cycle_id FROM optimization_cycles WHERE device = ? AND applied AND created_at <= ?
              ORDER BY created_at DESC LIMIT 1) c USING (cycle_id)
        """,
        [device, when],
    ).fetchall()
    return {str(p): float(a) for p, a in rows}


# ---------------------------------------------------------------------------------------------- writes


def update_realised_earnings(conn: duckdb.DuckDBPyConnection, device: str, now: datetime) -> int:
    """Fill realised earnings of recent cycles whose telemetry arrived.

    For a cycle at time s the window is the hours [floor_h(s) + 1h, floor_h(s) + 1h + 24h); realised is
    the mean over observed hours of the summed earnings of the cycle's protocols, and
    realised_vs_expected_pct = 100 * (realised - expected_target) / expected_target. Cycles whose window
    is complete (24 observed hours) or older than 7 days are left alone. Returns the cycles updated.
    """
    from earnopt_assets.ingestion.store import has_telemetry, read_telemetry

    if not has_telemetry(conn):
        return 0
    # Telemetry comes through its owner (ingestion.store) as a frame; the join runs on that frame.
    since = now - timedelta(days=REALISED_LOOKBACK_DAYS)
    telemetry = read_telemetry(conn, device=device, start=pd.Timestamp(since).floor("h"), columns=["device", "protocol", "ts", "earnings_usd"])
    conn.register("__realised_telemetry", telemetry)
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
                JOIN __realised_telemetry r
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
        [now, REALISED_WINDOW_HOURS, device, REALISED_WINDOW_HOURS, since],
    )
    conn.unregister("__realised_telemetry")
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
        # A kept or rejected plan sets nothing in force: no catalog initial share is recorded as running.
        realised = update_realised_earnings(conn, plan.device, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return realised
