"""The ingestion store: upsert idempotence, later file wins, the ingest log, and the read functions every
other area uses instead of SQL."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

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


def _two_series(paths, ingest):
    lines = good_lines(range(6)) + [GOOD.format(h=h).replace("honeygain", "storj").replace(",0.01,", ",0.05,") for h in range(2, 4)]
    write(paths, "two.csv", HEADER + "\n" + "\n".join(lines) + "\n")
    ingest()


def test_read_telemetry_filters_columns_and_order(paths, ingest):
    from earnopt_assets.ingestion import store
    from earnopt_assets.warehouse import TELEMETRY_COLUMNS

    with duckdb.connect(str(paths.warehouse)) as conn:
        store.ensure_ingestion_tables(conn)
        assert store.read_telemetry(conn).empty and list(store.read_telemetry(conn).columns) == list(TELEMETRY_COLUMNS)
        assert store.latest_ts(conn) is None and store.latest_ts_by_protocol(conn) == {} and store.telemetry_totals(conn) == (0, 0, None)
    _two_series(paths, ingest)
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        everything = store.read_telemetry(conn)
        assert list(everything.columns) == list(TELEMETRY_COLUMNS) and len(everything) == 8
        assert list(zip(everything["protocol"], everything["ts"].dt.hour)) == [("honeygain", h) for h in range(6)] + [("storj", 2), ("storj", 3)]
        window = store.read_telemetry(conn, protocols=["storj", "honeygain"], start=pd.Timestamp("2026-01-01 02:00"),
                                      end=pd.Timestamp("2026-01-01 04:00"), columns=["protocol", "ts", "earnings_usd"])
        assert list(window.columns) == ["protocol", "ts", "earnings_usd"] and len(window) == 4  # start inclusive, end exclusive
        assert store.read_telemetry(conn, device="elsewhere").empty and store.read_telemetry(conn, protocols=[]).empty
        # values are parameters: a quote in a filter is just a value that matches nothing
        assert store.read_telemetry(conn, protocols=["x' OR '1'='1"]).empty
        with pytest.raises(ValueError, match="unknown raw_earnings columns"):
            store.read_telemetry(conn, columns=["protocol", "1; DROP TABLE raw_earnings"])
        assert store.latest_ts(conn) == pd.Timestamp("2026-01-01 05:00")
        assert store.latest_ts(conn, protocol="storj") == pd.Timestamp("2026-01-01 03:00")
        assert store.latest_ts(conn, device="local", protocol="akash") is None
        assert store.latest_ts_by_protocol(conn, device="local") == {"honeygain": pd.Timestamp("2026-01-01 05:00"), "storj": pd.Timestamp("2026-01-01 03:00")}
        summary = store.telemetry_summary(conn)
        assert summary[["protocol", "rows"]].values.tolist() == [["honeygain", 6], ["storj", 2]]
        assert store.telemetry_totals(conn) == (8, 2, pd.Timestamp("2026-01-01 05:00"))
        tail = store.read_telemetry_tail(conn, hours=2, device="local", columns=["protocol", "ts"])
        assert [(p, t.hour) for p, t in zip(tail["protocol"], tail["ts"])] == [("honeygain", 4), ("honeygain", 5), ("storj", 2), ("storj", 3)]
        assert store.quarantine_total(conn) == 0 and len(store.read_ingested_files(conn)) == 1


def test_raw_earnings_and_balance_polls_share_one_column_definition(paths, ingest):
    from earnopt_assets.ingestion import store
    from earnopt_assets.warehouse import TELEMETRY_COLUMNS

    with duckdb.connect(str(paths.warehouse)) as conn:
        store.ensure_ingestion_tables(conn)
        raw = [c for (c,) in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'raw_earnings' ORDER BY ordinal_position").fetchall()]
        polls = [c for (c,) in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'balance_polls' ORDER BY ordinal_position").fetchall()]
    assert raw == [*TELEMETRY_COLUMNS, "source_file", "ingested_at"]
    assert polls == [("balance_usd" if c == "earnings_usd" else c) for c in raw]
    assert "balance_usd" in store.BALANCE_POLLS_DDL and "earnings_usd" not in store.BALANCE_POLLS_DDL


def test_superseded_rows_are_counted_per_file_and_accounting_holds(paths, ingest):
    write(paths, "first.csv", HEADER + "\n" + "\n".join(good_lines(range(4))) + "\n", mtime=1_000)
    write(paths, "second.csv", HEADER + "\n" + "\n".join(good_lines(range(2, 6))).replace(",0.01,", ",0.02,") + "\nlocal,honeygain,2026-01-01T07:00:00Z,-1,0.1,0.2,3,0.1,0.5,0,50\n", mtime=2_000)
    report = ingest()
    first, second = report.files
    assert (first.rows_read, first.rows_stored, first.rows_superseded, first.rows_quarantined) == (4, 2, 2, 0)
    assert (second.rows_read, second.rows_stored, second.rows_superseded, second.rows_quarantined) == (5, 4, 0, 1)
    assert report.rows_read == report.rows_stored + report.rows_superseded + report.rows_quarantined == 9
    assert query(paths, "SELECT count(*), sum(earnings_usd) FILTER (WHERE hour(ts) IN (2, 3)) FROM raw_earnings") == [(6, 0.04)]
    assert query(paths, "SELECT source_file, rows_read, rows_stored, rows_superseded, rows_quarantined FROM ingested_files ORDER BY source_file") == [
        ("first.csv", 4, 2, 2, 0), ("second.csv", 5, 4, 0, 1)]


def test_hour_grid_violations_and_row_accounting_violations(paths, ingest):
    from earnopt_assets.ingestion import store

    _two_series(paths, ingest)
    now = pd.Timestamp("2026-01-01 06:30")
    with duckdb.connect(str(paths.warehouse)) as conn:
        assert store.hour_grid_violations(conn, now)[0] == {"off_hour": 0, "future": 0, "negative_or_non_finite": 0}
        assert store.hour_grid_violations(conn, pd.Timestamp("2026-01-01 03:30"))[0]["future"] == 1  # hour 5 > 03:30 + 1 h
        conn.execute("UPDATE raw_earnings SET ts = ts + INTERVAL 1 MINUTE WHERE protocol = 'storj' AND hour(ts) = 2")
        conn.execute("UPDATE raw_earnings SET earnings_usd = 'nan'::DOUBLE WHERE protocol = 'honeygain' AND hour(ts) = 0")
        counts, examples = store.hour_grid_violations(conn, now)
        assert counts == {"off_hour": 1, "future": 0, "negative_or_non_finite": 1}
        assert sorted(examples["problem"]) == ["negative_or_non_finite", "off_hour"]
        assert store.row_accounting_violations(conn).empty
        conn.execute("UPDATE ingested_files SET rows_superseded = 1")
        assert store.row_accounting_violations(conn)["file"].tolist() == ["two.csv"]
