"""Landing file readers: CSV, Parquet and JSON Lines into Arrow, each row numbered.

Row numbers are 1-based data records (``__row_number``): the CSV header is not counted; for JSON Lines
it is the line number. A file that cannot be read at all raises :class:`UnreadableFileError` (the
file is then moved to ``landing/rejected/``); a bad row is a row problem, handled by validation.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class UnreadableFileError(ValueError):
    """The file cannot be read at all; it is moved to ``landing/rejected/``."""


def file_format(path: Path) -> str | None:
    """``csv``, ``parquet`` or ``jsonl`` from the suffix (case-insensitive); None when unsupported."""
    return FORMATS.get(path.suffix.lower())


def _with_row_numbers(table: pa.Table, numbers: Sequence[int] | None = None) -> pa.Table:
    values = np.arange(1, table.num_rows + 1, dtype=np.int64) if numbers is None else np.asarray(numbers, dtype=np.int64)
    return table.append_column("__row_number", pa.array(values))


def read_csv_file(path: Path) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """All columns as text (a bad value is a row problem, not a file problem). Returns the table
    (+ ``__row_number``) and the rows with a wrong field count as (row number, why, raw text)."""
    import pyarrow.csv as pacsv

    try:
        with open(path, "rb") as handle:
            first_line = handle.readline().decode("utf-8-sig").strip("\r\n")  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"not UTF-8 text: {exc}") from None
    if not first_line.strip():
        raise UnreadableFileError("empty file or empty header line")
    names = next(iter(csv.reader([first_line])))
    if len(set(names)) != len(names):
        raise UnreadableFileError(f"duplicate column names in header: {', '.join(names)}")
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
    """Native Parquet types, rows numbered from 1."""
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
