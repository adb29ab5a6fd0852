"""One ingestion of the landing directory: the function the ``raw_earnings`` asset calls.

:func:`ingest_landing` takes the landing lock, then for every file (oldest mtime first):
read and validate it into staging (:mod:`~earnopt_assets.ingestion.validation`; an unreadable file is
planned for ``landing/rejected/``), settles keys repeated within a file (quarantined) or across files
(``superseded``: the later file wins), and in ONE transaction writes quarantine, balance polls (differenced
by :mod:`~earnopt_assets.ingestion.balance`), the ``raw_earnings`` upsert on (device, protocol, ts) and the
ingest log (:mod:`~earnopt_assets.ingestion.store`). ``read = stored + superseded + quarantined`` is
verified per file before the commit (:func:`~earnopt_assets.ingestion.report.verify_row_accounting`).
Only after the commit are the files moved to ``archive/`` or ``landing/rejected/`` (a crash before leaves
them in landing; reloading is harmless because the load is an upsert).

The same path takes in-memory sources (:class:`FrameSource`, e.g. the Prometheus pull of
:mod:`~earnopt_assets.ingestion.prometheus`): an Arrow table in the telemetry contract is validated,
quarantined, differenced and upserted exactly like a file, logged in ``ingested_files`` under its name,
and simply not moved. ``in_transaction`` lets such a source record its cursor in the same transaction.

Concurrency: the caller holds a write connection (one process at a time holds the DuckDB file); the
landing ``flock`` also serialises threads of one process, so no file is read by two ingestions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from earnopt_assets.catalog import Catalog
from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.balance import ResampleSettings, derive_hourly_earnings
from earnopt_assets.ingestion.landing import (
    FileFacts,
    file_facts,
    keep_files,
    landing_files,
    landing_lock,
    unique_destination,
)
from earnopt_assets.ingestion.readers import UnreadableFileError, file_format
from earnopt_assets.ingestion.report import FileReport, IngestReport, verify_row_accounting
from earnopt_assets.ingestion.validation import stage_file, stage_table
from earnopt_assets.settings import EarnoptPaths


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class FrameSource:
    """Telemetry that is not a landing file: ``table`` has the contract columns of a file (one of
    ``earnings_usd`` / ``balance_usd``), ``name`` is what ``ingested_files`` and ``quarantine`` call it
    (``source_file``), ``origin`` where it came from (``stored_as``; never a secret)."""

    name: str
    table: pa.Table
    origin: str
    file_format: str = "frame"

    def facts(self, now: datetime) -> FileFacts:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return FileFacts(self.table.nbytes, now, hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest())


def resample_settings(catalog: Catalog) -> ResampleSettings:
    return ResampleSettings(catalog.sources.balance.imputed_after_hours, catalog.sources.balance.max_gap_hours)


def ingest_frames(
    conn: duckdb.DuckDBPyConnection,
    frames: Sequence[FrameSource],
    paths: EarnoptPaths,
    catalog: Catalog,
    in_transaction: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> IngestReport:
    """Ingest in-memory sources through the same path as landing files (under the landing lock, so
    never beside a landing ingestion). ``in_transaction`` runs inside the write transaction."""
    paths.ensure()
    store.ensure_ingestion_tables(conn)
    with landing_lock(paths.landing):
        return ingest_sources(conn, frames, paths, catalog, in_transaction)


def ingest_landing(conn: duckdb.DuckDBPyConnection, paths: EarnoptPaths, catalog: Catalog) -> IngestReport:
    """Ingest every file currently in ``paths.landing`` (rules in the module docstring)."""
    paths.ensure()
    store.ensure_ingestion_tables(conn)
    with landing_lock(paths.landing):
        return ingest_files(conn, landing_files(paths.landing), paths, catalog)


def ingest_files(conn: duckdb.DuckDBPyConnection, files: Sequence[Path], paths: EarnoptPaths, catalog: Catalog) -> IngestReport:
    """Ingest ``files`` in the given order (later files win on a shared key). Caller holds the lock."""
    return ingest_sources(conn, files, paths, catalog)


def ingest_sources(
    conn: duckdb.DuckDBPyConnection,
    sources: Sequence[Path | FrameSource],
    paths: EarnoptPaths,
    catalog: Catalog,
    in_transaction: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> IngestReport:
    """Ingest landing files and/or frame sources in the given order (later ones win on a shared key).
    Caller holds the lock. One set of rules for every source."""
    report = IngestReport()
    if not sources:
        return report
    store.begin_staging(conn)
    known, device, now = catalog.names, catalog.host.device, _utc_now()
    facts, reserved = [], set()
    for index, source in enumerate(sources):
        is_file = isinstance(source, Path)
        name = source.name
        file_report = FileReport(source_file=name, status="ingested", file_format=file_format(source) if is_file else source.file_format)
        facts.append(file_facts(source) if is_file else source.facts(now))
        try:
            if is_file:
                file_report.kind = stage_file(conn, source, file_report.file_format, index, known, device)
            else:
                file_report.kind = stage_table(conn, source.table, index, known, device)
        except (UnreadableFileError, duckdb.Error, pa.ArrowException, OSError) as exc:
            store.discard_staged_file(conn, index)
            file_report.status = "rejected"
            file_report.reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        if is_file:
            directory = paths.archive if file_report.status == "ingested" else paths.rejected
            file_report.stored_as = str(unique_destination(directory, name, reserved))
        else:
            file_report.stored_as = source.origin
        report.files.append(file_report)

    store.resolve_duplicate_keys(conn)
    for row in store.staged_file_counts(conn).itertuples(index=False):
        file_report = report.files[int(row.file_index)]
        file_report.rows_read, file_report.rows_accepted = int(row.read), int(row.valid)
        file_report.rows_quarantined, file_report.rows_superseded = int(row.quarantined), int(row.superseded)
        file_report.min_ts = None if row.min_ts is None or row.min_ts != row.min_ts else row.min_ts.to_pydatetime()
        file_report.max_ts = None if row.max_ts is None or row.max_ts != row.max_ts else row.max_ts.to_pydatetime()
    report.quarantine_reasons = store.quarantine_reason_counts(conn)

    batch_files = pa.table(
        {
            "file_index": pa.array(range(len(report.files)), pa.int64()),
            "source_file": pa.array([f.source_file for f in report.files], pa.string()),
            "stored_as": pa.array([f.stored_as for f in report.files], pa.string()),
        }
    )
    with store.batch_transaction(conn, batch_files):
        store.write_quarantine(conn, now)
        store.split_batch(conn)
        for index, stored in store.stored_rows_per_file(conn).items():
            report.files[index].rows_stored = stored
        verify_row_accounting(report.files)
        store.upsert_balance_polls(conn, now)
        derived, report.balance_baselines = derive_hourly_earnings(store.read_affected_balance_series(conn), resample_settings(catalog))
        report.rows_imputed = int(derived["imputed"].sum()) if len(derived) else 0
        store.stage_derived_earnings(conn, derived)
        report.rows_inserted, report.rows_updated = store.upsert_raw_earnings(conn, now)
        store.log_files(conn, _log_table(report, facts), now)
        if in_transaction is not None:
            in_transaction(conn)

    keep_files([(source, Path(f.stored_as or "")) for source, f in zip(sources, report.files) if isinstance(source, Path)])
    return report


def _log_table(report: IngestReport, facts: list) -> pa.Table:
    files = report.files

    def ints(name: str) -> pa.Array:
        return pa.array([int(getattr(f, name)) for f in files], pa.int64())

    return pa.table(
        {
            "source_file": pa.array([f.source_file for f in files], pa.string()),
            "stored_as": pa.array([f.stored_as for f in files], pa.string()),
            "status": pa.array([f.status for f in files], pa.string()),
            "reason": pa.array([f.reason for f in files], pa.string()),
            "file_format": pa.array([f.file_format for f in files], pa.string()),
            "kind": pa.array([f.kind for f in files], pa.string()),
            **{name: ints(name) for name in ("rows_read", "rows_accepted", "rows_quarantined", "rows_stored", "rows_superseded")},
            "min_ts": pa.array([f.min_ts for f in files], pa.timestamp("us")),
            "max_ts": pa.array([f.max_ts for f in files], pa.timestamp("us")),
            "size_bytes": pa.array([x.size_bytes for x in facts], pa.int64()),
            "mtime": pa.array([x.mtime for x in facts], pa.timestamp("us")),
            "sha256": pa.array([x.sha256 for x in facts], pa.string()),
        }
    )
