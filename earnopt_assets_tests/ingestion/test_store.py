"""The ingestion store: upsert idempotence, later file wins, the ingest log, and the read functions every
other area uses instead of SQL."""

from __future__ import annotations


import pandas as pd

from earnopt_assets_tests.ingestion.helpers import GOOD, HEADER, good_lines, quarantine_reason, query, write


def test_idempotent_reload_and_later_file_wins(paths, ingest):
    body = HEADER + "\n" + "\n".join(good_lines(range(5))) + "\n"
    write(paths, "a.csv", body)
    first = ingest()
    assert (first.rows_inserted, first.rows_updated) == (5, 0)
    snapshot = query(paths, "SELECT * EXCLUDE (ingested_at, source_file) FROM raw_earnings ORDER BY ts")

    write(paths, "a.csv", body)  # the same file dropped again
    again = ingest()
    assert (again.rows_inserted, again.rows_updated) == (0, 5)
    assert query(paths, "SELECT * EXCLUDE (ingested_at, source_file) FROM raw_earnings ORDER BY ts") == snapshot
    assert (paths.archive / "a.csv").exists() and (paths.archive / "a__1.csv").exists()  # never overwritten

    later = GOOD.format(h=2).replace(",0.01,", ",0.99,")
    write(paths, "b.csv", HEADER + "\n" + later + "\n")
    assert ingest().rows_updated == 1
    assert query(paths, "SELECT earnings_usd, source_file FROM raw_earnings WHERE hour(ts) = 2") == [(0.99, "b.csv")]
    assert query(paths, "SELECT count(*) FROM raw_earnings") == [(5,)]


def test_files_in_one_batch_apply_in_mtime_order_and_duplicates_in_a_file(paths, ingest):
    write(paths, "new.csv", HEADER + "\n" + GOOD.format(h=1).replace(",0.01,", ",0.30,") + "\n", mtime=2_000)
    write(paths, "old.csv", HEADER + "\n" + GOOD.format(h=1).replace(",0.01,", ",0.10,") + "\n", mtime=1_000)
    dupes = [GOOD.format(h=4).replace(",0.01,", ",0.40,"), GOOD.format(h=4).replace(":00:00Z", ":30:00Z").replace(",0.01,", ",0.45,")]
    write(paths, "dupes.csv", HEADER + "\n" + "\n".join(dupes) + "\n", mtime=500)
    report = ingest()
    assert [f.source_file for f in report.files] == ["dupes.csv", "old.csv", "new.csv"]
    assert query(paths, "SELECT earnings_usd FROM raw_earnings WHERE hour(ts) = 1") == [(0.30,)]
    assert query(paths, "SELECT earnings_usd FROM raw_earnings WHERE hour(ts) = 4") == [(0.45,)]
    assert "duplicate key" in quarantine_reason(paths, 1, "dupes.csv") and "row 2 wins" in quarantine_reason(paths, 1, "dupes.csv")
    assert report.rows_accepted + report.rows_quarantined == report.rows_read == 4


def test_ingested_files_records_max_ts_for_freshness(paths, ingest):
    write(paths, "a.csv", HEADER + "\n" + "\n".join(good_lines([1, 7])) + "\nlocal,honeygain,2026-01-01T09:00:00Z,-1,0.1,0.2,3,0.1,0.5,0,50\n")
    ingest()
    assert query(paths, "SELECT rows_read, rows_accepted, rows_quarantined, min_ts, max_ts, sha256 IS NOT NULL FROM ingested_files") == [
        (3, 2, 1, pd.Timestamp("2026-01-01 01:00"), pd.Timestamp("2026-01-01 09:00"), True)
    ]


def test_simulated_files_round_trip_through_ingestion(paths, ingest, small_catalog):
    from earnopt_assets.simulator import simulate_to_dir

    for i, fmt in enumerate(("csv", "jsonl", "parquet")):
        simulate_to_dir(small_catalog, days=2, seed=1, out_dir=paths.landing, end=f"2026-01-0{2 * i + 3}T00:00:00", file_format=fmt)
    report = ingest()
    assert report.rows_quarantined == 0 and report.rows_accepted == 3 * 3 * 48
    assert query(paths, "SELECT count(DISTINCT protocol), count(*) FROM raw_earnings") == [(3, 3 * 3 * 48)]
