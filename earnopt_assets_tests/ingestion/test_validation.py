"""Row validation (plain Python + a real DuckDB file): every quarantine reason, column checks, timestamps
in UTC, Parquet types and JSON Lines per line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from earnopt_assets_tests.ingestion.helpers import GOOD, HEADER, poll, quarantine_reason, query, write

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
    assert reason in quarantine_reason(paths, 2)
    raw = query(paths, "SELECT raw_record, archived_as FROM quarantine")[0]
    if kind != "wrong field count":
        assert json.loads(raw[0])["protocol"] in ("honeygain", "filecoin")
    assert raw[1] == str(paths.archive / "bad.csv")
    assert query(paths, "SELECT count(*) FROM raw_earnings") == [(2,)]


def test_every_reason_of_a_row_is_listed(paths, ingest):
    write(paths, "bad.csv", HEADER + "\nlocal,nope,xx,-1,0.1,0.2,3,0.1,7,0,50\n")
    ingest()
    reason = quarantine_reason(paths, 1)
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
    assert "missing column storage_gb" in quarantine_reason(paths, 1, "missing.csv")
    assert quarantine_reason(paths, 2, "extra.csv") == "unexpected column colour"
    assert json.loads(query(paths, "SELECT raw_record FROM quarantine WHERE source_file='extra.csv' AND row_number=2")[0][0])["colour"] == "red"


def test_optional_columns_may_be_absent(paths, ingest, small_catalog):
    header = "protocol,ts,earnings_usd,cpu_cores,memory_gb,bandwidth_mbps,storage_gb,allocation,connection_failures"
    write(paths, "minimal.csv", header + "\nstorj,2026-01-01 03:00:00,0.02,1,2,5,600,0.6,0\n")
    report = ingest()
    assert report.rows_accepted == 1
    assert query(paths, "SELECT device, latency_ms FROM raw_earnings") == [(small_catalog.host.device, None)]


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
    assert "earnings_usd: NaN or Inf" in quarantine_reason(paths, 2, "a.parquet")
    assert "allocation: wrong type" in quarantine_reason(paths, 1, "bool.parquet")


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
    assert quarantine_reason(paths, 3, "a.jsonl").startswith("invalid JSON line")
    assert quarantine_reason(paths, 4, "a.jsonl") == "unexpected column colour"
    assert quarantine_reason(paths, 5, "a.jsonl") == "missing column memory_gb"
    assert quarantine_reason(paths, 6, "a.jsonl").startswith("invalid JSON line")
    assert query(paths, "SELECT earnings_usd FROM raw_earnings ORDER BY ts") == [(0.02,), (0.5,)]


def test_negative_balance_is_quarantined_and_mixed_value_columns(paths, ingest):
    pd.DataFrame([poll("2026-01-01T00:00:00Z", -1.0)]).to_csv(paths.landing / "neg.csv", index=False)
    both = pd.DataFrame([poll("2026-01-01T00:00:00Z", 1.0) | {"earnings_usd": 0.1}])
    both.to_csv(paths.landing / "both.csv", index=False)
    report = ingest()
    assert report.rows_quarantined == 2
    assert "balance_usd: negative value" in quarantine_reason(paths, 1, "neg.csv")
    assert quarantine_reason(paths, 1, "both.csv") == "unexpected column balance_usd"
