"""Landing-file ingestion into the DuckDB warehouse. Plain Python + DuckDB; no Dagster.

One call of :func:`ingest_landing` processes every file at the top level of the landing directory
(hidden files, i.e. temp files of an atomic write, are skipped), oldest modification time first:

1. **read** each file into Arrow: CSV (every column read as text, so a bad value is a row problem, not a
   file problem; a row with the wrong number of fields is quarantined), Parquet (native types) or JSON
   Lines (one JSON object per line, validated per line). A file that cannot be read at all (unknown
   suffix, corrupt Parquet, not UTF-8, empty CSV...) is moved to ``landing/rejected/`` and recorded in
   ``ingested_files`` with the reason; the other files still load.
2. **validate** every row in one vectorised DuckDB query (no Python row loop). A row is quarantined,
   with every reason that applies joined by ``"; "``, when: a required column is missing or an unknown
   column is present; a value is missing, not a number / not an integer, NaN or Inf; earnings or a
   balance is negative; a resource or ``connection_failures`` is negative; ``allocation`` is outside
   [0, 1]; ``latency_ms`` (optional) is negative; the protocol is not in the catalog; the timestamp cannot
   be parsed; the device name is not ``[A-Za-z0-9_.-]{1,64}``; or the same (device, protocol, hour)
   appears again later in the same file (the later row wins, the earlier is quarantined).
3. **timestamps**: ISO-8601 text or Parquet timestamps. An offset (``Z``, ``+02:00``) or a tz-aware
   Parquet type is converted to UTC; a naive value is UTC. A ts that is not on the hour is FLOORED to its
   hour (collectors poll at :03 or :58; the reading belongs to the hour it was taken in).
4. **balance polls** (``balance_usd`` instead of ``earnings_usd``) are stored in ``balance_polls`` and
   differenced per (device, protocol) ordered by ts, across files and runs:

       earnings_t = balance_t - balance_prev      if balance_t >= balance_prev
       earnings_t = balance_t                     if balance_t <  balance_prev  (payout/reset: the
                                                  balance restarted from 0, so what it shows now was
                                                  earned since the reset)

   The first poll of a series is its baseline and produces no earnings row. The whole difference is
   booked on the poll's hour (a gap is not spread). A late poll re-derives the poll after it.
5. **upsert** the valid rows into ``raw_earnings`` on (device, protocol, ts): reloading the same file
   changes nothing; a key seen again in a LATER file (by processing order) overwrites the stored row.
   Bad rows go to ``quarantine`` (source file, row number, reasons, raw record as JSON).
6. **archive**: after the transaction commits, each processed file moves to ``archive/`` (nothing is
   deleted; a name collision gets a ``__N`` suffix).

Row numbers are 1-based data records: the CSV header is not counted; for JSON Lines it is the line
number. Invariant per file and in total: ``accepted + quarantined == read``.

Concurrency: the caller holds a write connection (one process at a time holds the DuckDB file); an
``flock`` on ``<data_dir>/.landing.ingest.lock`` (beside landing, so landing only ever holds data) also serialises threads of one process, so no file is ever read by
two ingestions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from earnopt_assets.catalog import Catalog
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.warehouse import ensure_raw_earnings

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
RESOURCE_COLUMNS: tuple[str, ...] = ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")
REQUIRED_COLUMNS: tuple[str, ...] = ("protocol", "ts", *RESOURCE_COLUMNS, "allocation", "connection_failures")
OPTIONAL_COLUMNS: tuple[str, ...] = ("device", "latency_ms")
VALUE_COLUMNS: tuple[str, ...] = ("earnings_usd", "balance_usd")  # exactly one of them per file
DEVICE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LOCK_TIMEOUT_S = 600.0

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
    rows_accepted    BIGINT    NOT NULL,
    rows_quarantined BIGINT    NOT NULL,
    min_ts           TIMESTAMP,           -- over every row whose ts parsed (accepted or not)
    max_ts           TIMESTAMP,           -- "newest landing data" for the freshness check
    size_bytes       BIGINT,
    mtime            TIMESTAMP,
    sha256           VARCHAR,
    ingested_at      TIMESTAMP NOT NULL
)
"""

BALANCE_POLLS_DDL = """
CREATE TABLE IF NOT EXISTS balance_polls (
    device              VARCHAR   NOT NULL,
    protocol            VARCHAR   NOT NULL,
    ts                  TIMESTAMP NOT NULL,
    balance_usd         DOUBLE    NOT NULL,
    cpu_cores           DOUBLE    NOT NULL,
    memory_gb           DOUBLE    NOT NULL,
    bandwidth_mbps      DOUBLE    NOT NULL,
    storage_gb          DOUBLE    NOT NULL,
    allocation          DOUBLE    NOT NULL,
    connection_failures INTEGER   NOT NULL,
    latency_ms          DOUBLE,
    source_file         VARCHAR,
    ingested_at         TIMESTAMP,
    PRIMARY KEY (device, protocol, ts)
)
"""


class UnreadableFileError(ValueError):
    """The file cannot be read at all; it is moved to ``landing/rejected/``."""


def ensure_ingestion_tables(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_raw_earnings(conn)
    conn.execute(QUARANTINE_DDL)
    conn.execute(INGESTED_FILES_DDL)
    conn.execute(BALANCE_POLLS_DDL)


# ----------------------------------------------------------------------------- reports


@dataclass
class FileReport:
    source_file: str
    status: str  # "ingested" | "rejected"
    file_format: str | None = None
    kind: str | None = None
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    min_ts: datetime | None = None
    max_ts: datetime | None = None
    reason: str | None = None
    stored_as: str | None = None

    def as_row(self) -> dict[str, object]:
        return {
            "file": self.source_file,
            "status": self.status,
            "format": self.file_format or "",
            "kind": self.kind or "",
            "read": self.rows_read,
            "accepted": self.rows_accepted,
            "quarantined": self.rows_quarantined,
            "max_ts": "" if self.max_ts is None else f"{self.max_ts:%Y-%m-%d %H:%M}",
            "reason": self.reason or "",
        }


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    rows_inserted: int = 0  # new (device, protocol, ts) keys in raw_earnings
    rows_updated: int = 0  # keys that existed and were overwritten
    balance_baselines: int = 0  # first polls of a series: accepted, but no earnings row yet
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_accepted(self) -> int:
        return sum(f.rows_accepted for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def files_rejected(self) -> int:
        return sum(1 for f in self.files if f.status == "rejected")

    @property
    def files_ingested(self) -> int:
        return sum(1 for f in self.files if f.status == "ingested")

    def markdown_table(self, limit: int = 50) -> str:
        header = "| file | status | format | kind | read | accepted | quarantined | max ts | reason |\n|---|---|---|---|---:|---:|---:|---|---|\n"
        lines = []
        for f in self.files[:limit]:
            row = f.as_row()
            reason = str(row["reason"]).replace("|", "\\|")[:120]
            lines.append(
                f"| {row['file']} | {row['status']} | {row['format']} | {row['kind']} | {row['read']} | "
                f"{row['accepted']} | {row['quarantined']} | {row['max_ts']} | {reason} |"
            )
        if len(self.files) > limit:
            lines.append(f"| ... {len(self.files) - limit} more files | | | | | | | | |")
        lines.append(
            f"| **total** | {self.files_ingested} ingested, {self.files_rejected} rejected | | | **{self.rows_read}** | "
            f"**{self.rows_accepted}** | **{self.rows_quarantined}** | | |"
        )
        return header + "\n".join(lines)


# ----------------------------------------------------------------------------- files and locks


def landing_files(landing: Path) -> list[Path]:
    """Regular, non-hidden files at the top of ``landing``, oldest mtime first (then by name)."""
    if not landing.is_dir():
        return []
    files = [p for p in landing.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def unique_destination(directory: Path, name: str) -> Path:
    """``directory/name``, or ``stem__N.suffix`` with the first free N: never overwrite a kept file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while target.exists():
        target = directory / f"{stem}__{n}{suffix}"
        n += 1
    return target


@contextlib.contextmanager
def landing_lock(landing: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive ``flock`` on ``<landing parent>/.<landing name>.ingest.lock`` (blocks threads and
    processes alike). The lock file lives beside landing so that landing only ever holds data files."""
    landing.mkdir(parents=True, exist_ok=True)
    lock_path = landing.parent / f".{landing.name}.ingest.lock"
    handle = open(lock_path, "a+")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another ingestion holds {lock_path} for > {timeout_s}s") from None
                time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


# ----------------------------------------------------------------------------- readers


def _with_row_numbers(table: pa.Table, numbers: Sequence[int] | None = None) -> pa.Table:
    import numpy as np

    values = np.arange(1, table.num_rows + 1, dtype=np.int64) if numbers is None else np.asarray(numbers, dtype=np.int64)
    return table.append_column("__row_number", pa.array(values))


def read_csv_file(path: Path) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """All columns as text. Returns the table (+ ``__row_number``) and the rows with a wrong field count."""
    import pyarrow.csv as pacsv

    try:
        with open(path, "rb") as handle:
            first_line = handle.readline().decode("utf-8-sig").strip("\r\n")  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"not UTF-8 text: {exc}") from None
    if not first_line.strip():
        raise UnreadableFileError("empty file or empty header line")
    names = next(iter(__import__("csv").reader([first_line])))
    if len(set(names)) != len(names):
        raise UnreadableFileError(f"duplicate column names in header: {names}")
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        table = pacsv.read_csv(path, convert_options=convert)
        return _with_row_numbers(table), []
    except pa.ArrowInvalid as exc:
        if "Expected" not in str(exc) or "columns" not in str(exc):
            raise UnreadableFileError(f"cannot parse CSV: {exc}") from None
    # Ragged rows: re-read single-threaded so Arrow reports record numbers, and quarantine those rows.
    ragged: list[tuple[int, str, str]] = []

    def on_invalid(row) -> str:
        ragged.append((int(row.number) - 1, f"expected {row.expected_columns} fields, got {row.actual_columns}", row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        raise UnreadableFileError(f"cannot parse CSV: {exc}") from None
    bad = {number for number, _, _ in ragged}
    total = table.num_rows + len(bad)
    numbers = [n for n in range(1, total + 1) if n not in bad]
    return _with_row_numbers(table, numbers), ragged


def read_parquet_file(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UnreadableFileError(f"cannot read Parquet: {exc}") from None
    return _with_row_numbers(table)


def read_jsonl_file(path: Path) -> pa.Table:
    """One row per non-blank line: ``line`` (text) and its 1-based line number."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"not UTF-8 text: {exc}") from None
    lines = text.splitlines()
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]
    kept = [lines[i - 1] for i in numbers]
    if not kept and text.strip() == "":
        raise UnreadableFileError("empty file")
    return _with_row_numbers(pa.table({"line": pa.array(kept, pa.string())}), numbers)


# ----------------------------------------------------------------------------- validation SQL


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _is_numeric(duck_type: str) -> bool:
    return duck_type.upper().startswith(_NUMERIC_TYPES)


@dataclass
class _Column:
    """How one contract column is read from the source: a SQL expression of the raw value and its type."""

    raw: str | None  # SQL expression of the raw value, None when the column is absent
    duck_type: str  # VARCHAR for text sources
    guard: str | None = None  # per-row condition for checking at all (JSONL: the key exists)


def _value_sql(col: _Column) -> tuple[str, str, str]:
    """(present, as_double, text) SQL for a numeric column."""
    if col.raw is None:
        return "FALSE", "CAST(NULL AS DOUBLE)", "NULL"
    if _is_numeric(col.duck_type):
        return f"({col.raw} IS NOT NULL)", f"CAST({col.raw} AS DOUBLE)", f"CAST({col.raw} AS VARCHAR)"
    if col.duck_type.upper() == "VARCHAR":
        return (
            f"({col.raw} IS NOT NULL AND trim({col.raw}) <> '')",
            f"TRY_CAST(trim({col.raw}) AS DOUBLE)",
            f"left(CAST({col.raw} AS VARCHAR), 40)",
        )
    # BOOLEAN, DATE, nested...: a wrong type for every row.
    return f"({col.raw} IS NOT NULL)", "CAST(NULL AS DOUBLE)", f"left(CAST({col.raw} AS VARCHAR), 40)"


def _ts_sql(col: _Column) -> tuple[str, str, str]:
    """(present, naive-UTC TIMESTAMP or NULL, text) SQL for ``ts``."""
    if col.raw is None:
        return "FALSE", "CAST(NULL AS TIMESTAMP)", "NULL"
    t = col.duck_type.upper()
    if t == "VARCHAR":
        parsed = f"CAST(timezone('UTC', TRY_CAST(trim({col.raw}) AS TIMESTAMPTZ)) AS TIMESTAMP)"
        return f"({col.raw} IS NOT NULL AND trim({col.raw}) <> '')", parsed, f"left({col.raw}, 40)"
    if "WITH TIME ZONE" in t:
        return f"({col.raw} IS NOT NULL)", f"CAST(timezone('UTC', {col.raw}) AS TIMESTAMP)", f"CAST({col.raw} AS VARCHAR)"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"({col.raw} IS NOT NULL)", f"CAST({col.raw} AS TIMESTAMP)", f"CAST({col.raw} AS VARCHAR)"
    return f"({col.raw} IS NOT NULL)", "CAST(NULL AS TIMESTAMP)", f"left(CAST({col.raw} AS VARCHAR), 40)"


def _text_sql(col: _Column) -> tuple[str, str]:
    """(present, trimmed text) SQL for a text column."""
    if col.raw is None:
        return "FALSE", "CAST(NULL AS VARCHAR)"
    text = f"trim(CAST({col.raw} AS VARCHAR))"
    return f"({col.raw} IS NOT NULL AND {text} <> '')", text


def _validation_select(
    columns: dict[str, _Column],
    value_column: str,
    file_problems: list[str],
    row_reasons_sql: list[str],
    raw_json_sql: str,
    from_sql: str,
) -> str:
    """The vectorised SELECT that types every contract column and collects every reason per row.

    Output columns in the order of the ``staged`` temp table (:data:`STAGED_DDL`). ``file_problems`` apply to every row (a missing or
    unexpected column); ``row_reasons_sql`` are extra per-row reason expressions (JSONL key checks).
    Parameters: ``$known`` (catalog protocol names), ``$default_device``, ``$file_index``, ``$kind``.
    """
    reasons: list[str] = [_sql_literal(p) for p in file_problems] + list(row_reasons_sql)

    def checked(name: str) -> bool:
        return columns[name].raw is not None

    def guarded(name: str, case_sql: str) -> str:
        guard = columns[name].guard
        return case_sql if guard is None else f"CASE WHEN {guard} THEN {case_sql} END"

    present, protocol = _text_sql(columns["protocol"])
    if checked("protocol"):
        reasons.append(guarded("protocol",
            f"CASE WHEN NOT {present} THEN 'protocol: missing value' "
            f"WHEN NOT list_contains($known, {protocol}) THEN 'protocol: unknown protocol ' || left({protocol}, 40) END"
        ))
    present, device_text = _text_sql(columns["device"])
    device = f"CASE WHEN {present} THEN {device_text} ELSE $default_device END"
    if checked("device"):
        reasons.append(guarded("device",
            f"CASE WHEN {present} AND NOT regexp_full_match({device_text}, '{DEVICE_PATTERN}') "
            f"THEN 'device: invalid name ' || left({device_text}, 40) END"
        ))
    present, ts, ts_text = _ts_sql(columns["ts"])
    if checked("ts"):
        reasons.append(guarded("ts",
            f"CASE WHEN NOT {present} THEN 'ts: missing value' "
            f"WHEN {ts} IS NULL THEN 'ts: unparsable timestamp ' || coalesce({ts_text}, '') END"
        ))

    rules: dict[str, tuple[bool, str]] = {
        value_column: (True, "negative"),
        **{name: (True, "negative") for name in RESOURCE_COLUMNS},
        "allocation": (True, "unit"),
        "connection_failures": (True, "count"),
        "latency_ms": (False, "negative"),
    }
    values: dict[str, str] = {}
    for name, (required, rule) in rules.items():
        present, value, text = _value_sql(columns[name])
        values[name] = value
        if not checked(name):
            continue
        checks = []
        if required:
            checks.append(f"WHEN NOT {present} THEN '{name}: missing value'")
        checks.append(f"WHEN {present} AND {value} IS NULL THEN '{name}: wrong type, not a number (' || coalesce({text}, '') || ')'")
        checks.append(f"WHEN {present} AND NOT isfinite({value}) THEN '{name}: NaN or Inf'")
        if rule == "negative":
            label = "negative earnings" if name == "earnings_usd" else "negative value"
            checks.append(f"WHEN {value} < 0 THEN '{name}: {label} (' || {value} || ')'")
        elif rule == "unit":
            checks.append(f"WHEN {value} < 0 OR {value} > 1 THEN '{name}: out of range [0, 1] (' || {value} || ')'")
        else:
            checks.append(f"WHEN {value} < 0 THEN '{name}: negative count (' || {value} || ')'")
            checks.append(f"WHEN {value} <> floor({value}) THEN '{name}: wrong type, not an integer (' || {value} || ')'")
        reasons.append(guarded(name, "CASE " + " ".join(checks) + " END"))

    reason = f"NULLIF(concat_ws('; ', {', '.join(reasons)}), '')" if reasons else "CAST(NULL AS VARCHAR)"
    return f"""
        SELECT $file_index AS file_index, s.__row_number AS row_number,
               {protocol} AS protocol, {device} AS device, {ts} AS ts_exact,
               {values[value_column]} AS value,
               {values['cpu_cores']} AS cpu_cores, {values['memory_gb']} AS memory_gb,
               {values['bandwidth_mbps']} AS bandwidth_mbps, {values['storage_gb']} AS storage_gb,
               {values['allocation']} AS allocation, {values['connection_failures']} AS connection_failures,
               {values['latency_ms']} AS latency_ms,
               {reason} AS __reason,
               CASE WHEN __reason IS NOT NULL THEN {raw_json_sql} END AS raw_json,
               $kind AS kind
        FROM {from_sql} AS s
    """


STAGED_DDL = """
CREATE OR REPLACE TEMP TABLE staged (
    file_index BIGINT, row_number BIGINT, protocol VARCHAR, device VARCHAR, ts_exact TIMESTAMP,
    value DOUBLE, cpu_cores DOUBLE, memory_gb DOUBLE, bandwidth_mbps DOUBLE, storage_gb DOUBLE,
    allocation DOUBLE, connection_failures DOUBLE, latency_ms DOUBLE, reason VARCHAR, raw_json VARCHAR,
    kind VARCHAR
)
"""


def _stage(conn: duckdb.DuckDBPyConnection, select: str, params: dict[str, object]) -> None:
    conn.execute(f"INSERT INTO staged {select}", params)


def _stage_arrow(conn: duckdb.DuckDBPyConnection, table: pa.Table, file_index: int, known: list[str], default_device: str) -> str:
    """Validate a CSV/Parquet table into ``staged``; returns the file's kind ('earnings' or 'balance')."""
    conn.register("__src", table)
    try:
        relation = conn.sql("SELECT * FROM __src")
        types = {name: str(t) for name, t in zip(relation.columns, relation.types)}
        names = [n for n in types if n != "__row_number"]
        kind = "balance" if "balance_usd" in names and "earnings_usd" not in names else "earnings"
        value_column = "balance_usd" if kind == "balance" else "earnings_usd"
        allowed = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, value_column}
        problems = [f"missing column {c}" for c in (*REQUIRED_COLUMNS, value_column) if c not in names]
        problems += [f"unexpected column {c}" for c in names if c not in allowed]
        columns = {
            name: _Column(f"s.{_quote(name)}" if name in names else None, types.get(name, "VARCHAR"))
            for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, value_column)
        }
        pack = ", ".join(f"{_quote(n)} := s.{_quote(n)}" for n in names)
        raw_json = f"CAST(to_json(struct_pack({pack})) AS VARCHAR)" if names else "'{}'"
        select = _validation_select(columns, value_column, problems, [], raw_json, "__src")
        _stage(conn, select, {"known": known, "default_device": default_device, "file_index": file_index, "kind": kind})
        return kind
    finally:
        conn.unregister("__src")


def _stage_jsonl(conn: duckdb.DuckDBPyConnection, table: pa.Table, file_index: int, known: list[str], default_device: str) -> str:
    """Validate JSON Lines (one object per line) into ``staged``; missing/extra keys are per row."""
    conn.register("__lines", table)
    try:
        keys = {
            k
            for (k,) in conn.execute(
                "SELECT DISTINCT unnest(json_keys(line)) FROM __lines "
                "WHERE CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE FALSE END"
            ).fetchall()
        }
        kind = "balance" if "balance_usd" in keys and "earnings_usd" not in keys else "earnings"
        value_column = "balance_usd" if kind == "balance" else "earnings_usd"
        allowed = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, value_column]
        required = [*REQUIRED_COLUMNS, value_column]
        # json_extract_string turns JSON null into SQL NULL; a missing key is reported once, as a column.
        columns = {
            name: _Column(
                f"json_extract_string(s.__obj, {_sql_literal('$.' + _quote(name))})",
                "VARCHAR",
                guard=f"list_contains(s.__keys, {_sql_literal(name)})",
            )
            for name in allowed
        }
        allowed_list = "[" + ", ".join(_sql_literal(n) for n in allowed) + "]"
        required_list = "[" + ", ".join(_sql_literal(n) for n in required) + "]"
        extra = f"list_filter(s.__keys, lambda k: NOT list_contains({allowed_list}, k))"
        missing = f"list_filter({required_list}, lambda k: NOT list_contains(s.__keys, k))"
        row_reasons = [
            "CASE WHEN NOT s.__valid THEN 'invalid JSON line (expected one JSON object)' END",
            f"CASE WHEN s.__valid AND len({extra}) > 0 THEN 'unexpected column ' || array_to_string({extra}, ', ') END",
            f"CASE WHEN s.__valid AND len({missing}) > 0 THEN 'missing column ' || array_to_string({missing}, ', ') END",
        ]
        source = (
            "(SELECT __row_number, line, __valid, "
            "CASE WHEN __valid THEN json_keys(line) ELSE CAST([] AS VARCHAR[]) END AS __keys, "
            "CASE WHEN __valid THEN CAST(line AS JSON) END AS __obj FROM "
            "(SELECT __row_number, line, CASE WHEN json_valid(line) THEN json_type(line) = 'OBJECT' ELSE FALSE END AS __valid FROM __lines))"
        )
        raw_json = "CASE WHEN s.__valid THEN s.line ELSE CAST(to_json(s.line) AS VARCHAR) END"
        select = _validation_select(columns, value_column, [], row_reasons, raw_json, source)
        _stage(conn, select, {"known": known, "default_device": default_device, "file_index": file_index, "kind": kind})
        return kind
    finally:
        conn.unregister("__lines")


def _stage_ragged(conn: duckdb.DuckDBPyConnection, file_index: int, ragged: list[tuple[int, str, str]]) -> None:
    """CSV rows with the wrong number of fields: quarantined as they are."""
    if not ragged:
        return
    rows = pa.table(
        {
            "row_number": pa.array([n for n, _, _ in ragged], pa.int64()),
            "reason": pa.array([f"wrong number of fields: {why}" for _, why, _ in ragged], pa.string()),
            "raw_json": pa.array([json.dumps({"__line__": text}) for _, _, text in ragged], pa.string()),
        }
    )
    conn.register("__ragged", rows)
    try:
        conn.execute(
            "INSERT INTO staged (file_index, row_number, reason, raw_json, kind) "
            "SELECT ?, row_number, reason, raw_json, 'earnings' FROM __ragged",
            [file_index],
        )
    finally:
        conn.unregister("__ragged")


# ----------------------------------------------------------------------------- the load


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ingest_landing(conn: duckdb.DuckDBPyConnection, paths: EarnoptPaths, catalog: Catalog) -> IngestReport:
    """Ingest every file currently in ``paths.landing`` (see the module docstring for the rules)."""
    paths.ensure()
    ensure_ingestion_tables(conn)
    with landing_lock(paths.landing):
        return ingest_files(conn, landing_files(paths.landing), paths, catalog)


def _stage_file(conn: duckdb.DuckDBPyConnection, path: Path, file_format: str | None, index: int, known: list[str], device: str) -> str:
    if file_format is None:
        raise UnreadableFileError(f"unsupported file type {path.suffix or '(none)'!r}; expected one of {', '.join(sorted(FORMATS))}")
    if file_format == "csv":
        table, ragged = read_csv_file(path)
        kind = _stage_arrow(conn, table, index, known, device)
        _stage_ragged(conn, index, ragged)
        return kind
    if file_format == "parquet":
        return _stage_arrow(conn, read_parquet_file(path), index, known, device)
    return _stage_jsonl(conn, read_jsonl_file(path), index, known, device)


def ingest_files(conn: duckdb.DuckDBPyConnection, files: Sequence[Path], paths: EarnoptPaths, catalog: Catalog) -> IngestReport:
    """Ingest ``files`` in the given order (later files win on a shared key). Caller holds the lock."""
    report = IngestReport()
    if not files:
        return report
    ensure_ingestion_tables(conn)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(STAGED_DDL)
    known = catalog.names
    device = catalog.host.device
    now = _utc_now()
    metas: list[dict[str, object]] = []
    reserved: set[Path] = set()

    def destination(directory: Path, name: str) -> Path:
        target = unique_destination(directory, name)
        stem, suffix, n = Path(name).stem, Path(name).suffix, 1
        while target in reserved or target.exists():
            target = directory / f"{stem}__{n}{suffix}"
            n += 1
        reserved.add(target)
        return target

    for index, path in enumerate(files):
        file_format = FORMATS.get(path.suffix.lower())
        file_report = FileReport(source_file=path.name, status="ingested", file_format=file_format)
        stat = path.stat()
        metas.append({"size": stat.st_size, "mtime": datetime.fromtimestamp(stat.st_mtime, timezone.utc).replace(tzinfo=None), "sha256": _sha256(path)})
        try:
            file_report.kind = _stage_file(conn, path, file_format, index, known, device)
        except (UnreadableFileError, duckdb.Error, pa.ArrowException, OSError) as exc:
            conn.execute("DELETE FROM staged WHERE file_index = ?", [index])
            file_report.status = "rejected"
            file_report.reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        directory = paths.archive if file_report.status == "ingested" else paths.rejected
        file_report.stored_as = str(destination(directory, path.name))
        report.files.append(file_report)

    # A key repeated inside one file: the later row wins, the earlier ones are quarantined. The cheap
    # hash-aggregate count runs first; the window query only when there is something to mark.
    valid_rows, distinct_in_file, distinct_overall = conn.execute(
        "SELECT count(*), count(DISTINCT (file_index, device, protocol, date_trunc('hour', ts_exact))), "
        "count(DISTINCT (device, protocol, date_trunc('hour', ts_exact))) FROM staged WHERE reason IS NULL"
    ).fetchone()
    if distinct_in_file < valid_rows:
        conn.execute(
            """
            UPDATE staged SET
                reason = 'duplicate key (device, protocol, ts hour) in this file; row ' || d.winner || ' wins',
                raw_json = CAST(to_json(struct_pack(device := staged.device, protocol := staged.protocol,
                    ts := staged.ts_exact, value := staged.value, kind := staged.kind)) AS VARCHAR)
            FROM (
                SELECT file_index, row_number,
                       max(row_number) OVER (PARTITION BY file_index, device, protocol, date_trunc('hour', ts_exact)) AS winner
                FROM staged WHERE reason IS NULL
            ) AS d
            WHERE staged.file_index = d.file_index AND staged.row_number = d.row_number AND d.row_number <> d.winner
            """
        )
    cross_file_duplicates = distinct_overall < distinct_in_file
    for index, read, quarantined, min_ts, max_ts in conn.execute(
        "SELECT file_index, count(*), count(reason), min(date_trunc('hour', ts_exact)), max(date_trunc('hour', ts_exact)) "
        "FROM staged GROUP BY file_index"
    ).fetchall():
        file_report = report.files[index]
        file_report.rows_read, file_report.rows_quarantined = int(read), int(quarantined)
        file_report.rows_accepted = int(read) - int(quarantined)
        file_report.min_ts, file_report.max_ts = min_ts, max_ts

    conn.register(
        "__files",
        pa.table(
            {
                "file_index": pa.array(range(len(report.files)), pa.int64()),
                "source_file": pa.array([f.source_file for f in report.files], pa.string()),
                "stored_as": pa.array([f.stored_as for f in report.files], pa.string()),
            }
        ),
    )
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(
            """
            INSERT INTO quarantine
            SELECT f.source_file, f.stored_as, s.row_number, s.reason, s.raw_json, ?
            FROM staged s JOIN __files f USING (file_index) WHERE s.reason IS NOT NULL
            """,
            [now],
        )
        valid = """
            SELECT device, protocol, date_trunc('hour', ts_exact) AS ts, value, cpu_cores, memory_gb, bandwidth_mbps,
                   storage_gb, allocation, CAST(connection_failures AS INTEGER) AS connection_failures, latency_ms, file_index
            FROM staged WHERE reason IS NULL AND kind = ?
        """
        if cross_file_duplicates:  # a later file wins on a shared key
            valid += """
            QUALIFY row_number() OVER (PARTITION BY device, protocol, date_trunc('hour', ts_exact)
                                       ORDER BY file_index DESC, row_number DESC) = 1
            """
        conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_earnings AS {valid}", ["earnings"])
        conn.execute(f"CREATE OR REPLACE TEMP TABLE batch_polls AS {valid}", ["balance"])
        report.balance_baselines = _apply_balance_polls(conn, now)
        has_derived = conn.execute("SELECT count(*) FROM batch_derived").fetchone()[0] > 0
        if has_derived:
            conn.execute(
                """
                CREATE OR REPLACE TEMP TABLE batch_all AS
                SELECT * FROM (SELECT * FROM batch_earnings UNION ALL SELECT * FROM batch_derived)
                QUALIFY row_number() OVER (PARTITION BY device, protocol, ts ORDER BY file_index DESC) = 1
                """
            )
        else:
            conn.execute("DROP TABLE IF EXISTS batch_all")
            conn.execute("ALTER TABLE batch_earnings RENAME TO batch_all")
        report.rows_inserted, report.rows_updated = _upsert_raw_earnings(conn, now)
        conn.register(
            "__ingested",
            pa.table(
                {
                    "source_file": [f.source_file for f in report.files],
                    "stored_as": [f.stored_as for f in report.files],
                    "status": [f.status for f in report.files],
                    "reason": pa.array([f.reason for f in report.files], pa.string()),
                    "file_format": pa.array([f.file_format for f in report.files], pa.string()),
                    "kind": pa.array([f.kind for f in report.files], pa.string()),
                    "rows_read": pa.array([f.rows_read for f in report.files], pa.int64()),
                    "rows_accepted": pa.array([f.rows_accepted for f in report.files], pa.int64()),
                    "rows_quarantined": pa.array([f.rows_quarantined for f in report.files], pa.int64()),
                    "min_ts": pa.array([f.min_ts for f in report.files], pa.timestamp("us")),
                    "max_ts": pa.array([f.max_ts for f in report.files], pa.timestamp("us")),
                    "size_bytes": pa.array([m["size"] for m in metas], pa.int64()),
                    "mtime": pa.array([m["mtime"] for m in metas], pa.timestamp("us")),
                    "sha256": [m["sha256"] for m in metas],
                }
            ),
        )
        conn.execute("INSERT INTO ingested_files SELECT *, ? FROM __ingested", [now])
        for reason, count in conn.execute(
            "SELECT reason, count(*) FROM staged WHERE reason IS NOT NULL GROUP BY reason ORDER BY count(*) DESC, reason LIMIT 20"
        ).fetchall():
            report.quarantine_reasons[str(reason)] = int(count)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        for view in ("__files", "__ingested"):
            with contextlib.suppress(Exception):
                conn.unregister(view)
        for temp in ("staged", "batch_earnings", "batch_polls", "batch_series", "batch_derived", "batch_all", "batch_existing"):
            conn.execute(f"DROP TABLE IF EXISTS {temp}")

    # Only after the commit: a crash before this point leaves the files in landing to be loaded again
    # (harmless: the load is an upsert).
    for path, file_report in zip(files, report.files):
        target = Path(file_report.stored_as or "")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        if file_report.status == "rejected":
            log.warning("rejected landing file %s -> %s: %s", path.name, target, file_report.reason)
    return report


def _upsert_raw_earnings(conn: duckdb.DuckDBPyConnection, now: datetime) -> tuple[int, int]:
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
    source = "coalesce(f.source_file, 'balance_polls')"
    if existing:
        conn.execute(
            f"""
            UPDATE raw_earnings r SET
                earnings_usd = b.value, cpu_cores = b.cpu_cores, memory_gb = b.memory_gb,
                bandwidth_mbps = b.bandwidth_mbps, storage_gb = b.storage_gb, allocation = b.allocation,
                connection_failures = b.connection_failures, latency_ms = b.latency_ms,
                source_file = coalesce(b.source_file, 'balance_polls'), ingested_at = ?
            FROM (SELECT b.*, f.source_file FROM batch_all b LEFT JOIN __files f USING (file_index)) AS b
            WHERE r.device = b.device AND r.protocol = b.protocol AND r.ts = b.ts
            """,
            [now],
        )
    new_rows = "batch_all b ANTI JOIN batch_existing e USING (device, protocol, ts)" if existing else "batch_all b"
    conn.execute(
        f"""
        INSERT INTO raw_earnings
        SELECT b.device, b.protocol, b.ts, b.value, b.cpu_cores, b.memory_gb, b.bandwidth_mbps, b.storage_gb,
               b.allocation, b.connection_failures, b.latency_ms, {source}, ?
        FROM {new_rows} LEFT JOIN __files f USING (file_index)
        """,
        [now],
    )
    return int(total) - int(existing), int(existing)


def _apply_balance_polls(conn: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Store this batch's balance polls and derive hourly earnings (``batch_derived``) by differencing.

    Returns the number of polls that are the first of their series (baselines without earnings).
    """
    conn.execute(
        """
        INSERT INTO balance_polls
        SELECT p.device, p.protocol, p.ts, p.value, p.cpu_cores, p.memory_gb, p.bandwidth_mbps, p.storage_gb,
               p.allocation, p.connection_failures, p.latency_ms, f.source_file, ?
        FROM batch_polls p JOIN __files f USING (file_index)
        ON CONFLICT (device, protocol, ts) DO UPDATE SET
            balance_usd = excluded.balance_usd, cpu_cores = excluded.cpu_cores, memory_gb = excluded.memory_gb,
            bandwidth_mbps = excluded.bandwidth_mbps, storage_gb = excluded.storage_gb, allocation = excluded.allocation,
            connection_failures = excluded.connection_failures, latency_ms = excluded.latency_ms,
            source_file = excluded.source_file, ingested_at = excluded.ingested_at
        """,
        [now],
    )
    # Re-derive from the earliest new poll of each series onwards, so a late poll also fixes its successor.
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE batch_series AS
        WITH affected AS (SELECT device, protocol, min(ts) AS since FROM batch_polls GROUP BY device, protocol)
        SELECT p.*, a.since,
               lag(p.balance_usd) OVER (PARTITION BY p.device, p.protocol ORDER BY p.ts) AS prev_balance
        FROM balance_polls p JOIN affected a USING (device, protocol)
        """
    )
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE batch_derived AS
        SELECT s.device, s.protocol, s.ts,
               round(CASE WHEN s.balance_usd >= s.prev_balance THEN s.balance_usd - s.prev_balance
                          ELSE s.balance_usd END, 10) AS value,
               s.cpu_cores, s.memory_gb, s.bandwidth_mbps, s.storage_gb, s.allocation, s.connection_failures,
               s.latency_ms, coalesce(b.file_index, -1) AS file_index
        FROM batch_series s LEFT JOIN batch_polls b USING (device, protocol, ts)
        WHERE s.ts >= s.since AND s.prev_balance IS NOT NULL
        """
    )
    row = conn.execute(
        "SELECT count(*) FROM batch_series s JOIN batch_polls b USING (device, protocol, ts) WHERE s.prev_balance IS NULL"
    ).fetchone()
    return int(row[0]) if row else 0
