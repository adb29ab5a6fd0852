"""The actuation area's tables: ``actuations`` and ``resource_usage``. This module is their ONE owner
(DDL, reads, writes); the allocation cycle reads confirmations through :func:`confirmed_shares`.

* ``actuations`` - one row per (actuation run, protocol, status): what was ``planned``, ``applied``,
  ``confirmed`` (limits read back with ``docker inspect``), ``failed``, ``rolled_back`` (with the reason;
  ``rollback_failed`` when the engine refused even that),
  ``skipped`` (not mapped, not found, ambiguous) or, in dry-run, ``dry_run`` (what it would have done).
* ``resource_usage`` - per (device, protocol, hour) the mean and peak CPU cores and memory MB the
  protocol's container used, from the Docker stats API (a running mean over the hour's samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from earnopt_assets.warehouse import table_exists

ACTUATION_STATUSES = ("planned", "applied", "confirmed", "failed", "rolled_back", "rollback_failed", "skipped", "dry_run")

ACTUATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS actuations (
    actuation_id       VARCHAR   NOT NULL,   -- one run of the actuator
    cycle_id           VARCHAR   NOT NULL,   -- the allocation cycle whose plan it acted on
    device             VARCHAR   NOT NULL,
    protocol           VARCHAR   NOT NULL,
    container          VARCHAR,              -- name; NULL when no container is mapped or found
    container_id       VARCHAR,
    mode               VARCHAR   NOT NULL,   -- dry_run | apply
    action             VARCHAR   NOT NULL,   -- adjust | restart | stop | start | keep | none
    status             VARCHAR   NOT NULL CHECK (status IN ({", ".join(repr(s) for s in ACTUATION_STATUSES)})),
    share              DOUBLE,
    before_cpu_cores   DOUBLE,
    before_memory_mb   DOUBLE,
    before_running     BOOLEAN,
    after_cpu_cores    DOUBLE,
    after_memory_mb    DOUBLE,
    after_running      BOOLEAN,
    reason             VARCHAR   NOT NULL,
    recorded_at        TIMESTAMP NOT NULL,
    PRIMARY KEY (actuation_id, protocol, status)
)
"""

RESOURCE_USAGE_DDL = """
CREATE TABLE IF NOT EXISTS resource_usage (
    device               VARCHAR   NOT NULL,
    protocol             VARCHAR   NOT NULL,
    hour                 TIMESTAMP NOT NULL,
    container            VARCHAR   NOT NULL,
    samples              INTEGER   NOT NULL,
    cpu_cores_mean       DOUBLE    NOT NULL,
    cpu_cores_max        DOUBLE    NOT NULL,
    memory_mb_mean       DOUBLE    NOT NULL,
    memory_mb_max        DOUBLE    NOT NULL,
    cpu_limit_cores      DOUBLE,             -- the limit in force at the last sample (NULL = none)
    memory_limit_mb      DOUBLE,
    updated_at           TIMESTAMP NOT NULL,
    PRIMARY KEY (device, protocol, hour)
)
"""


def ensure_actuation_tables(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(ACTUATIONS_DDL)
    conn.execute(RESOURCE_USAGE_DDL)


@dataclass(frozen=True)
class ActuationRecord:
    """One row of ``actuations``."""

    actuation_id: str
    cycle_id: str
    device: str
    protocol: str
    container: str | None
    container_id: str | None
    mode: str
    action: str
    status: str
    share: float | None
    before_cpu_cores: float | None
    before_memory_mb: float | None
    before_running: bool | None
    after_cpu_cores: float | None
    after_memory_mb: float | None
    after_running: bool | None
    reason: str
    recorded_at: datetime


_COLUMNS = tuple(ActuationRecord.__dataclass_fields__)


def write_actuations(conn: duckdb.DuckDBPyConnection, records: Sequence[ActuationRecord]) -> int:
    """Append the records (a later status of the same run and protocol replaces nothing: each is its own row)."""
    ensure_actuation_tables(conn)
    if records:
        conn.executemany(
            f"INSERT OR REPLACE INTO actuations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            [tuple(getattr(r, c) for c in _COLUMNS) for r in records],
        )
    return len(records)


def read_actuations(conn: duckdb.DuckDBPyConnection, device: str, actuation_id: str | None = None) -> pd.DataFrame:
    """Rows of one run (or every run of ``device``), oldest first."""
    if not table_exists(conn, "actuations"):
        return pd.DataFrame(columns=list(_COLUMNS))
    if actuation_id is None:
        return conn.execute("SELECT * FROM actuations WHERE device = ? ORDER BY recorded_at", [device]).df()
    return conn.execute("SELECT * FROM actuations WHERE device = ? AND actuation_id = ? ORDER BY recorded_at",
                        [device, actuation_id]).df()


def restarts_since(conn: duckdb.DuckDBPyConnection, device: str, since: datetime) -> dict[str, int]:
    """Restarts actually performed per protocol since ``since`` (a rolled-back restart still happened)."""
    if not table_exists(conn, "actuations"):
        return {}
    rows = conn.execute(
        """
        SELECT protocol, count(*) FROM actuations
        WHERE device = ? AND mode = 'apply' AND action = 'restart' AND status = 'applied' AND recorded_at >= ?
        GROUP BY protocol
        """,
        [device, since],
    ).fetchall()
    return {str(p): int(n) for p, n in rows}


def confirmed_shares(conn: duckdb.DuckDBPyConnection, device: str, protocols: Sequence[str]) -> dict[str, dict]:
    """Per protocol the newest share the actuator confirmed in force (``docker inspect``): share, confirmed_at,
    cycle_id. A run that was rolled back afterwards does not count."""
    if not table_exists(conn, "actuations") or not protocols:
        return {}
    rows = conn.execute(
        """
        SELECT protocol, arg_max(share, recorded_at), max(recorded_at), arg_max(cycle_id, recorded_at)
        FROM actuations a
        WHERE device = ? AND status = 'confirmed' AND list_contains(?, protocol)
          AND NOT EXISTS (SELECT 1 FROM actuations r WHERE r.actuation_id = a.actuation_id AND r.status = 'rolled_back')
        GROUP BY protocol
        """,
        [device, list(protocols)],
    ).fetchall()
    return {str(p): {"share": float(s), "confirmed_at": t, "cycle_id": c} for p, s, t, c in rows}


def record_usage_samples(conn: duckdb.DuckDBPyConnection, device: str, samples: pd.DataFrame, now: datetime) -> int:
    """Fold samples (protocol, container, ts, cpu_cores, memory_mb, cpu_limit_cores, memory_limit_mb) into
    their hours: mean_new = (mean * n + x) / (n + 1), max_new = max(max, x)."""
    ensure_actuation_tables(conn)
    for row in samples.itertuples(index=False):
        hour = pd.Timestamp(row.ts).floor("h").to_pydatetime()
        conn.execute(
            """
            INSERT INTO resource_usage AS u (device, protocol, hour, container, samples, cpu_cores_mean, cpu_cores_max,
                                             memory_mb_mean, memory_mb_max, cpu_limit_cores, memory_limit_mb, updated_at)
            VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (device, protocol, hour) DO UPDATE SET
                container = excluded.container,
                cpu_cores_mean = (u.cpu_cores_mean * u.samples + excluded.cpu_cores_mean) / (u.samples + 1),
                memory_mb_mean = (u.memory_mb_mean * u.samples + excluded.memory_mb_mean) / (u.samples + 1),
                cpu_cores_max = greatest(u.cpu_cores_max, excluded.cpu_cores_max),
                memory_mb_max = greatest(u.memory_mb_max, excluded.memory_mb_max),
                samples = u.samples + 1,
                cpu_limit_cores = excluded.cpu_limit_cores,
                memory_limit_mb = excluded.memory_limit_mb,
                updated_at = excluded.updated_at
            """,
            [device, row.protocol, hour, row.container, row.cpu_cores, row.cpu_cores, row.memory_mb, row.memory_mb,
             row.cpu_limit_cores, row.memory_limit_mb, now],
        )
    return len(samples)


def read_resource_usage(conn: duckdb.DuckDBPyConnection, device: str, since: datetime | None = None) -> pd.DataFrame:
    """Hourly container use of ``device`` (for features and anomaly rules), oldest first."""
    if not table_exists(conn, "resource_usage"):
        return pd.DataFrame()
    since = since or datetime(1970, 1, 1)
    return conn.execute("SELECT * FROM resource_usage WHERE device = ? AND hour >= ? ORDER BY hour, protocol",
                        [device, since]).df()


def day_ago(now: datetime) -> datetime:
    return now - timedelta(hours=24)
