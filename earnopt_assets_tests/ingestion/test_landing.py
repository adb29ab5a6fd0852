"""The landing directory: rejected and archived files (never deleted), ordering, the lock, and readers
of spreadsheet CSVs."""

from __future__ import annotations

import pytest

from earnopt_assets.ingestion.landing import landing_files, unique_destination
from earnopt_assets_tests.ingestion.helpers import GOOD, HEADER, query, write


def test_unreadable_files_are_rejected_and_the_others_still_load(paths, ingest):
    write(paths, "good.csv", HEADER + "\n" + GOOD.format(h=1) + "\n", mtime=1_000)
    write(paths, "corrupt.parquet", "definitely not parquet", mtime=2_000)
    write(paths, "notes.txt", "hello", mtime=3_000)
    write(paths, "empty.csv", "", mtime=4_000)
    (paths.landing / "latin1.csv").write_bytes(HEADER.encode() + b"\n" + GOOD.format(h=2).replace("local", "k\xf6ln").encode("latin-1") + b"\n")
    write(paths, ".partial.csv.tmp", "in progress")  # a hidden temp file of an atomic write: ignored
    report = ingest()
    status = {f.source_file: f.status for f in report.files}
    assert status == {"good.csv": "ingested", "corrupt.parquet": "rejected", "notes.txt": "rejected",
                      "empty.csv": "rejected", "latin1.csv": "rejected"}
    reasons = {f.source_file: f.reason for f in report.files}
    assert "cannot read Parquet" in reasons["corrupt.parquet"]
    assert "unsupported file type '.txt'" in reasons["notes.txt"]
    assert "empty" in reasons["empty.csv"] and "utf" in reasons["latin1.csv"].lower()
    for name in ("corrupt.parquet", "notes.txt", "empty.csv", "latin1.csv"):
        assert (paths.rejected / name).exists()
    assert (paths.archive / "good.csv").exists()
    assert sorted(p.name for p in paths.landing.iterdir() if p.is_file()) == [".partial.csv.tmp"]
    logged = dict(query(paths, "SELECT source_file, status || ':' || coalesce(reason, '') FROM ingested_files"))
    assert logged["notes.txt"].startswith("rejected:unsupported") and logged["good.csv"] == "ingested:"
    assert query(paths, "SELECT count(*) FROM raw_earnings") == [(1,)]


def test_header_only_file_and_report_table(paths, ingest):
    write(paths, "header.csv", HEADER + "\n")
    report = ingest()
    assert report.files[0].status == "ingested" and report.rows_read == 0
    table = report.per_file_frame()
    assert table[["file", "status", "read_rows", "stored_rows", "quarantined_rows"]].values.tolist() == [["header.csv", "ingested", 0, 0, 0]]
    assert ingest().files == []  # nothing left in landing


def test_landing_helpers(tmp_path):
    assert landing_files(tmp_path / "missing") == []
    (tmp_path / "x.csv").write_text("a")
    (tmp_path / "x__1.csv").write_text("a")
    assert unique_destination(tmp_path, "x.csv").name == "x__2.csv"
    assert unique_destination(tmp_path, "y.csv").name == "y.csv"


def test_csv_with_bom_and_crlf_from_spreadsheets(paths, ingest):
    text = "\ufeff" + HEADER + "\r\n" + GOOD.format(h=3) + "\r\n"
    (paths.landing / "excel.csv").write_bytes(text.encode("utf-8"))
    report = ingest()
    assert report.rows_accepted == 1 and report.rows_quarantined == 0


def test_landing_lock_excludes_a_second_holder(tmp_path):
    import threading

    from earnopt_assets.ingestion.landing import landing_lock

    landing = tmp_path / "landing"
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with landing_lock(landing):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(10)
    with pytest.raises(TimeoutError, match="another ingestion holds"), landing_lock(landing, timeout_s=0.2):
        pass
    release.set()
    thread.join(10)
    with landing_lock(landing, timeout_s=5):
        pass
    assert list(landing.iterdir()) == []  # the lock file is not in landing
