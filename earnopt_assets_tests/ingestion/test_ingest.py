"""Landing ingestion (plain Python + a real DuckDB file): quarantine reasons, idempotence, balance polls,
timestamps, rejected and archived files, and the read = accepted + quarantined invariant."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from earnopt_assets.ingestion.pipeline import ingest_landing, landing_files, unique_destination
from earnopt_assets.settings import EarnoptPaths

HEADER = "device,protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures,latency_ms"
GOOD = "local,honeygain,2026-01-01T{h:02d}:00:00Z,0.01,0.1,0.2,3,0.1,0.5,0,50"


@pytest.fixture
def paths(data_dir: Path) -> EarnoptPaths:
    return EarnoptPaths(data_dir).ensure()


@pytest.fixture
def ingest(paths, small_catalog):
    def run():
        with duckdb.connect(str(paths.warehouse)) as conn:
            return ingest_landing(conn, paths, small_catalog)

    return run


def query(paths: EarnoptPaths, sql: str, params=None):
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def write(paths: EarnoptPaths, name: str, text: str, mtime: float | None = None) -> Path:
    path = paths.landing / name
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def good_lines(hours) -> list[str]:
    return [GOOD.format(h=h) for h in hours]


def _quarantine_reason(paths, row_number: int, file: str = "bad.csv") -> str:
    rows = query(paths, "SELECT reason FROM quarantine WHERE source_file = ? AND row_number = ?", [file, row_number])
    assert len(rows) == 1, rows
    return rows[0][0]


BAD_ROWS = {
    "negative earnings": ("local,honeygain,2026-01-01T05:00:00Z,-0.5,0.1,0.2,3,0.1,0.5,0,50", "earnings_usd: negative earnings"),
    "wrong type": ("local,honeygain,2026-01-01T05:00:00Z,abc,0.1,0.2,3,0.1,0.5,0,50", "earnings_usd: wrong type, not a number (abc)"),
    "NaN": ("local,honeygain,2026-01-01T05:00:00Z,nan,0.1,0.2,3,0.1,0.5,0,50", "earnings_usd: NaN or Inf"),
    "Inf": ("local,honeygain,2026-01-01T05:00:00Z,0.01,inf,0.2,3,0.1,0.5,0,50", "cpu_cores: NaN or Inf"),
    "unknown protocol": ("local,filecoin,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,0.5,0,50", "protocol: unknown protocol filecoin"),
    "unparsable timestamp": ("local,honeygain,yesterday noon,0.01,0.1,0.2,3,0.1,0.5,0,50", "ts: unparsable timestamp yesterday noon"),
    "missing value": ("local,honeygain,2026-01-01T05:00:00Z,,0.1,0.2,3,0.1,0.5,0,50", "earnings_usd: missing value"),
    "allocation out of range": ("local,honeygain,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,1.2,0,50", "allocation: out of range [0, 1]"),
    "negative resource": ("local,honeygain,2026-01-01T05:00:00Z,0.01,0.1,-0.2,3,0.1,0.5,0,50", "memory_gb: negative value"),
    "negative failures": ("local,honeygain,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,0.5,-2,50", "connection_failures: negative count"),
    "fractional failures": ("local,honeygain,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,0.5,1.5,50", "connection_failures: wrong type, not an integer"),
    "negative latency": ("local,honeygain,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,0.5,0,-1", "latency_ms: negative value"),
    "bad device name": ("my rig!,honeygain,2026-01-01T05:00:00Z,0.01,0.1,0.2,3,0.1,0.5,0,50", "device: invalid name"),
    "wrong field count": ("local,honeygain,2026-01-01T05:00:00Z,0.01", "wrong number of fields: expected 11 fields, got 4"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_each_bad_row_kind_is_quarantined_with_its_reason(paths, ingest, kind):
    line, reason = BAD_ROWS[kind]
    write(paths, "bad.csv", "\n".join([HEADER, GOOD.format(h=1), line, GOOD.format(h=2)]) + "\n")
    report = ingest()
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (3, 2, 1)
    assert reason in _quarantine_reason(paths, 2)
    raw = query(paths, "SELECT raw_record, archived_as FROM quarantine")[0]
    if kind != "wrong field count":
        assert json.loads(raw[0])["protocol"] in ("honeygain", "filecoin")
    assert raw[1] == str(paths.archive / "bad.csv")
    assert query(paths, "SELECT count(*) FROM raw_earnings") == [(2,)]


def test_every_reason_of_a_row_is_listed(paths, ingest):
    write(paths, "bad.csv", HEADER + "\nlocal,nope,xx,-1,0.1,0.2,3,0.1,7,0,50\n")
    ingest()
    reason = _quarantine_reason(paths, 1)
    for part in ("protocol: unknown protocol nope", "ts: unparsable timestamp xx", "earnings_usd: negative", "allocation: out of range"):
        assert part in reason


def test_missing_and_extra_columns_quarantine_every_row(paths, ingest):
    missing = HEADER.replace(",storage_gb", "")
    row = GOOD.format(h=1).split(",")
    del row[7]
    write(paths, "missing.csv", missing + "\n" + ",".join(row) + "\n", mtime=1_000)
    write(paths, "extra.csv", HEADER + ",colour\n" + GOOD.format(h=2) + ",blue\n" + GOOD.format(h=3) + ",red\n", mtime=2_000)
    report = ingest()
    assert report.rows_read == 3 and report.rows_quarantined == 3 and report.rows_accepted == 0
    assert "missing column storage_gb" in _quarantine_reason(paths, 1, "missing.csv")
    assert _quarantine_reason(paths, 2, "extra.csv") == "unexpected column colour"
    assert json.loads(query(paths, "SELECT raw_record FROM quarantine WHERE source_file='extra.csv' AND row_number=2")[0][0])["colour"] == "red"


def test_optional_columns_may_be_absent(paths, ingest, small_catalog):
    header = "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures"
    write(paths, "minimal.csv", header + "\nstorj,2026-01-01 03:00:00,0.02,1,2,5,600,0.6,0\n")
    report = ingest()
    assert report.rows_accepted == 1
    assert query(paths, "SELECT device, latency_ms FROM raw_earnings") == [(small_catalog.host.device, None)]


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
    assert "duplicate key" in _quarantine_reason(paths, 1, "dupes.csv") and "row 2 wins" in _quarantine_reason(paths, 1, "dupes.csv")
    assert report.rows_accepted + report.rows_quarantined == report.rows_read == 4


def test_timestamps_are_converted_to_utc_and_floored_to_the_hour(paths, ingest):
    lines = [
        GOOD.format(h=0).replace("2026-01-01T00:00:00Z", "2026-01-01T10:00:00+02:00"),  # 08:00 UTC
        GOOD.format(h=0).replace("2026-01-01T00:00:00Z", "2026-01-01 09:00:00"),  # naive = UTC
        GOOD.format(h=0).replace("2026-01-01T00:00:00Z", "2026-01-01T10:42:17Z"),  # floored to 10:00
    ]
    write(paths, "tz.csv", HEADER + "\n" + "\n".join(lines) + "\n")
    ingest()
    hours = [r[0] for r in query(paths, "SELECT ts FROM raw_earnings ORDER BY ts")]
    assert hours == [pd.Timestamp("2026-01-01 08:00"), pd.Timestamp("2026-01-01 09:00"), pd.Timestamp("2026-01-01 10:00")]


def test_parquet_with_native_and_wrong_types(paths, ingest):
    frame = pd.DataFrame(
        {
            "device": ["local", "local"],
            "protocol": ["akash", "akash"],
            "ts": pd.DatetimeIndex(["2026-01-01 12:00", "2026-01-01 13:00"]).tz_localize("Europe/Berlin"),
            "earnings_usd": [0.03, float("nan")],
            "cpu_cores": [2.0, 2.0],
            "memory_gb": [3, 3],
            "bandwidth_mbps": [1.0, 1.0],
            "storage_gb": [50.0, 50.0],
            "allocation": [0.5, 0.5],
            "connection_failures": [0, 1],
            "latency_ms": [None, None],
        }
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    # pandas would write NaN as null; a real NaN must be caught too
    table = table.set_column(3, "earnings_usd", pa.array([0.03, float("nan")], pa.float64(), from_pandas=False))
    pq.write_table(table, paths.landing / "a.parquet")
    frame.assign(allocation=[True, False]).to_parquet(paths.landing / "bool.parquet")
    report = ingest()
    assert report.rows_accepted == 1 and report.rows_quarantined == 3
    assert query(paths, "SELECT ts, memory_gb FROM raw_earnings") == [(pd.Timestamp("2026-01-01 11:00"), 3.0)]
    assert "earnings_usd: NaN or Inf" in _quarantine_reason(paths, 2, "a.parquet")
    assert "allocation: wrong type" in _quarantine_reason(paths, 1, "bool.parquet")


def test_jsonl_rows_are_validated_per_line(paths, ingest):
    good = {"protocol": "storj", "ts": "2026-01-01T01:00:00Z", "earnings_usd": 0.02, "cpu_cores": 1, "memory_gb": 2,
            "bandwidth_mbps": 5, "storage_gb": 600, "allocation": 0.6, "connection_failures": 0, "latency_ms": None}
    lines = [
        json.dumps(good),
        "",
        "{not json",
        json.dumps({**good, "ts": "2026-01-01T02:00:00Z", "colour": "red"}),
        json.dumps({k: v for k, v in good.items() if k != "memory_gb"} | {"ts": "2026-01-01T03:00:00Z"}),
        json.dumps([1, 2]),
        json.dumps({**good, "ts": "2026-01-01T04:00:00Z", "earnings_usd": "0.5"}),
    ]
    write(paths, "a.jsonl", "\n".join(lines) + "\n")
    report = ingest()
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (6, 2, 4)
    assert _quarantine_reason(paths, 3, "a.jsonl").startswith("invalid JSON line")
    assert _quarantine_reason(paths, 4, "a.jsonl") == "unexpected column colour"
    assert _quarantine_reason(paths, 5, "a.jsonl") == "missing column memory_gb"
    assert _quarantine_reason(paths, 6, "a.jsonl").startswith("invalid JSON line")
    assert query(paths, "SELECT earnings_usd FROM raw_earnings ORDER BY ts") == [(0.02,), (0.5,)]


def _poll(ts: str, balance: float, protocol: str = "honeygain") -> dict:
    return {"device": "local", "protocol": protocol, "ts": ts, "balance_usd": balance, "cpu_cores": 0.1,
            "memory_gb": 0.2, "bandwidth_mbps": 2, "storage_gb": 0.1, "allocation": 0.5, "connection_failures": 0}


def test_balance_polls_are_differenced_with_payout_reset(paths, ingest):
    polls = [
        _poll("2026-01-01T00:02:11Z", 4.00),  # baseline
        _poll("2026-01-01T01:01:09Z", 4.25),
        _poll("2026-01-01T02:00:40Z", 4.75),
        _poll("2026-01-01T03:00:05Z", 0.10),  # payout: balance reset, 0.10 earned since
        _poll("2026-01-01T04:00:00Z", 0.30),
    ]
    pd.DataFrame(polls).to_csv(paths.landing / "poll1.csv", index=False)
    report = ingest()
    assert report.files[0].kind == "balance" and report.balance_baselines == 1
    assert report.rows_accepted == 5 and report.rows_inserted == 4
    rows = query(paths, "SELECT hour(ts), earnings_usd FROM raw_earnings ORDER BY ts")
    assert [(h, round(e, 10)) for h, e in rows] == [(1, 0.25), (2, 0.5), (3, 0.10), (4, 0.20)]
    assert min(e for _, e in rows) >= 0

    # The next poll arrives in a later file: differenced against the stored balance.
    pd.DataFrame([_poll("2026-01-01T05:00:00Z", 0.45)]).to_json(paths.landing / "poll2.jsonl", orient="records", lines=True)
    ingest()
    assert round(query(paths, "SELECT earnings_usd FROM raw_earnings WHERE hour(ts) = 5")[0][0], 10) == 0.15

    # A late poll for 02:30 -> hour 2 is re-keyed: it replaces the 02:00 poll of the same hour? No: it floors
    # into hour 2, so the later file wins for hour 2 and hour 3 is re-derived from it.
    pd.DataFrame([_poll("2026-01-01T02:40:00Z", 4.90)]).to_csv(paths.landing / "late.csv", index=False)
    ingest()
    rows = dict((h, round(e, 10)) for h, e in query(paths, "SELECT hour(ts), earnings_usd FROM raw_earnings ORDER BY ts"))
    assert rows[2] == 0.65 and rows[3] == 0.10


def test_negative_balance_is_quarantined_and_mixed_value_columns(paths, ingest):
    pd.DataFrame([_poll("2026-01-01T00:00:00Z", -1.0)]).to_csv(paths.landing / "neg.csv", index=False)
    both = pd.DataFrame([_poll("2026-01-01T00:00:00Z", 1.0) | {"earnings_usd": 0.1}])
    both.to_csv(paths.landing / "both.csv", index=False)
    report = ingest()
    assert report.rows_quarantined == 2
    assert "balance_usd: negative value" in _quarantine_reason(paths, 1, "neg.csv")
    assert _quarantine_reason(paths, 1, "both.csv") == "unexpected column balance_usd"


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
    table = report.markdown_table()
    assert "| header.csv | ingested |" in table and "**total**" in table
    assert ingest().files == []  # nothing left in landing


def test_ingested_files_records_max_ts_for_freshness(paths, ingest):
    write(paths, "a.csv", HEADER + "\n" + "\n".join(good_lines([1, 7])) + "\nlocal,honeygain,2026-01-01T09:00:00Z,-1,0.1,0.2,3,0.1,0.5,0,50\n")
    ingest()
    assert query(paths, "SELECT rows_read, rows_accepted, rows_quarantined, min_ts, max_ts, sha256 IS NOT NULL FROM ingested_files") == [
        (3, 2, 1, pd.Timestamp("2026-01-01 01:00"), pd.Timestamp("2026-01-01 09:00"), True)
    ]


def test_landing_helpers(tmp_path):
    assert landing_files(tmp_path / "missing") == []
    (tmp_path / "x.csv").write_text("a")
    (tmp_path / "x__1.csv").write_text("a")
    assert unique_destination(tmp_path, "x.csv").name == "x__2.csv"
    assert unique_destination(tmp_path, "y.csv").name == "y.csv"


def test_simulated_files_round_trip_through_ingestion(paths, ingest, small_catalog):
    from earnopt_assets.simulator import simulate_to_dir

    for i, fmt in enumerate(("csv", "jsonl", "parquet")):
        simulate_to_dir(small_catalog, days=2, seed=1, out_dir=paths.landing, end=f"2026-01-0{2 * i + 3}T00:00:00", file_format=fmt)
    report = ingest()
    assert report.rows_quarantined == 0 and report.rows_accepted == 3 * 3 * 48
    assert query(paths, "SELECT count(DISTINCT protocol), count(*) FROM raw_earnings") == [(3, 3 * 3 * 48)]


def test_csv_with_bom_and_crlf_from_spreadsheets(paths, ingest):
    text = "\ufeff" + HEADER + "\r\n" + GOOD.format(h=3) + "\r\n"
    (paths.landing / "excel.csv").write_bytes(text.encode("utf-8"))
    report = ingest()
    assert report.rows_accepted == 1 and report.rows_quarantined == 0


def test_landing_lock_excludes_a_second_holder(tmp_path):
    import threading

    from earnopt_assets.ingestion.pipeline import landing_lock

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
    with pytest.raises(TimeoutError, match="another ingestion holds"):
        with landing_lock(landing, timeout_s=0.2):
            pass
    release.set()
    thread.join(10)
    with landing_lock(landing, timeout_s=5):
        pass
    assert list(landing.iterdir()) == []  # the lock file is not in landing
