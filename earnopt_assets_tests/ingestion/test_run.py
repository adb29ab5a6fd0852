"""The orchestration: the row-accounting invariant is verified before the commit and names the file."""

from __future__ import annotations

import duckdb
import pytest

from earnopt_assets.ingestion import run, store
from earnopt_assets.ingestion.report import FileReport, RowAccountingError, verify_row_accounting
from earnopt_assets_tests.ingestion.helpers import HEADER, good_lines, query, write


def test_verify_row_accounting_names_every_broken_file():
    ok = FileReport("ok.csv", "ingested", rows_read=3, rows_accepted=2, rows_stored=1, rows_superseded=1, rows_quarantined=1)
    lost = FileReport("lost.csv", "ingested", rows_read=3, rows_accepted=3, rows_stored=2, rows_quarantined=0)
    verify_row_accounting([ok])
    with pytest.raises(RowAccountingError, match=r"lost\.csv: read 3 != stored 2 \+ superseded 0 \+ quarantined 0") as info:
        verify_row_accounting([ok, lost])
    assert "ok.csv" not in str(info.value)


def test_a_lost_row_fails_the_ingestion_and_commits_nothing(paths, ingest, monkeypatch):
    write(paths, "a.csv", HEADER + "\n" + "\n".join(good_lines(range(3))) + "\n")
    real = store.stored_rows_per_file
    monkeypatch.setattr(run.store, "stored_rows_per_file", lambda conn: {i: n - 1 for i, n in real(conn).items()})
    with pytest.raises(RowAccountingError, match=r"a\.csv: read 3 != stored 2"):
        ingest()
    assert (paths.landing / "a.csv").exists() and not (paths.archive / "a.csv").exists()  # stays for the next run
    assert query(paths, "SELECT count(*) FROM raw_earnings") == [(0,)] and query(paths, "SELECT count(*) FROM ingested_files") == [(0,)]
    monkeypatch.undo()
    assert ingest().rows_stored == 3
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        assert store.telemetry_totals(conn)[0] == 3
