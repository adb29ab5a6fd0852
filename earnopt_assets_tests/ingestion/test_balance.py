"""Balance polls -> hourly earnings: piecewise-linear resampling to the hour, payout resets, polls at a
real collector's cadence (two in one clock hour, outages), imputed hours, conservation of money."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.balance import ResampleSettings, derive_hourly_earnings
from earnopt_assets_tests.ingestion.helpers import poll, query

MEASUREMENTS = {"cpu_cores": 0.1, "memory_gb": 0.2, "bandwidth_mbps": 2.0, "storage_gb": 0.1, "allocation": 0.5,
                "connection_failures": 0, "latency_ms": None}


def test_balance_polls_are_differenced_with_payout_reset(paths, ingest):
    polls = [
        poll("2026-01-01T00:00:00Z", 4.00),  # baseline
        poll("2026-01-01T01:00:00Z", 4.25),
        poll("2026-01-01T02:00:00Z", 4.75),
        poll("2026-01-01T03:00:00Z", 0.10),  # payout: balance reset, 0.10 earned since
        poll("2026-01-01T04:00:00Z", 0.30),
    ]
    pd.DataFrame(polls).to_csv(paths.landing / "poll1.csv", index=False)
    report = ingest()
    assert report.files[0].kind == "balance" and report.balance_baselines == 1
    assert report.rows_accepted == 5 and report.rows_inserted == 4
    rows = query(paths, "SELECT hour(ts), earnings_usd, q.ts IS NOT NULL FROM raw_earnings LEFT JOIN imputed_hours q USING (device, protocol, ts) ORDER BY ts")
    assert [(h, round(e, 10), i) for h, e, i in rows] == [(0, 0.25, False), (1, 0.5, False), (2, 0.10, False), (3, 0.20, False)]

    # The next poll arrives in a later file: resampled against the stored polls.
    pd.DataFrame([poll("2026-01-01T05:00:00Z", 0.45)]).to_json(paths.landing / "poll2.jsonl", orient="records", lines=True)
    ingest()
    assert round(query(paths, "SELECT earnings_usd FROM raw_earnings WHERE hour(ts) = 4")[0][0], 10) == 0.15

    # A late poll at 02:30 is kept beside the 02:00 poll (both real) and re-derives hour 2: 0.15 before
    # it, then the payout segment 02:30 -> 03:00 brings 0.10.
    pd.DataFrame([poll("2026-01-01T02:30:00Z", 4.90)]).to_csv(paths.landing / "late.csv", index=False)
    ingest()
    rows = {h: round(e, 10) for h, e in query(paths, "SELECT hour(ts), earnings_usd FROM raw_earnings ORDER BY ts")}
    assert rows == {0: 0.25, 1: 0.5, 2: 0.25, 3: 0.20, 4: 0.15}
    assert query(paths, "SELECT count(*) FROM balance_polls")[0][0] == 7


def _collector_polls(rng: np.random.Generator, days: int = 10, outage: tuple[int, int] = (100, 105), payout_hour: int = 150) -> pd.DataFrame:
    """A collector polling every 55 +- 4 min at $0.30/h, down during ``outage`` (hours), one payout."""
    start = pd.Timestamp("2026-03-01 00:00:00")
    minutes, times = 0.0, []
    while minutes < days * 24 * 60:
        hour = minutes / 60
        if not outage[0] <= hour < outage[1]:
            times.append(minutes)
        minutes += 55 + rng.uniform(-4, 4)
    t = np.array(times) / 60
    earned = 0.30 * t
    balance = 5.0 + earned - np.where(t >= payout_hour, 5.0 + 0.30 * payout_hour, 0.0)  # paid out at payout_hour
    return pd.DataFrame({"ts": start + pd.to_timedelta(t, unit="h"), "balance_usd": balance})


def test_collector_cadence_outage_and_payout_through_landing(paths, ingest):
    """The issue's case: 10 days of polls every 55 +- 4 min, a 5 h outage, one payout. Every poll is used,
    the outage hours are imputed at the running rate (no spike), and the money adds up."""
    frame = _collector_polls(np.random.default_rng(3))
    rows = [poll(f"{ts:%Y-%m-%dT%H:%M:%S}Z", float(b)) for ts, b in zip(frame["ts"], frame["balance_usd"])]
    pd.DataFrame(rows).to_csv(paths.landing / "collector.csv", index=False)
    report = ingest()
    assert report.rows_quarantined == 0 and report.rows_stored == len(frame)
    assert query(paths, "SELECT count(*) FROM quarantine")[0][0] == 0
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        hours = store.read_telemetry(conn, columns=["ts", "earnings_usd", "imputed"]).set_axis(["ts", "e", "imputed"], axis=1)
    assert hours["e"].max() < 0.30 * 1.5, "a collector outage must not become an earnings spike"
    outage_hours = hours.loc[hours["imputed"], "ts"].dt.hour.tolist()
    assert 1 <= len(outage_hours) <= 7 and report.rows_imputed == len(outage_hours)
    assert hours["ts"].diff().dropna().eq(pd.Timedelta(hours=1)).all(), "no hour is missing"
    # Every hour but the one holding the payout earns the rate (interpolation is exact for a
    # linear balance); the payout hour loses only what was earned between the last poll and the payout.
    off_rate = (hours["e"] - 0.30).abs() > 1e-3  # poll times are written to the second
    assert off_rate.sum() <= 2 and 0 <= 0.30 * len(hours) - hours["e"].sum() < 0.30


def test_outage_longer_than_the_limit_stays_missing():
    ts = pd.to_datetime(["2026-01-01 00:00", "2026-01-01 01:00", "2026-01-01 09:00", "2026-01-01 10:00"])
    series = pd.DataFrame({"device": "local", "protocol": "honeygain", "ts": ts, "balance_usd": [0.0, 1.0, 9.0, 10.0],
                           **MEASUREMENTS, "since": ts[0], "file_index": 0})
    derived, _ = derive_hourly_earnings(series)
    assert [t.hour for t in derived["ts"]] == [0, 9]  # the 8 h outage is not spread: its hours stay missing
    longer_limit, _ = derive_hourly_earnings(series, ResampleSettings(max_gap_hours=12))
    assert len(longer_limit) == 10 and longer_limit["imputed"].tolist() == [False] + [True] * 8 + [False]
    assert abs(longer_limit["value"].sum() - 10.0) < 1e-9


def test_derive_hourly_earnings_unit():
    """First poll is a baseline, a drop is a payout (reset, never negative), only hours a poll of this batch
    can change are returned, and the result equals deriving the whole series."""
    ts = pd.date_range("2026-01-01", periods=5, freq="h")
    series = pd.DataFrame({"device": "local", "protocol": "honeygain", "ts": ts, "balance_usd": [1.0, 1.5, 0.2, 0.2, 0.7],
                           **MEASUREMENTS, "since": ts[3], "file_index": [-1, -1, -1, 0, 0]})
    other = pd.DataFrame({"device": "local", "protocol": "storj", "ts": ts[:2], "balance_usd": [3.0, 3.25], **MEASUREMENTS,
                          "since": ts[0], "file_index": [1, 1]})
    derived, baselines = derive_hourly_earnings(pd.concat([series, other], ignore_index=True))
    assert baselines == 1  # storj's first poll is in this batch; honeygain's baseline was stored before
    assert [(p, t.hour, v) for p, t, v in zip(derived["protocol"], derived["ts"], derived["value"])] == [
        ("honeygain", 2, 0.0), ("honeygain", 3, 0.5), ("storj", 0, 0.25)]
    whole, _ = derive_hourly_earnings(series.assign(since=ts[0]))
    assert whole["value"].tolist() == [0.5, 0.2, 0.0, 0.5]
    assert (derived["value"] >= 0).all() and "balance_usd" not in derived and "file_index" in derived
    empty, none = derive_hourly_earnings(series.iloc[:0])
    assert empty.empty and none == 0


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.floats(0.05, 9.0), min_size=2, max_size=60),
    jitter=st.lists(st.floats(-0.2, 0.2), min_size=60, max_size=60),
    rates=st.lists(st.floats(0.0, 3.0), min_size=60, max_size=60),
    payouts=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_money_is_conserved_over_random_cadences(gaps, jitter, rates, payouts):
    """Polls at random cadence (with jitter, gaps up to 9 h and payouts), the first and last on the hour:
    the hourly earnings sum to the observed increments (payout-aware) to 1e-9 when no gap exceeds the
    limit; with the default 6 h limit no emitted hour touches a longer gap and nothing is invented."""
    offsets = np.cumsum([0.0] + [max(0.02, g + j * min(g, 0.5)) for g, j in zip(gaps, jitter)])
    offsets[-1] = np.ceil(offsets[-1])
    offsets = np.unique(offsets)
    balance, increments = [2.0], []
    for k in range(1, len(offsets)):
        earned = rates[k % 60] * (offsets[k] - offsets[k - 1])
        if payouts[k % 60] and balance[-1] > 0:
            balance.append(earned)  # paid out, then earned since the reset
        else:
            balance.append(balance[-1] + earned)
        increments.append(balance[-1] - balance[-2] if balance[-1] >= balance[-2] else balance[-1])
    ts = pd.Timestamp("2026-01-01") + pd.to_timedelta(offsets, unit="h")
    series = pd.DataFrame({"device": "local", "protocol": "honeygain", "ts": ts, "balance_usd": balance,
                           **MEASUREMENTS, "since": ts[0], "file_index": 0})
    unlimited, _ = derive_hourly_earnings(series, ResampleSettings(max_gap_hours=1e6))
    assert (unlimited["value"] >= 0).all()
    assert abs(unlimited["value"].sum() - sum(increments)) < 1e-9
    assert unlimited["ts"].is_unique and len(unlimited) == round(offsets[-1] - np.ceil(offsets[0]))
    limited, _ = derive_hourly_earnings(series)
    assert limited["value"].sum() <= sum(increments) + 1e-9
    # gaps measured on the timestamps the code sees (ns), not on the float offsets that made them: at a
    # boundary such as exactly 2 h or 6 h the float difference can read 2.000000000000001
    poll_h = ((ts - pd.Timestamp("2026-01-01")) / pd.Timedelta(hours=1)).to_numpy()
    gaps_h = np.diff(ts.to_numpy()) / np.timedelta64(1, "h")
    for hour in limited["ts"]:
        h = (hour - pd.Timestamp("2026-01-01")) / pd.Timedelta(hours=1)
        touching = gaps_h[(poll_h[1:] > h) & (poll_h[:-1] < h + 1)]
        assert touching.max() <= 6.0
        assert limited.loc[limited["ts"] == hour, "imputed"].item() == bool(touching.max() > 2.0)
