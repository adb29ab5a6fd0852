"""The one owner of the ingestion tables: ``raw_earnings``, ``quarantine``, ``ingested_files`` and
``balance_polls`` — their DDL, every write (staging, upsert) and every read. Nobody else writes SQL
against these tables; other areas call the read functions at the bottom of this module and combine
frames in pandas.

``raw_earnings`` and ``balance_polls`` share one column definition (:data:`TELEMETRY_TYPES`, keyed by
the telemetry contract ``warehouse.TELEMETRY_COLUMNS``); ``balance_polls`` holds ``balance_usd`` where
``raw_earnings`` holds ``earnings_usd``.

Staging: validated rows of one batch go to the temp table ``staged`` (one row per data record read,
bad rows with their reason). :func:`write_batch` then writes the batch in one transaction.
All values reach SQL as parameters; identifiers come from the fixed contract lists in this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime

import duckdb
import pandas as pd
import pyarrow as pa

from earnopt_assets.warehouse import TELEMETRY_COLUMNS, table_exists

# ----------------------------------------------------------------------------- DDL

TELEMETRY_TYPES: dict[str, str] = {
    "device": "VARCHAR   NOT NULL",
    "protocol": "VARCHAR   NOT NULL",
    "ts": "TIMESTAMP NOT NULL",  # UTC hour
    "earnings_usd": "DOUBLE    NOT NULL",
    "cpu_cores": "DOUBLE    NOT NULL",
    "memory_gb": "DOUBLE    NOT NULL",
    "bandwidth_mbps": "DOUBLE    NOT NULL",
    "storage_gb": "DOUBLE    NOT NULL",
    "allocation": "DOUBLE    NOT NULL",
    "connection_failures": "INTEGER   NOT NULL",
    "latency_ms": "DOUBLE",
}
assert tuple(TELEMETRY_TYPES) == TELEMETRY_COLUMNS, "the DDL must follow the telemetry contract"
LINEAGE_COLUMNS: tuple[str, ...] = ("source_file", "ingested_at")
STORED_COLUMNS: tuple[str, ...] = (*TELEMETRY_COLUMNS, *LINEAGE_COLUMNS)
# Columns of the batch temp tables after ``device, protocol, ts, value``.
MEASUREMENT_COLUMNS: tuple[str, ...] = TELEMETRY_COLUMNS[4:]


def _telemetry_ddl(table: str, value_column: str) -> str:
    columns = [f"{value_column if name == 'earnings_usd' else name} {sql_type}" for name, sql_type in TELEMETRY_TYPES.items()]
    columns += ["source_file VARCHAR", "ingested_at TIMESTAMP", "PRIMARY KEY (device, protocol, ts)"]
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(columns) + "\n)"


RAW_EARNINGS_DDL = _telemetry_ddl("raw_earnings", "earnings_usd")
# Quality of an hour: the keys of ``raw_earnings`` whose earnings were spread over a collector gap
# (balance polls more than ``imputed_after_hours`` apart), not observed. A sparse companion table, so the
# telemetry columns stay the contract; readers get it as the column ``imputed`` of :func:`read_telemetry`.
IMPUTED_HOURS_DDL = """
CREATE TABLE IF NOT EXISTS imputed_hours (
    device VARCHAR NOT NULL, protocol VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, PRIMARY KEY (device, protocol, ts)
)
"""
BALANCE_POLLS_DDL = _telemetry_ddl("balance_polls", "balance_usd")

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    source_file    VARCHAR   NOT NULL,  -- file name as it arrived in landing
    archived_as    VARCHAR,             -- where the file is kept now (archive/...)
    row_number     BIGINT    NOT NULL,  -- 1-based data record (CSV header not counted; JSONL line)
    reason         VARCHAR   NOT NULL,
    raw_record     VARCHAR,             -- the row as JSON text, exactly as read
    quarantined_at TIMESTAMP NOT NULL
)
"""

INGESTED_FILES_DDL = """
CREATE TABLE IF NOT EXISTS ingested_files (
    source_file      VARCHAR   NOT NULL,
    stored_as        VARCHAR,             -- archive/... or landing/rejected/...
    status           VARCHAR   NOT NULL,  -- 'ingested' or 'rejected'
    reason           VARCHAR,             -- why a file was rejected
    file_format      VARCHAR,
    kind             VARCHAR,             -- 'earnings' or 'balance'
    rows_read        BIGINT    NOT NULL,
    rows_accepted    BIGINT    NOT NULL,  -- passed validation (stored + superseded)
    rows_quarantined BIGINT    NOT NULL,
    min_ts           TIMESTAMP,           -- over every row whose ts parsed (accepted or not)
    max_ts           TIMESTAMP,
    size_bytes       BIGINT,
    mtime            TIMESTAMP,
    sha256           VARCHAR,
    ingested_at      TIMESTAMP NOT NULL
)
"""
# Added after the first release: older warehouses get them on the next ensure.
INGESTED_FILES_ADDED = (
    "ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS rows_stored BIGINT",
    "ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS rows_superseded BIGINT",
)

STAGED_DDL = """
CREATE OR REPLACE TEMP TABLE staged (
    file_index BIGINT, row_number BIGINT, protocol VARCHAR, device VARCHAR, ts_exact TIMESTAMP,
    value DOUBLE, cpu_cores DOUBLE, memory_gb DOUBLE, bandwidth_mbps DOUBLE, storage_gb DOUBLE,
    allocation DOUBLE, connection_failures DOUBLE, latency_ms DOUBLE, reason VARCHAR, raw_json VARCHAR,
    kind VARCHAR, superseded BOOLEAN DEFAULT FALSE
)
"""
STAGED_COLUMNS = "file_index, row_number, protocol, device, ts_exact, value, cpu_cores, memory_gb, bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms, reason, raw_json, kind"
_TEMP_TABLES = ("staged", "batch_earnings", "batch_polls", "batch_derived", "batch_all", "batch_existing")


def ensure_raw_earnings(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(RAW_EARNINGS_DDL)
    conn.execute(IMPUTED_HOURS_DDL)


SOURCE_CURSORS_DDL = """
CREATE TABLE IF NOT EXISTS source_cursors (
    source     VARCHAR   NOT NULL,  -- e.g. 'prometheus'
    protocol   VARCHAR   NOT NULL,
    cursor_ts  TIMESTAMP NOT NULL,  -- the newest hour boundary pulled (naive UTC)
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source, protocol)
)
"""


def ensure_ingestion_tables(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_raw_earnings(conn)
    conn.execute(SOURCE_CURSORS_DDL)
    conn.execute(QUARANTINE_DDL)
    conn.execute(INGESTED_FILES_DDL)
    for statement in INGESTED_FILES_ADDED:
        conn.execute(statement)
    conn.execute(BALANCE_POLLS_DDL)


# ----------------------------------------------------------------------------- staging


def begin_staging(conn: duckdb.DuckDBPyConnection) -> None:
    """A fresh ``staged`` temp table for one batch (timestamps are handled in UTC)."""
    ensure_ingestion_tables(conn)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(STAGED_DDL)


def stage_select(conn: duckdb.DuckDBPyConnection, select: str, params: dict[str, object]) -> None:
    """Append the rows of a validation SELECT (columns in :data:`STAGED_COLUMNS` order)."""
    conn.execute(f"INSERT INTO staged ({STAGED_COLUMNS}) {select}", params)


def stage_rejected_rows(conn: duckdb.DuckDBPyConnection, file_index: int, rows: pa.Table, kind: str = "earnings") -> None:
    """Rows that never became a record (``row_number``, ``reason``, ``raw_json``): quarantined as they are."""
    conn.register("__rejected_rows", rows)
    try:
        conn.execute(
            "INSERT INTO staged (file_index, row_number, reason, raw_json, kind) "
            "SELECT ?, row_number, reason, raw_json, ? FROM __rejected_rows",
            [file_index, kind],
        )
    finally:
        conn.unregister("__rejected_rows")


def discard_staged_file(conn: duckdb.DuckDBPyConnection, file_index: int) -> None:
    conn.execute("DELETE FROM staged WHERE file_index = ?", [file_index])


# The key of a staged row: earnings rows by hour, balance polls by their exact time (a collector that
# polls every 55 min puts two genuine polls in some clock hours; both are used).
_KEY_TS = "CASE WHEN kind = 'balance' THEN ts_exact ELSE date_trunc('hour', ts_exact) END"


def resolve_duplicate_keys(conn: duckdb.DuckDBPyConnection) -> None:
    """Settle keys that occur more than once among the valid staged rows: (device, protocol, ts hour) for
    earnings rows, (device, protocol, exact ts) for balance polls.

    Inside one file the later row wins and the earlier rows are quarantined with the winning row
    number. Across files (per kind: earnings rows and balance polls are separate tables) the row of the
    later file wins and the earlier rows are marked ``superseded``: valid, counted, not stored. The cheap
    hash-aggregate counts run first; the window queries only when there is something to mark.
    """
    valid_rows, distinct_in_file, distinct_overall = conn.execute(
        f"SELECT count(*), count(DISTINCT (file_index, kind, device, protocol, {_KEY_TS})), "
        f"count(DISTINCT (kind, device, protocol, {_KEY_TS})) FROM staged WHERE reason IS NULL"
    ).fetchone()
    if distinct_in_file < valid_rows:
        conn.execute(
            f"""
            UPDATE staged SET
                reason = CASE WHEN staged.kind = 'balance'
                    THEN 'duplicate poll (device, protocol, ts) in this file; row ' || d.winner || ' wins'
                    ELSE 'duplicate key (device, protocol, ts hour) in this file; row ' || d.winner || ' wins' END,
                raw_json = CAST(to_json(struct_pack(device := staged.device, protocol := staged.protocol,
                    ts := staged.ts_exact, value := staged.value, kind := staged.kind)) AS VARCHAR)
            FROM (
                SELECT file_index, row_number,
                       max(row_number) OVER (PARTITION BY file_index, kind, device, protocol, {_KEY_TS}) AS winner
                FROM staged WHERE reason IS NULL
            ) AS d
            WHERE staged.file_index = d.file_index AND staged.row_number = d.row_number AND d.row_number <> d.winner
            """
        )
    if distinct_overall < distinct_in_file:
        conn.execute(
            f"""
            UPDATE staged SET superseded = TRUE
            FROM (
                SELECT file_index, row_number,
                       max(file_index) OVER (PARTITION BY kind, device, protocol, {_KEY_TS}) AS winner
                FROM staged WHERE reason IS NULL
            ) AS d
            WHERE staged.file_index = d.file_index AND staged.row_number = d.row_number AND d.file_index <> d.winner
            """
        )


def staged_file_counts(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per staged file: rows read, valid, quarantined, superseded and the ts range (hours) of every parsed row."""
    return conn.execute(
        """
        SELECT file_index, count(*) AS read, count(*) FILTER (WHERE reason IS NULL) AS valid,
               count(reason) AS quarantined, count(*) FILTER (WHERE superseded) AS superseded,
               min(date_trunc('hour', ts_exact)) AS min_ts, max(date_trunc('hour', ts_exact)) AS max_ts
        FROM staged GROUP BY file_index
        """
    ).df()


def quarantine_reason_counts(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> dict[str, int]:
    """The most frequent quarantine reasons of the staged batch."""
    rows = conn.execute(
        "SELECT reason, count(*) FROM staged WHERE reason IS NOT NULL GROUP BY reason ORDER BY count(*) DESC, reason LIMIT ?",
        [limit],
    ).fetchall()
    return {str(reason): int(count) for reason, count in rows}


# ----------------------------------------------------------------------------- the batch write


@contextlib.contextmanager
def batch_transaction(conn: duckdb.DuckDBPyConnection, files: pa.Table) -> Iterator[None]:
    """One transaction for the batch writes; ``files`` (file_index, source_file, stored_as) is visible as
    ``__files`` meanwhile. Temp tables are dropped afterwards, committed or not."""
    conn.register("__files", files)
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.unregister("__files")
        for temp in _TEMP_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {temp}")


def write_quarantine(conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
    conn.execute(
        """
        INSERT INTO quarantine
        SELECT f.source_file, f.stored_as, s.row_number, s.reason, s.raw_json, ?
        FROM staged s JOIN __files f USING (file_index) WHERE s.reason IS NOT NULL
        """,
        [now],
    )


def split_batch(conn: duckdb.DuckDBPyConnection) -> None:
    """The winning valid rows, by kind, as ``batch_earnings`` (ts floored to the hour, ``imputed`` false)
    and ``batch_polls`` (ts exact: polls are resampled to the hour by :mod:`~earnopt_assets.ingestion.balance`)."""
    select = f"""
        SELECT device, protocol, {{ts}} AS ts, value, {', '.join(MEASUREMENT_COLUMNS[:-2])},
               CAST(connection_failures AS INTEGER) AS connection_failures, latency_ms, file_index{{extra}}
        FROM staged WHERE reason IS NULL AND NOT superseded AND kind = ?
    """
    earnings = select.format(ts="date_trunc('hour', ts_exact)", extra=", FALSE AS imputed")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_earnings AS {earnings}", ["earnings"])
    conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_polls AS {select.format(ts='ts_exact', extra='')}", ["balance"])


def stored_rows_per_file(conn: duckdb.DuckDBPyConnection) -> dict[int, int]:
    """Rows of each file that this batch stores (earnings rows plus balance polls), counted in the batch tables."""
    rows = conn.execute(
        "SELECT file_index, count(*) FROM (SELECT file_index FROM batch_earnings UNION ALL SELECT file_index FROM batch_polls) "
        "GROUP BY file_index"
    ).fetchall()
    return {int(index): int(count) for index, count in rows}


def upsert_balance_polls(conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Store this batch's balance polls (a later file overwrites a stored poll of the same hour)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in ("balance_usd", *MEASUREMENT_COLUMNS, *LINEAGE_COLUMNS))
    conn.execute(
        f"""
        INSERT INTO balance_polls
        SELECT p.device, p.protocol, p.ts, p.value, {', '.join('p.' + c for c in MEASUREMENT_COLUMNS)}, f.source_file, ?
        FROM batch_polls p JOIN __files f USING (file_index)
        ON CONFLICT (device, protocol, ts) DO UPDATE SET {updates}
        """,
        [now],
    )


def read_affected_balance_series(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every stored poll of the series this batch touched, ordered by series and ts, with ``since`` (the
    series' earliest poll in this batch) and ``file_index`` (-1 for a poll of an earlier batch)."""
    return conn.execute(
        f"""
        WITH affected AS (SELECT device, protocol, min(ts) AS since FROM batch_polls GROUP BY device, protocol)
        SELECT p.device, p.protocol, p.ts, p.balance_usd, {', '.join('p.' + c for c in MEASUREMENT_COLUMNS)},
               a.since, coalesce(b.file_index, -1) AS file_index
        FROM balance_polls p JOIN affected a USING (device, protocol)
        LEFT JOIN batch_polls b USING (device, protocol, ts)
        ORDER BY p.device, p.protocol, p.ts
        """
    ).df()


def stage_derived_earnings(conn: duckdb.DuckDBPyConnection, derived: pd.DataFrame) -> None:
    """``derived`` (device, protocol, ts, value, measurements, file_index) joins the earnings of the batch;
    where a derived hour and an earnings row share a key, the later file wins."""
    columns = ["device", "protocol", "ts", "value", *MEASUREMENT_COLUMNS, "file_index", "imputed"]
    if derived.empty:
        conn.execute("DROP TABLE IF EXISTS batch_all")
        conn.execute("ALTER TABLE batch_earnings RENAME TO batch_all")
        return
    conn.register("__derived", derived[columns])
    try:
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE batch_all AS
            SELECT * FROM (
                SELECT * FROM batch_earnings
                UNION ALL
                SELECT device, protocol, CAST(ts AS TIMESTAMP), value, {', '.join(MEASUREMENT_COLUMNS[:-2])},
                       CAST(connection_failures AS INTEGER), latency_ms, file_index, CAST(imputed AS BOOLEAN) FROM __derived
            )
            QUALIFY row_number() OVER (PARTITION BY device, protocol, ts ORDER BY file_index DESC) = 1
            """
        )
    finally:
        conn.unregister("__derived")


def upsert_raw_earnings(conn: duckdb.DuckDBPyConnection, now: datetime) -> tuple[int, int]:
    """Upsert ``batch_all`` into ``raw_earnings``; returns (inserted, updated) row counts.

    Keys already stored are UPDATEd in place and new keys are plain INSERTs: much faster than
    ``INSERT ... ON CONFLICT`` on a million rows, with the same result (the batch wins).
    """
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE batch_existing AS
        SELECT b.device, b.protocol, b.ts FROM batch_all b SEMI JOIN raw_earnings r USING (device, protocol, ts)
        """
    )
    total = conn.execute("SELECT count(*) FROM batch_all").fetchone()[0]
    existing = conn.execute("SELECT count(*) FROM batch_existing").fetchone()[0]
    if existing:
        assignments = ", ".join(f"{c} = b.{c}" for c in MEASUREMENT_COLUMNS)
        conn.execute(
            f"""
            UPDATE raw_earnings r SET
                earnings_usd = b.value, {assignments},
                source_file = coalesce(b.source_file, 'balance_polls'), ingested_at = ?
            FROM (SELECT b.*, f.source_file FROM batch_all b LEFT JOIN __files f USING (file_index)) AS b
            WHERE r.device = b.device AND r.protocol = b.protocol AND r.ts = b.ts
            """,
            [now],
        )
    new_rows = "batch_all b ANTI JOIN batch_existing e USING (device, protocol, ts)" if existing else "batch_all b"
    conn.execute(
        f"""
        INSERT INTO raw_earnings ({', '.join(STORED_COLUMNS)})
        SELECT b.device, b.protocol, b.ts, b.value, {', '.join('b.' + c for c in MEASUREMENT_COLUMNS)},
               coalesce(f.source_file, 'balance_polls'), ?
        FROM {new_rows} LEFT JOIN __files f USING (file_index)
        """,
        [now],
    )
    # The batch decides each of its hours' quality: observed hours leave imputed_hours, imputed ones enter.
    if existing:
        conn.execute("DELETE FROM imputed_hours q USING batch_existing e WHERE q.device = e.device AND q.protocol = e.protocol AND q.ts = e.ts")
    conn.execute("INSERT INTO imputed_hours SELECT device, protocol, ts FROM batch_all WHERE imputed ON CONFLICT DO NOTHING")
    return int(total) - int(existing), int(existing)


INGEST_LOG_COLUMNS: tuple[str, ...] = (
    "source_file", "stored_as", "status", "reason", "file_format", "kind", "rows_read", "rows_accepted",
    "rows_quarantined", "rows_stored", "rows_superseded", "min_ts", "max_ts", "size_bytes", "mtime", "sha256",
)


def log_files(conn: duckdb.DuckDBPyConnection, files: pa.Table, now: datetime) -> None:
    """Append one ``ingested_files`` row per processed file (``files`` has :data:`INGEST_LOG_COLUMNS`)."""
    conn.register("__ingested", files.select(list(INGEST_LOG_COLUMNS)))
    try:
        names = ", ".join(INGEST_LOG_COLUMNS)
        conn.execute(f"INSERT INTO ingested_files ({names}, ingested_at) SELECT {names}, ? FROM __ingested", [now])
    finally:
        conn.unregister("__ingested")


def write_source_cursors(conn: duckdb.DuckDBPyConnection, source: str, cursors: dict[str, datetime], now: datetime) -> None:
    """Move the pull cursors of ``source`` (protocol -> newest hour pulled); called inside the batch
    transaction, so a failed write leaves them where they were."""
    if not cursors:
        return
    items = sorted(cursors.items())
    values = ", ".join(["(?, ?, ?, ?)"] * len(items))  # one statement: a round trip per protocol adds up
    params = [x for protocol, cursor in items for x in (source, protocol, pd.Timestamp(cursor).to_pydatetime(), now)]
    conn.execute(
        f"INSERT INTO source_cursors VALUES {values} ON CONFLICT (source, protocol) DO UPDATE SET "
        "cursor_ts = excluded.cursor_ts, updated_at = excluded.updated_at",
        params,
    )


# ----------------------------------------------------------------------------- reads


def read_source_cursors(conn: duckdb.DuckDBPyConnection, source: str) -> dict[str, datetime]:
    """Protocol -> newest hour boundary pulled from ``source`` (empty before its first run)."""
    if not table_exists(conn, "source_cursors"):
        return {}
    rows = conn.execute("SELECT protocol, cursor_ts FROM source_cursors WHERE source = ? ORDER BY protocol", [source]).fetchall()
    return {str(protocol): ts for protocol, ts in rows}

_READABLE = frozenset((*STORED_COLUMNS, "imputed"))


def has_telemetry(conn: duckdb.DuckDBPyConnection) -> bool:
    """True once ``raw_earnings`` exists (the ingestion asset has run at least once)."""
    return table_exists(conn, "raw_earnings")


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    dtypes = {"ts": "datetime64[us]", "ingested_at": "datetime64[us]", "device": object, "protocol": object, "source_file": object,
              "connection_failures": "int32", "imputed": bool}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


def _filters(device: str | None, protocols: Sequence[str] | None, start: datetime | None, end: datetime | None) -> tuple[str, list]:
    clauses, params = ["TRUE"], []
    if device is not None:
        clauses.append("device = ?")
        params.append(device)
    if protocols is not None:
        clauses.append("list_contains(?, protocol)")
        params.append([str(p) for p in protocols])
    if start is not None:
        clauses.append("ts >= ?")
        params.append(pd.Timestamp(start).to_pydatetime())
    if end is not None:
        clauses.append("ts < ?")
        params.append(pd.Timestamp(end).to_pydatetime())
    return " AND ".join(clauses), params


def read_telemetry(
    conn: duckdb.DuckDBPyConnection,
    *,
    device: str | None = None,
    protocols: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of ``raw_earnings`` with ``start <= ts < end`` (naive UTC hours), ordered by device, protocol, ts.

    ``columns`` defaults to the telemetry contract (``warehouse.TELEMETRY_COLUMNS``); ``source_file`` and
    ``ingested_at`` may be asked for too. An empty frame with those columns when nothing is stored yet.
    """
    columns = list(TELEMETRY_COLUMNS if columns is None else columns)
    unknown = [c for c in columns if c not in _READABLE]
    if unknown:
        raise ValueError(f"unknown raw_earnings columns: {', '.join(map(str, unknown))}")
    if protocols is not None and not list(protocols):
        return _empty(columns)
    if not has_telemetry(conn):
        return _empty(columns)
    where, params = _filters(device, protocols, start, end)
    # On the caller's connection (not a cursor): a read inside the caller's transaction sees its writes,
    # and a connection with a pending executemany() result still works.
    joined = "imputed" in columns and table_exists(conn, "imputed_hours")  # older warehouses: nothing imputed yet
    quality = "(q.device IS NOT NULL)" if joined else "FALSE"
    selected = ", ".join(f"{quality} AS imputed" if c == "imputed" else c for c in columns)
    source = "raw_earnings LEFT JOIN imputed_hours q USING (device, protocol, ts)" if joined else "raw_earnings"
    sql = f"SELECT {selected} FROM {source} WHERE {where} ORDER BY device, protocol, ts"
    return conn.execute(sql, params).df()


def read_telemetry_tail(
    conn: duckdb.DuckDBPyConnection,
    *,
    hours: int,
    device: str | None = None,
    protocols: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The last ``hours`` hours of each (device, protocol) series, relative to that series' newest row
    (``ts > newest - hours``), ordered by device, protocol, ts."""
    wanted = list(TELEMETRY_COLUMNS if columns is None else columns)
    latest = telemetry_summary(conn, device=device, protocols=protocols)
    if latest.empty:
        return _empty(wanted)
    start = latest["latest_ts"].min() - pd.Timedelta(hours=hours)
    frame = read_telemetry(conn, device=device, protocols=protocols, start=start, columns=sorted({*wanted, "device", "protocol", "ts"}))
    newest = frame.groupby(["device", "protocol"])["ts"].transform("max")
    frame = frame.loc[frame["ts"] > newest - pd.Timedelta(hours=hours)].reset_index(drop=True)
    return frame[wanted]


def latest_ts(conn: duckdb.DuckDBPyConnection, *, device: str | None = None, protocol: str | None = None) -> datetime | None:
    """The newest stored hour (naive UTC), optionally of one device and/or protocol; None when there is none."""
    if not has_telemetry(conn):
        return None
    where, params = _filters(device, None if protocol is None else [protocol], None, None)
    return conn.execute(f"SELECT max(ts) FROM raw_earnings WHERE {where}", params).fetchone()[0]


def latest_ts_by_protocol(conn: duckdb.DuckDBPyConnection, device: str | None = None) -> dict[str, datetime]:
    """Protocol -> newest stored hour (over all devices unless ``device`` is given)."""
    if not has_telemetry(conn):
        return {}
    where, params = _filters(device, None, None, None)
    rows = conn.execute(f"SELECT protocol, max(ts) FROM raw_earnings WHERE {where} GROUP BY protocol ORDER BY protocol", params).fetchall()
    return {str(protocol): ts for protocol, ts in rows}


def telemetry_summary(
    conn: duckdb.DuckDBPyConnection, *, device: str | None = None, protocols: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per (device, protocol): ``rows``, ``first_ts``, ``latest_ts``; ordered by device, protocol."""
    columns = ["device", "protocol", "rows", "first_ts", "latest_ts"]
    if not has_telemetry(conn) or (protocols is not None and not list(protocols)):
        return pd.DataFrame({c: pd.Series(dtype="datetime64[us]" if c.endswith("_ts") else ("int64" if c == "rows" else object)) for c in columns})
    where, params = _filters(device, protocols, None, None)
    return conn.execute(
        f"SELECT device, protocol, count(*) AS rows, min(ts) AS first_ts, max(ts) AS latest_ts FROM raw_earnings "
        f"WHERE {where} GROUP BY device, protocol ORDER BY device, protocol",
        params,
    ).df()


def telemetry_totals(conn: duckdb.DuckDBPyConnection) -> tuple[int, int, datetime | None]:
    """(rows, series, newest hour) of ``raw_earnings``."""
    if not has_telemetry(conn):
        return 0, 0, None
    rows, series, latest = conn.execute("SELECT count(*), count(DISTINCT (device, protocol)), max(ts) FROM raw_earnings").fetchone()
    return int(rows), int(series), latest


def quarantine_total(conn: duckdb.DuckDBPyConnection) -> int:
    if not table_exists(conn, "quarantine"):
        return 0
    return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])


def read_quarantine(conn: duckdb.DuckDBPyConnection, *, source_file: str | None = None) -> pd.DataFrame:
    """Quarantined rows (optionally of one landing file), ordered by file and row number."""
    if not table_exists(conn, "quarantine"):
        return pd.DataFrame(columns=["source_file", "archived_as", "row_number", "reason", "raw_record", "quarantined_at"])
    return conn.execute(
        "SELECT * FROM quarantine WHERE ? IS NULL OR source_file = ? ORDER BY quarantined_at, source_file, row_number",
        [source_file, source_file],
    ).df()


def read_ingested_files(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The ingest log: one row per processed landing file, oldest first."""
    if not table_exists(conn, "ingested_files"):
        return pd.DataFrame(columns=["source_file", "status", *INGEST_LOG_COLUMNS[6:], "ingested_at"])
    return conn.execute("SELECT * FROM ingested_files ORDER BY ingested_at, source_file").df()


def read_balance_polls(conn: duckdb.DuckDBPyConnection, *, device: str | None = None, protocols: Sequence[str] | None = None) -> pd.DataFrame:
    """Stored balance polls, ordered by device, protocol, ts."""
    if not table_exists(conn, "balance_polls"):
        return pd.DataFrame(columns=["device", "protocol", "ts", "balance_usd"])
    where, params = _filters(device, protocols, None, None)
    return conn.execute(f"SELECT * FROM balance_polls WHERE {where} ORDER BY device, protocol, ts", params).df()


def hour_grid_violations(conn: duckdb.DuckDBPyConnection, now: datetime, *, future_slack_hours: float = 1.0, limit: int = 20) -> tuple[dict[str, int], pd.DataFrame]:
    """Rows of ``raw_earnings`` that break the hour grid: ``ts`` not exactly on the hour, ``ts`` later than
    ``now + future_slack_hours``, or negative / non-finite earnings. Returns counts per problem and up to
    ``limit`` example rows (device, protocol, ts, earnings_usd, problem)."""
    problems = {"off_hour": 0, "future": 0, "negative_or_non_finite": 0}
    examples = pd.DataFrame(columns=["device", "protocol", "ts", "earnings_usd", "problem"])
    if not has_telemetry(conn):
        return problems, examples
    horizon = pd.Timestamp(now).tz_localize(None) + pd.Timedelta(hours=future_slack_hours)
    classified = """
        SELECT device, protocol, ts, earnings_usd,
               CASE WHEN ts <> date_trunc('hour', ts) THEN 'off_hour'
                    WHEN ts > ? THEN 'future'
                    WHEN earnings_usd < 0 OR NOT isfinite(earnings_usd) THEN 'negative_or_non_finite' END AS problem
        FROM raw_earnings
    """
    horizon_param = horizon.to_pydatetime()
    for problem, count in conn.execute(
        f"SELECT problem, count(*) FROM ({classified}) WHERE problem IS NOT NULL GROUP BY problem", [horizon_param]
    ).fetchall():
        problems[str(problem)] = int(count)
    if any(problems.values()):
        examples = conn.execute(
            f"SELECT * FROM ({classified}) WHERE problem IS NOT NULL ORDER BY problem, device, protocol, ts LIMIT ?",
            [horizon_param, limit],
        ).df()
    return problems, examples


def row_accounting_violations(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Logged files whose counts do not add up: ``rows_read <> rows_stored + rows_superseded +
    rows_quarantined`` (files logged before those columns existed are skipped)."""
    columns = ["file", "ingested_at_utc", "read_rows", "stored_rows", "superseded_rows", "quarantined_rows"]
    if not table_exists(conn, "ingested_files"):
        return pd.DataFrame(columns=columns)
    frame = conn.execute(
        """
        SELECT source_file, strftime(ingested_at, '%Y-%m-%d %H:%M:%S'), rows_read, rows_stored, rows_superseded, rows_quarantined
        FROM ingested_files
        WHERE rows_stored IS NOT NULL AND rows_read <> rows_stored + coalesce(rows_superseded, 0) + rows_quarantined
        ORDER BY ingested_at DESC, source_file LIMIT 50
        """
    ).df()
    frame.columns = columns
    return frame
