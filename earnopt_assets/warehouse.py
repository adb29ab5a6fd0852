"""The DuckDB warehouse: shared table definitions and short-lived connections.

DuckDB allows one writing process at a time. Inside Dagster every asset that opens the warehouse runs
in the ``DUCKDB_POOL`` pool (limit 1, see ``dagster.yaml``/definitions), so steps queue instead of failing
on "Could not set lock on file". Outside Dagster (the API service, the CLI, benchmarks) use
:func:`connect`, which retries briefly while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

# Every Dagster asset/check that opens the warehouse declares pool=DUCKDB_POOL.
DUCKDB_POOL = "duckdb_warehouse"

# The telemetry contract (column order of raw_earnings). The table itself (DDL, reads, writes) belongs to
# earnopt_assets.ingestion.store.
TELEMETRY_COLUMNS: tuple[str, ...] = (
    "device",
    "protocol",
    "ts",
    "earnings_usd",
    "cpu_cores",
    "memory_gb",
    "bandwidth_mbps",
    "storage_gb",
    "allocation",
    "connection_failures",
    "latency_ms",
)

def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


@contextlib.contextmanager
def connect(path: str | Path, *, read_only: bool = False, timeout_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a short-lived connection, retrying with jittered backoff while another process holds the lock.

    A read-only connection to a file that does not exist yet raises ``FileNotFoundError`` instead of
    creating an empty database.
    """
    db = Path(path)
    if read_only and not db.exists():
        raise FileNotFoundError(f"warehouse {db} does not exist yet; materialize raw_earnings first")
    db.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            conn = duckdb.connect(str(db), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
    try:
        yield conn
    finally:
        conn.close()
