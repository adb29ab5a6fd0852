"""Protocol health state: ``healthy`` or ``degraded``, driven by critical alerts.

State machine per (device, protocol):

    healthy --(an open/acknowledged CRITICAL earnings_drop or connection_failures alert)--> degraded
    degraded --(no such alert left open: they all resolved)--> healthy

``protocol_state`` holds the current state (reason, since, updated_at); every change is appended to
``protocol_state_history`` with its reason and the alert that caused it. The allocator reads
:func:`read_degraded`, caps degraded protocols at their minimum allocation and plans a ``restart``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from earnopt_assets.anomaly.rules import DEGRADING_RULES
from earnopt_assets.warehouse import table_exists

PROTOCOL_STATE_DDL = """
CREATE TABLE IF NOT EXISTS protocol_state (
    device      VARCHAR   NOT NULL,
    protocol    VARCHAR   NOT NULL,
    state       VARCHAR   NOT NULL CHECK (state IN ('healthy', 'degraded')),
    reason      VARCHAR   NOT NULL,
    alert_id    VARCHAR,
    since       TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (device, protocol)
)
"""

PROTOCOL_STATE_HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS protocol_state_history (
    device      VARCHAR   NOT NULL,
    protocol    VARCHAR   NOT NULL,
    from_state  VARCHAR,
    to_state    VARCHAR   NOT NULL,
    reason      VARCHAR   NOT NULL,
    alert_id    VARCHAR,
    changed_at  TIMESTAMP NOT NULL
)
"""


def ensure_state_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(PROTOCOL_STATE_DDL)
    conn.execute(PROTOCOL_STATE_HISTORY_DDL)


@dataclass(frozen=True)
class StateChange:
    device: str
    protocol: str
    from_state: str | None
    to_state: str
    reason: str
    alert_id: str | None


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def update_protocol_state(conn: duckdb.DuckDBPyConnection, device: str, protocols: Iterable[str],
                          now: datetime | None = None) -> list[StateChange]:
    """Recompute each protocol's state from the ``alerts`` table and record the changes.

    Degraded while an open or acknowledged critical alert of a degrading rule exists; the reason names the
    newest such alert. Needs the ``alerts`` table (see ``store.ensure_alert_tables``).
    """
    ensure_state_tables(conn)
    now = now or _now()
    rules = sorted(DEGRADING_RULES)
    placeholders = ", ".join("?" for _ in rules)
    causes = conn.execute(
        f"""
        SELECT protocol, id, rule, hour, message, min(hour) OVER (PARTITION BY protocol) AS first_hour
        FROM alerts
        WHERE device = ? AND severity = 'critical' AND status IN ('open', 'acknowledged') AND rule IN ({placeholders})
        QUALIFY row_number() OVER (PARTITION BY protocol ORDER BY hour DESC, rule) = 1
        """,
        [device, *rules],
    ).fetchall()
    cause_by_protocol = {row[0]: row for row in causes}
    current = {
        row[0]: (row[1], row[2])
        for row in conn.execute("SELECT protocol, state, alert_id FROM protocol_state WHERE device = ?", [device]).fetchall()
    }
    changes: list[StateChange] = []
    for protocol in protocols:
        previous_state, previous_alert = current.get(protocol, (None, None))
        cause = cause_by_protocol.get(protocol)
        if cause is not None:
            _, alert_id, rule, hour, message, first_hour = cause
            target, reason, since = "degraded", f"critical {rule} alert {alert_id} at {hour:%Y-%m-%d %H:00}: {message}", first_hour
        else:
            alert_id = None
            if previous_state == "degraded":
                reason = f"alert {previous_alert} resolved; no open critical earnings_drop/connection_failures alert"
            else:
                reason = "no open critical earnings_drop/connection_failures alert"
            target, since = "healthy", now
        if previous_state == target:
            if target == "degraded" and previous_alert != alert_id:
                conn.execute(
                    "UPDATE protocol_state SET reason = ?, alert_id = ?, updated_at = ? WHERE device = ? AND protocol = ?",
                    [reason, alert_id, now, device, protocol],
                )
            continue
        conn.execute(
            """
            INSERT INTO protocol_state (device, protocol, state, reason, alert_id, since, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (device, protocol) DO UPDATE SET
                state = excluded.state, reason = excluded.reason, alert_id = excluded.alert_id,
                since = excluded.since, updated_at = excluded.updated_at
            """,
            [device, protocol, target, reason, alert_id, since, now],
        )
        conn.execute(
            "INSERT INTO protocol_state_history (device, protocol, from_state, to_state, reason, alert_id, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [device, protocol, previous_state, target, reason, alert_id, now],
        )
        changes.append(StateChange(device, protocol, previous_state, target, reason, alert_id))
    return changes


def read_degraded(conn: duckdb.DuckDBPyConnection, device: str) -> set[str]:
    """Protocols of ``device`` currently degraded; empty when the table does not exist yet."""
    if not table_exists(conn, "protocol_state"):
        return set()
    rows = conn.execute("SELECT protocol FROM protocol_state WHERE device = ? AND state = 'degraded'", [device]).fetchall()
    return {row[0] for row in rows}


def read_state(conn: duckdb.DuckDBPyConnection, device: str) -> dict[str, dict]:
    """Current state rows of ``device`` keyed by protocol (empty when the table does not exist)."""
    if not table_exists(conn, "protocol_state"):
        return {}
    cursor = conn.execute("SELECT protocol, state, reason, alert_id, since, updated_at FROM protocol_state WHERE device = ?", [device])
    names = [d[0] for d in cursor.description]
    return {row[0]: dict(zip(names, row)) for row in cursor.fetchall()}
