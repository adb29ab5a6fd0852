"""Read-only warehouse queries of the service, answered from the last good read while nothing changed.

DuckDB lets one process write OR several read: while a Dagster step holds the write connection (seconds,
during ingestion or the allocation tick) no read-only connection opens, and every open reader in turn
keeps writers out. So each read here is remembered with the warehouse's *stamp* (mtime and size of the
DuckDB file and of its WAL; any committed write changes one of them):

- stamp unchanged: the remembered answer is the current one, and no connection is opened (an open costs
  15-20 ms of CPU; 50 pollers would otherwise keep a shared lock on the file most of the time);
- stamp changed: one caller per read re-reads (single flight); callers arriving meanwhile get the last good
  answer at once instead of opening their own connection;
- a writer holds the lock: the re-read retries for :data:`STALE_READ_TIMEOUT_S` only, then the last good
  answer is served (``stale_for_s`` says since when it could not be confirmed). Only a read that has never
  succeeded waits up to :data:`READ_LOCK_TIMEOUT_S` and then raises :class:`WarehouseBusy`.

A missing warehouse file or table is not an error here: the service starts before the pipeline has run,
and callers report "not available yet".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import duckdb

from earnopt_assets.warehouse import connect, table_exists

log = logging.getLogger("earnopt.service")

T = TypeVar("T")

# A request should not hang behind a long materialization: give up on the lock after this long when no
# earlier answer exists, and after the short one when the last good answer can be served instead.
READ_LOCK_TIMEOUT_S = 2.0
STALE_READ_TIMEOUT_S = 0.25


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


def warehouse_stamp(db_path: Path) -> tuple:
    """(mtime_ns, size) of the DuckDB file and of its WAL (None where absent): any committed write changes one."""
    stamp: list[tuple[int, int] | None] = []
    for path in (db_path, db_path.with_name(db_path.name + ".wal")):
        try:
            stat = path.stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


@dataclass
class Reading(Generic[T]):
    """A read's answer; ``stale_for_s`` is None when it is current, else for how long it could not be
    confirmed (a writer held the lock)."""

    value: T
    stale_for_s: float | None = None


@dataclass
class _Remembered:
    stamp: tuple
    value: Any
    confirmed_at: float  # monotonic time the stamp last matched or the value was read


class LastGoodReads:
    """The last good answer of each read, per warehouse stamp (see the module docstring)."""

    def __init__(self) -> None:
        self._answers: dict[Hashable, _Remembered] = {}
        self._flights: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def clear(self) -> None:
        with self._guard:
            self._answers.clear()

    def read(self, db_path: Path, key: Hashable, query: Callable[[float], T]) -> Reading[T]:
        """``query(lock_timeout_s)`` opens its own connection; raises what it raises when nothing is remembered."""
        key = (str(db_path), key)
        stamp = warehouse_stamp(db_path)
        if stamp[0] is None:  # no warehouse (yet, or any more): nothing remembered is current
            with self._guard:
                self._answers.pop(key, None)
            return Reading(query(READ_LOCK_TIMEOUT_S))
        with self._guard:
            known = self._answers.get(key)
            flight = self._flights.setdefault(key, threading.Lock())
            if known is not None and known.stamp == stamp:
                known.confirmed_at = time.monotonic()
                return Reading(known.value)
        if known is not None and not flight.acquire(blocking=False):  # another caller is re-reading it
            return Reading(known.value, time.monotonic() - known.confirmed_at)
        if known is None and not flight.acquire(timeout=READ_LOCK_TIMEOUT_S):
            raise WarehouseBusy(f"warehouse {db_path}: a first read of it is still waiting for a writer")
        try:
            with self._guard:  # re-read while we queued for the flight?
                known = self._answers.get(key)
            stamp = warehouse_stamp(db_path)  # before the read: a write landing during it forces the next re-read
            if known is not None and known.stamp == stamp:
                known.confirmed_at = time.monotonic()
                return Reading(known.value)
            try:
                value = query(STALE_READ_TIMEOUT_S if known is not None else READ_LOCK_TIMEOUT_S)
            except WarehouseBusy:
                if known is None:
                    raise
                log.debug("warehouse busy: serving the last good answer of %s", key[1])
                return Reading(known.value, time.monotonic() - known.confirmed_at)
            with self._guard:
                self._answers[key] = _Remembered(stamp, value, time.monotonic())
            return Reading(value)
        finally:
            flight.release()


LAST_GOOD = LastGoodReads()


def with_tables(db_path: Path, tables: tuple[str, ...], query: Callable[[duckdb.DuckDBPyConnection], T], default: T,
                timeout_s: float = READ_LOCK_TIMEOUT_S) -> T:
    """Run ``query`` on a fresh read-only connection if every table exists, else return ``default``."""
    with read_connection(db_path, timeout_s) as conn:
        if not all(table_exists(conn, name) for name in tables):
            return default
        return query(conn)


def remembered(db_path: Path, key: Hashable, tables: tuple[str, ...], query: Callable[[duckdb.DuckDBPyConnection], T],
               default: T) -> Reading[T]:
    """:func:`with_tables` through :data:`LAST_GOOD`: the last good answer while the warehouse is unchanged or busy."""
    return LAST_GOOD.read(db_path, key, lambda timeout_s: with_tables(db_path, tables, query, default, timeout_s))


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

    return remembered(db_path, "latest_telemetry_ts", (), lambda c: _utc(latest_ts(c)), None).value


def warehouse_summary(db_path: Path) -> Reading[tuple[datetime | None, datetime | None]]:
    """``(newest telemetry hour, newest allocation cycle time)`` for ``/health``, in one connection (which
    is the ping), remembered like every read here."""
    from earnopt_assets.allocation.store import latest_cycle_time  # the allocation tables' one owner
    from earnopt_assets.ingestion.store import latest_ts  # the telemetry table's one owner

    def query(conn: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
        return _utc(latest_ts(conn)), _utc(latest_cycle_time(conn))

    return remembered(db_path, "warehouse_summary", (), query, (None, None))


def latest_forecast_rows(db_path: Path, protocol: str, device: str) -> Reading[Any]:
    """The newest stored forecast of ``protocol`` on ``device`` (a DataFrame; empty when none), through
    :func:`earnopt_assets.forecasting.store.latest_forecast_of`, the table's owner."""
    import pandas as pd

    from earnopt_assets.forecasting.store import latest_forecast_of

    return remembered(db_path, ("latest_forecast_rows", protocol, device), (), lambda c: latest_forecast_of(c, protocol, device),
                      pd.DataFrame())


def latest_forecasts(db_path: Path, device: str) -> dict[str, tuple[float, str | None]]:
    """Per protocol of ``device``: the first target hour of its newest forecast, and the forecast's source
    (read through :func:`earnopt_assets.forecasting.store.latest_forecasts`, the table's owner)."""
    from earnopt_assets.forecasting.store import latest_forecasts as newest

    def query(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[float, str | None]]:
        frame = newest(conn, device)
        first = frame.sort_values(["protocol", "target_ts"]).groupby("protocol", sort=True).head(1)
        return {str(r.protocol): (float(r.value), None if r.source is None else str(r.source)) for r in first.itertuples()}

    return remembered(db_path, ("latest_forecasts", device), ("forecasts",), query, {}).value


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

    return remembered(db_path, "open_alerts", ("alerts",), query, (False, [])).value


def latest_allocation_time(db_path: Path) -> datetime | None:
    from earnopt_assets.allocation.store import latest_cycle_time  # the allocation tables' one owner

    def query(conn: duckdb.DuckDBPyConnection) -> datetime | None:
        return _utc(latest_cycle_time(conn))

    return remembered(db_path, "latest_allocation_time", ("optimization_cycles",), query, None).value
