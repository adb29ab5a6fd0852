"""Balance polls -> hourly earnings: differencing across files, payout resets, late polls."""

from __future__ import annotations

import pandas as pd

from earnopt_assets_tests.ingestion.helpers import poll, query


def test_balance_polls_are_differenced_with_payout_reset(paths, ingest):
    polls = [
        poll("2026-01-01T00:02:11Z", 4.00),  # baseline
        poll("2026-01-01T01:01:09Z", 4.25),
        poll("2026-01-01T02:00:40Z", 4.75),
        poll("2026-01-01T03:00:05Z", 0.10),  # payout: balance reset, 0.10 earned since
        poll("2026-01-01T04:00:00Z", 0.30),
    ]
    pd.DataFrame(polls).to_csv(paths.landing / "poll1.csv", index=False)
    report = ingest()
    assert report.files[0].kind == "balance" and report.balance_baselines == 1
    assert report.rows_accepted == 5 and report.rows_inserted == 4
    rows = query(paths, "SELECT hour(ts), earnings_usd FROM raw_earnings ORDER BY ts")
    assert [(h, round(e, 10)) for h, e in rows] == [(1, 0.25), (2, 0.5), (3, 0.10), (4, 0.20)]
    assert min(e for _, e in rows) >= 0

    # The next poll arrives in a later file: differenced against the stored balance.
    pd.DataFrame([poll("2026-01-01T05:00:00Z", 0.45)]).to_json(paths.landing / "poll2.jsonl", orient="records", lines=True)
    ingest()
    assert round(query(paths, "SELECT earnings_usd FROM raw_earnings WHERE hour(ts) = 5")[0][0], 10) == 0.15

    # A late poll for 02:30 -> hour 2 is re-keyed: it replaces the 02:00 poll of the same hour? No: it floors
    # into hour 2, so the later file wins for hour 2 and hour 3 is re-derived from it.
    pd.DataFrame([poll("2026-01-01T02:40:00Z", 4.90)]).to_csv(paths.landing / "late.csv", index=False)
    ingest()
    rows = {h: round(e, 10) for h, e in query(paths, "SELECT hour(ts), earnings_usd FROM raw_earnings ORDER BY ts")}
    assert rows[2] == 0.65 and rows[3] == 0.10


def test_derive_hourly_earnings_unit():
    """Differencing in plain pandas: first poll is a baseline, a drop is a payout (reset, never negative),
    only hours from the batch's earliest poll on are derived."""
    from earnopt_assets.ingestion.balance import derive_hourly_earnings

    ts = pd.date_range("2026-01-01", periods=5, freq="h")
    base = {"cpu_cores": 0.1, "memory_gb": 0.2, "bandwidth_mbps": 2.0, "storage_gb": 0.1, "allocation": 0.5,
            "connection_failures": 0, "latency_ms": None}
    series = pd.DataFrame({"device": "local", "protocol": "honeygain", "ts": ts, "balance_usd": [1.0, 1.5, 0.2, 0.2, 0.7],
                           **base, "since": ts[2], "file_index": [-1, -1, 0, 0, 0]})
    other = pd.DataFrame({"device": "local", "protocol": "storj", "ts": ts[:2], "balance_usd": [3.0, 3.25], **base,
                          "since": ts[0], "file_index": [1, 1]})
    derived, baselines = derive_hourly_earnings(pd.concat([series, other], ignore_index=True))
    assert baselines == 1  # storj's first poll is in this batch; honeygain's baseline was stored before
    assert [(p, t.hour, v) for p, t, v in zip(derived["protocol"], derived["ts"], derived["value"])] == [
        ("honeygain", 2, 0.2), ("honeygain", 3, 0.0), ("honeygain", 4, 0.5), ("storj", 1, 0.25)]
    assert (derived["value"] >= 0).all() and "balance_usd" not in derived and "file_index" in derived
    empty, none = derive_hourly_earnings(series.iloc[:0])
    assert empty.empty and none == 0
