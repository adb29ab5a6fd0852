"""Row validation: one vectorised DuckDB query per file types every contract column and collects
every reason a row is bad (no Python row loop). Valid and bad rows go to the ``staged`` temp table of
:mod:`earnopt_assets.ingestion.store`; bad rows later land in ``quarantine`` with file, row and reason.

A row is quarantined, with every reason that applies joined by ``"; "``, when: a required column is
missing or an unknown column is present; a value is missing, not a number / not an integer, NaN or
Inf; earnings or a balance is negative; a resource or ``connection_failures`` is negative;
``allocation`` is outside [0, 1]; ``latency_ms`` (optional) is negative; the protocol is not in the
catalog; the timestamp cannot be parsed; the device name is not ``[A-Za-z0-9_.-]{1,64}``; or (see
:func:`earnopt_assets.ingestion.store.resolve_duplicate_keys`) the same (device, protocol, hour)
appears again later in the same file.

Timestamps: ISO-8601 text or Parquet timestamps. An offset (``Z``, ``+02:00``) or a tz-aware Parquet
type is converted to UTC; a naive value is UTC. The hour is taken when the batch is stored (a reading
at :03 or :58 belongs to the hour it was taken in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.readers import (
    FORMATS,
    UnreadableFileError,
    read_csv_file,
    read_jsonl_file,
    read_parquet_file,
)

RESOURCE_COLUMNS: tuple[str, ...] = ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")
REQUIRED_COLUMNS: tuple[str, ...] = ("protocol", "ts", *RESOURCE_COLUMNS, "allocation", "connection_failures")
OPTIONAL_COLUMNS: tuple[str, ...] = ("device", "latency_ms")
VALUE_COLUMNS: tuple[str, ...] = ("earnings_usd", "balance_usd")  # exactly one of them per file
DEVICE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


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

    Output columns in the order of the ``staged`` temp table (:data:`earnopt_assets.ingestion.store.STAGED_COLUMNS`). ``file_problems`` apply to every row (a missing or
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
        **dict.fromkeys(RESOURCE_COLUMNS, (True, "negative")),
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
        store.stage_select(conn, select, {"known": known, "default_device": default_device, "file_index": file_index, "kind": kind})
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
        store.stage_select(conn, select, {"known": known, "default_device": default_device, "file_index": file_index, "kind": kind})
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
    store.stage_rejected_rows(conn, file_index, rows)


def stage_table(conn: duckdb.DuckDBPyConnection, table: pa.Table, index: int, known: list[str], device: str) -> str:
    """Validate an in-memory Arrow table in the file contract (a non-file source such as Prometheus)
    into ``staged`` with the same rules as a Parquet file; rows are numbered from 1."""
    numbers = pa.array(range(1, table.num_rows + 1), pa.int64())
    return _stage_arrow(conn, table.append_column("__row_number", numbers), index, known, device)


def stage_file(conn: duckdb.DuckDBPyConnection, path: Path, file_format: str | None, index: int, known: list[str], device: str) -> str:
    """Read ``path`` and validate every row into ``staged``; returns the file's kind ('earnings' or
    'balance'). Raises :class:`UnreadableFileError` when the file cannot be read at all."""
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
