"""Read-only warehouse queries of the service. Each opens a short read-only connection (retrying briefly
while a Dagster step holds the write lock) and returns plain Python values.

A missing warehouse file or table is not an error here: the service starts before the pipeline has run,
and callers report "not available yet".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from earnopt_assets.warehouse import connect, table_exists

log = logging.getLogger("earnopt.service")

T = TypeVar("T")

# A request should not hang behind a long materialization: give up on the lock after this long.
READ_LOCK_TIMEOUT_S = 2.0


class WarehouseBusy(RuntimeError):
    """The warehouse stayed locked by a writer for longer than the read timeout."""


class WarehouseMissing(FileNotFoundError):
    """The warehouse file does not exist yet."""


@contextmanager
def read_connection(db_path: Path, timeout_s: float = READ_LOCK_TIMEOUT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    try:
        with connect(db_path, read_only=True, timeout_s=timeout_s) as conn:
            yield conn
    except FileNotFoundError as exc:
        raise WarehouseMissing(str(exc)) from None
    except duckdb.IOException as exc:
        raise WarehouseBusy(f"warehouse {db_path} is locked by a writer: {exc}") from None


def with_tables(db_path: Path, tables: tuple[str, ...], query: Callable[[duckdb.DuckDBPyConnection], T], default: T) -> T:
    """Run ``query`` if every table exists, else return ``default``."""
    with read_connection(db_path) as conn:
        if not all(table_exists(conn, name) for name in tables):
            return default
        return query(conn)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None


def ping(db_path: Path) -> str:
    with read_connection(db_path) as conn:
        conn.execute("SELECT 1").fetchone()
    return "read-only connection ok"


def latest_telemetry_ts(db_path: Path) -> datetime | None:
    from earnopt_assets.ingestion.store import latest_ts  # the telemetry table's one owner

    return with_tables(db_path, (), lambda c: _utc(latest_ts(c)), None)


def latest_forecasts(db_path: Path, device: str) -> dict[str, tuple[float, str | None]]:
    """Per protocol of ``device``: the first target hour of its newest forecast, and the forecast's source
    (read through :func:`earnopt_assets.forecasting.store.latest_forecasts`, the table's owner)."""
    from earnopt_assets.forecasting.store import latest_forecasts as newest

    def query(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[float, str | None]]:
        frame = newest(conn, device)
        first = frame.sort_values(["protocol", "target_ts"]).groupby("protocol", sort=True).head(1)
        return {str(r.protocol): (float(r.value), None if r.source is None else str(r.source)) for r in first.itertuples()}

    return with_tables(db_path, ("forecasts",), query, {})


ALERT_COLUMNS = ("id", "device", "protocol", "rule", "severity", "hour", "message", "evidence", "status", "created_at", "updated_at", "acknowledged_at")


def open_alerts(db_path: Path) -> tuple[bool, list[dict[str, Any]]]:
    """``(available, rows)``: alerts not yet resolved (open or acknowledged), newest first.

    Columns follow ``earnopt_assets.anomaly.store`` (the anomaly area owns the table).
    """

    def query(conn: duckdb.DuckDBPyConnection) -> tuple[bool, list[dict[str, Any]]]:
        cursor = conn.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE status <> 'resolved' ORDER BY created_at DESC, id"
        )
        return True, [dict(zip(ALERT_COLUMNS, row)) for row in cursor.fetchall()]

    return with_tables(db_path, ("alerts",), query, (False, []))


def latest_allocation_time(db_path: Path) -> datetime | None:
    from earnopt_assets.allocation.store import latest_cycle_time  # the allocation tables' one owner

    def query(conn: duckdb.DuckDBPyConnection) -> datetime | None:
        return _utc(latest_cycle_time(conn))

    return with_tables(db_path, ("optimization_cycles",), query, None)
