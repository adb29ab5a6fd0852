"""The ONE owner of the anomaly area's DuckDB tables: ``anomalies`` (scores), ``alerts``,
``alert_deliveries``, ``protocol_state`` and ``protocol_state_history`` — their DDL, reads and writes,
and the transactions around them. Also the recording logic of the alert cycle: dedupe, cooldown
decision, auto-resolve, state update, delivery bookkeeping. Nobody else writes SQL against these tables.

Alert status: ``open`` -> ``acknowledged`` (operator, :func:`acknowledge_alert`) -> ``resolved``
(automatic, when the (device, protocol, rule) has not fired for ``resolve_after_hours`` evaluated hours).
``notify_status``: ``pending`` (to send), ``cooldown`` (recorded, not sent), ``backfill`` (history recorded on
the first run, not sent), then after delivery ``sent``,
``failed`` (every attempt failed) or ``no_channel`` (no configured channel takes that severity; logged only).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pandas as pd

from earnopt_assets.anomaly.detector import DETECTION_FEATURES
from earnopt_assets.anomaly.notify import DeliveryAttempt, redact_text
from earnopt_assets.anomaly.rules import (
    DEGRADING_RULES,
    Alert,
    NotificationDecision,
    plan_notifications,
    split_incidents,
)
from earnopt_assets.anomaly.state import DegradingCause, ResolvedCause, StateChange, next_state
from earnopt_assets.catalog import AlertSettings
from earnopt_assets.warehouse import table_exists

ANOMALIES_DDL = f"""
CREATE TABLE IF NOT EXISTS anomalies (
    device        VARCHAR   NOT NULL,
    protocol      VARCHAR   NOT NULL,
    ts            TIMESTAMP NOT NULL,
    score         DOUBLE    NOT NULL,  -- IsolationForest decision_function: below 0 = anomalous
    is_anomaly    BOOLEAN   NOT NULL,
    {", ".join(f"{name} DOUBLE" for name in DETECTION_FEATURES)},
    model_version VARCHAR   NOT NULL,
    scored_at     TIMESTAMP NOT NULL,
    PRIMARY KEY (device, protocol, ts)
)
"""

ALERTS_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    id              VARCHAR   PRIMARY KEY,
    dedupe_key      VARCHAR   NOT NULL UNIQUE,
    device          VARCHAR   NOT NULL,
    protocol        VARCHAR   NOT NULL,
    rule            VARCHAR   NOT NULL,
    severity        VARCHAR   NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    hour            TIMESTAMP NOT NULL,
    message         VARCHAR   NOT NULL,
    evidence        VARCHAR   NOT NULL,  -- JSON object
    status          VARCHAR   NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    notify_status   VARCHAR   NOT NULL,
    notify_reason   VARCHAR,
    created_at      TIMESTAMP NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    acknowledged_at TIMESTAMP,
    resolved_at     TIMESTAMP,
    resolved_reason VARCHAR,
    notified_at     TIMESTAMP
)
"""

ALERT_DELIVERIES_DDL = """
CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert_id     VARCHAR   NOT NULL,
    channel      VARCHAR   NOT NULL,  -- kind:scheme://host (no path: webhook paths hold secrets)
    attempt      INTEGER   NOT NULL,
    ok           BOOLEAN   NOT NULL,
    status_code  INTEGER,
    error        VARCHAR,
    elapsed_ms   DOUBLE    NOT NULL,
    attempted_at TIMESTAMP NOT NULL
)
"""


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


def ensure_alert_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(ALERTS_DDL)
    conn.execute(ALERT_DELIVERIES_DDL)


def ensure_state_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(PROTOCOL_STATE_DDL)
    conn.execute(PROTOCOL_STATE_HISTORY_DDL)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Every anomaly table."""
    ensure_anomalies_table(conn)
    ensure_alert_tables(conn)
    ensure_state_tables(conn)


@contextlib.contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, ROLLBACK when the block raises: all or nothing of one cycle's writes."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def ensure_anomalies_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(ANOMALIES_DDL)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def write_scores(conn: duckdb.DuckDBPyConnection, scored: pd.DataFrame, model_version: str, now: datetime | None = None) -> int:
    """Upsert scored rows (device, protocol, ts, score, is_anomaly, detection features) into ``anomalies``."""
    ensure_anomalies_table(conn)
    if scored.empty:
        return 0
    frame = scored[["device", "protocol", "ts", "score", "is_anomaly", *DETECTION_FEATURES]].copy()
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    frame["model_version"] = model_version
    frame["scored_at"] = pd.Timestamp(now or _now()).as_unit("us")
    conn.register("scored_rows", frame)
    try:
        columns = ", ".join(frame.columns)
        conn.execute(f"INSERT OR REPLACE INTO anomalies ({columns}) SELECT {columns} FROM scored_rows")
    finally:
        conn.unregister("scored_rows")
    return len(frame)


def read_scores(conn: duckdb.DuckDBPyConnection, since: datetime | None) -> pd.DataFrame | None:
    """Scored rows with ``ts > since`` (device, protocol, ts, score, is_anomaly, detection features);
    None when nothing was ever scored or ``since`` is None (no telemetry)."""
    if since is None or not table_exists(conn, "anomalies"):
        return None
    columns = ", ".join(["device", "protocol", "ts", "score", "is_anomaly", *DETECTION_FEATURES])
    return conn.execute(f"SELECT {columns} FROM anomalies WHERE ts > ?", [since]).df()


def has_alert_history(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether any alert was ever recorded (the first cycle backfills history instead of paging)."""
    return table_exists(conn, "alerts") and conn.execute("SELECT count(*) FROM alerts").fetchone()[0] > 0


def alert_hours(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """(device, protocol, ts) of every hour already alerted on, for excluding them from training."""
    if not table_exists(conn, "alerts"):
        return pd.DataFrame({"device": pd.Series(dtype=str), "protocol": pd.Series(dtype=str), "ts": pd.Series(dtype="datetime64[us]")})
    return conn.execute("SELECT DISTINCT device, protocol, hour AS ts FROM alerts").df()


@dataclass
class RecordResult:
    new: list[Alert] = field(default_factory=list)
    decisions: list[NotificationDecision] = field(default_factory=list)
    duplicates: int = 0
    resolved: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    resolved_rows: int = 0

    @property
    def to_notify(self) -> list[Alert]:
        return [d.alert for d in self.decisions if d.notify]


def record_alerts(conn: duckdb.DuckDBPyConnection, candidates: Sequence[Alert], evaluated: Mapping[str, datetime],
                  settings: AlertSettings, now: datetime | None = None,
                  notify_since: datetime | None = None) -> RecordResult:
    """Insert the candidates not recorded yet (dedupe on ``dedupe_key``), decide their notification
    (cooldown), and auto-resolve keys that have been quiet for ``resolve_after_hours``.

    Alerts older than ``notify_since`` (history recorded on a first run) are stored with
    ``notify_status = backfill`` and never sent: nobody wants last month's alerts in their pager.
    """
    ensure_alert_tables(conn)
    now = now or _now()
    result = RecordResult()
    existing: set[str] = set()
    if candidates:
        lo = min(a.hour for a in candidates)
        hi = max(a.hour for a in candidates)
        existing = {row[0] for row in conn.execute("SELECT dedupe_key FROM alerts WHERE hour BETWEEN ? AND ?", [lo, hi]).fetchall()}
    seen: set[str] = set()
    new: list[Alert] = []
    for alert in candidates:
        if alert.dedupe_key in existing or alert.dedupe_key in seen:
            result.duplicates += 1
            continue
        seen.add(alert.dedupe_key)
        new.append(alert)
    result.new = new

    last_fired = {
        (d, p, r): h for d, p, r, h in conn.execute("SELECT device, protocol, rule, max(hour) FROM alerts GROUP BY ALL").fetchall()
    }
    last_sent = {
        (d, p, r): s
        for d, p, r, s in conn.execute(
            """
            SELECT device, protocol, rule, arg_max(severity, hour)
            FROM alerts WHERE notify_status NOT IN ('cooldown', 'backfill') AND status IN ('open', 'acknowledged')
            GROUP BY ALL
            """
        ).fetchall()
    }
    result.decisions = plan_notifications(new, last_fired, settings.cooldown_minutes, last_sent)
    if notify_since is not None:
        result.decisions = [
            NotificationDecision(d.alert, False, "backfill") if d.alert.hour < notify_since else d for d in result.decisions
        ]
    rows = [
        (
            d.alert.id, d.alert.dedupe_key, d.alert.device, d.alert.protocol, d.alert.rule, d.alert.severity,
            d.alert.hour, d.alert.message, json.dumps(d.alert.evidence, sort_keys=True, default=str), "open",
            "pending" if d.notify else d.reason, d.reason, now, now,
        )
        for d in result.decisions
    ]
    if rows:
        conn.executemany(
            """
            INSERT INTO alerts (id, dedupe_key, device, protocol, rule, severity, hour, message, evidence, status,
                                notify_status, notify_reason, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            rows,
        )

    # Auto-resolve, incident by incident: a key that fired, went quiet for resolve_after_hours and fired
    # again has two incidents; the first resolves even though the key is firing now.
    active = conn.execute(
        """
        SELECT a.device, a.protocol, a.rule, a.hour, a.status IN ('open', 'acknowledged') AS active
        FROM alerts a
        WHERE EXISTS (SELECT 1 FROM alerts o WHERE o.device = a.device AND o.protocol = a.protocol
                      AND o.rule = a.rule AND o.status IN ('open', 'acknowledged'))
        ORDER BY 1, 2, 3, 4
        """
    ).fetchall()
    hours_by_key: dict[tuple[str, str, str], list[datetime]] = {}
    for device, protocol, rule, hour, _ in active:
        hours_by_key.setdefault((device, protocol, rule), []).append(hour)
    reason = f"rule has not fired for {settings.resolve_after_hours} h"
    for key, hours in hours_by_key.items():
        for incident, resolved_at in split_incidents(hours, evaluated.get(key[0]), settings.resolve_after_hours):
            if resolved_at is None:
                continue
            count = conn.execute(
                """
                UPDATE alerts SET status = 'resolved', resolved_at = ?, resolved_reason = ?, updated_at = ?
                WHERE device = ? AND protocol = ? AND rule = ? AND hour BETWEEN ? AND ?
                  AND status IN ('open', 'acknowledged')
                """,
                [resolved_at, f"{key[2]}: {reason}", now, *key, incident[0], incident[-1]],
            ).fetchall()
            changed = int(count[0][0]) if count else 0
            if changed:
                result.resolved[key] = max(resolved_at, result.resolved.get(key, resolved_at))
                result.resolved_rows += changed
    return result


def record_deliveries(conn: duckdb.DuckDBPyConnection, notified: Iterable[Alert], attempts: Sequence[DeliveryAttempt],
                      now: datetime | None = None) -> dict[str, int]:
    """Append every attempt to ``alert_deliveries`` and set each notified alert's ``notify_status``."""
    ensure_alert_tables(conn)
    now = now or _now()
    if attempts:
        conn.executemany(
            """
            INSERT INTO alert_deliveries (alert_id, channel, attempt, ok, status_code, error, elapsed_ms, attempted_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
            # Redacted again here: whatever a caller built, no credential or token reaches the table.
            [(a.alert_id, redact_text(a.channel), a.attempt, a.ok, a.status_code, redact_text(a.error), a.elapsed_ms, a.attempted_at)
             for a in attempts],
        )
    by_alert: dict[str, list[DeliveryAttempt]] = {}
    for attempt in attempts:
        by_alert.setdefault(attempt.alert_id, []).append(attempt)
    counts = {"sent": 0, "failed": 0, "no_channel": 0}
    for alert in notified:
        tries = by_alert.get(alert.id, [])
        status = "no_channel" if not tries else "sent" if any(t.ok for t in tries) else "failed"
        counts[status] += 1
        conn.execute(
            "UPDATE alerts SET notify_status = ?, notified_at = ?, updated_at = ? WHERE id = ?",
            [status, now if status == "sent" else None, now, alert.id],
        )
    return counts


def acknowledge_alert(conn: duckdb.DuckDBPyConnection, alert_id: str, now: datetime | None = None) -> bool:
    """Mark an open alert acknowledged; False when no open alert has that id."""
    ensure_alert_tables(conn)
    rows = conn.execute(
        "UPDATE alerts SET status = 'acknowledged', acknowledged_at = ?, updated_at = ? WHERE id = ? AND status = 'open' RETURNING id",
        [now or _now(), now or _now(), alert_id],
    ).fetchall()
    return bool(rows)


# ----------------------------------------------------------------------------------- protocol state


def _degrading_causes(conn: duckdb.DuckDBPyConnection, device: str) -> dict[str, DegradingCause]:
    rules = sorted(DEGRADING_RULES)
    placeholders = ", ".join("?" for _ in rules)
    rows = conn.execute(
        f"""
        SELECT protocol, id, rule, hour, message, min(hour) OVER (PARTITION BY protocol) AS first_hour
        FROM alerts
        WHERE device = ? AND severity = 'critical' AND status IN ('open', 'acknowledged') AND rule IN ({placeholders})
        QUALIFY row_number() OVER (PARTITION BY protocol ORDER BY hour DESC, rule) = 1
        """,
        [device, *rules],
    ).fetchall()
    return {row[0]: DegradingCause(row[1], row[2], row[3], row[4], row[5]) for row in rows}


def _resolved_causes(conn: duckdb.DuckDBPyConnection, device: str) -> dict[str, ResolvedCause]:
    rules = sorted(DEGRADING_RULES)
    placeholders = ", ".join("?" for _ in rules)
    rows = conn.execute(
        f"""
        SELECT protocol, id, rule, hour, resolved_at
        FROM alerts
        WHERE device = ? AND severity = 'critical' AND status = 'resolved' AND rule IN ({placeholders})
        QUALIFY row_number() OVER (PARTITION BY protocol ORDER BY resolved_at DESC, hour DESC, rule) = 1
        """,
        [device, *rules],
    ).fetchall()
    return {row[0]: ResolvedCause(row[1], row[2], row[3], row[4]) for row in rows}


def update_protocol_state(conn: duckdb.DuckDBPyConnection, device: str, protocols: Iterable[str],
                          now: datetime | None = None) -> list[StateChange]:
    """Recompute each protocol's state from the ``alerts`` table (:func:`state.next_state`) and record the
    changes in ``protocol_state`` and ``protocol_state_history``.

    Degraded while an open or acknowledged critical alert of a degrading rule exists; the reason names the
    newest such alert.
    """
    ensure_alert_tables(conn)
    ensure_state_tables(conn)
    now = now or _now()
    causes = _degrading_causes(conn, device)
    resolved = _resolved_causes(conn, device)
    current = {
        row[0]: (row[1], row[2])
        for row in conn.execute("SELECT protocol, state, alert_id FROM protocol_state WHERE device = ?", [device]).fetchall()
    }
    changes: list[StateChange] = []
    for protocol in protocols:
        previous_state, previous_alert = current.get(protocol, (None, None))
        target = next_state(previous_state, previous_alert, causes.get(protocol), now, resolved.get(protocol))
        if previous_state == target.state:
            if target.state == "degraded" and previous_alert != target.alert_id:
                conn.execute(
                    "UPDATE protocol_state SET reason = ?, alert_id = ?, updated_at = ? WHERE device = ? AND protocol = ?",
                    [target.reason, target.alert_id, now, device, protocol],
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
            [device, protocol, target.state, target.reason, target.alert_id, target.since, now],
        )
        conn.execute(
            "INSERT INTO protocol_state_history (device, protocol, from_state, to_state, reason, alert_id, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [device, protocol, previous_state, target.state, target.reason, target.alert_id, now],
        )
        changes.append(StateChange(device, protocol, previous_state, target.state, target.reason, target.alert_id, now))
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


# ------------------------------------------------------------------------------- summaries (for the UI)


def alert_statuses(conn: duckdb.DuckDBPyConnection, alert_ids: Sequence[str]) -> dict[str, str]:
    """Current status (open / acknowledged / resolved) of the given alerts."""
    if not alert_ids or not table_exists(conn, "alerts"):
        return {}
    placeholders = ", ".join("?" for _ in alert_ids)
    return dict(conn.execute(f"SELECT id, status FROM alerts WHERE id IN ({placeholders})", list(alert_ids)).fetchall())


def open_alerts_by_rule(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Open and acknowledged alerts per (rule, severity): count, protocols, oldest and newest hour."""
    columns = ["rule", "severity", "open_alerts_count", "protocols", "oldest_hour_utc", "newest_hour_utc"]
    if not table_exists(conn, "alerts"):
        return pd.DataFrame(columns=columns)
    return conn.execute(
        """
        SELECT rule, severity, count(*) AS open_alerts_count, string_agg(DISTINCT protocol, ', ' ORDER BY protocol) AS protocols,
               strftime(min(hour), '%Y-%m-%d %H:00') AS oldest_hour_utc, strftime(max(hour), '%Y-%m-%d %H:00') AS newest_hour_utc
        FROM alerts WHERE status IN ('open', 'acknowledged')
        GROUP BY rule, severity
        ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, rule
        """
    ).df()[columns]


# ------------------------------------------------------------------------------ one cycle's writes


@dataclass
class EvaluationRecord:
    """What one alert evaluation wrote, read back inside the same transaction."""

    result: RecordResult
    state_changes: list[StateChange]
    states: dict[tuple[str, str], dict]  # (device, protocol) -> protocol_state row after the update
    alert_status: dict[str, str]  # new alert id -> status after auto-resolve
    open_by_rule: pd.DataFrame


def record_evaluation(conn: duckdb.DuckDBPyConnection, candidates: Sequence[Alert], evaluated: Mapping[str, datetime],
                      settings: AlertSettings, devices: Iterable[str], protocols: Sequence[str], *,
                      notify_since: datetime | None = None, now: datetime | None = None) -> EvaluationRecord:
    """Record alerts (dedupe, cooldown, auto-resolve) and update every protocol's state, in ONE transaction,
    so the state always reflects the alerts of the same run."""
    ensure_alert_tables(conn)
    ensure_state_tables(conn)
    now = now or _now()
    devices = list(devices)
    with transaction(conn):
        result = record_alerts(conn, candidates, evaluated, settings, now=now, notify_since=notify_since)
        changes = [c for d in devices for c in update_protocol_state(conn, d, protocols, now=now)]
    states = {(d, p): row for d in devices for p, row in read_state(conn, d).items() if p in protocols}
    return EvaluationRecord(
        result=result,
        state_changes=changes,
        states=states,
        alert_status=alert_statuses(conn, [a.id for a in result.new]),
        open_by_rule=open_alerts_by_rule(conn),
    )
