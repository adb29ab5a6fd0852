"""Freshness against the wall clock per (device, protocol) series (plain pandas)."""

from __future__ import annotations

import pandas as pd

from earnopt_assets.ingestion.freshness import DEFAULT_MAX_LAG_HOURS, series_lag, stale_series


def test_series_lag_and_stale_series_name_late_and_missing_series():
    summary = pd.DataFrame({"device": ["local", "local"], "protocol": ["storj", "akash"],
                            "latest_ts": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 05:00"])})
    now = pd.Timestamp("2026-01-01 11:30", tz="UTC")  # tz-aware wall clock is converted to naive UTC
    lags = series_lag(summary, now, expected=[("local", "storj"), ("local", "honeygain")])
    assert lags[["protocol", "latest_hour_utc"]].values.tolist() == [
        ["akash", "2026-01-01 05:00"], ["honeygain", ""], ["storj", "2026-01-01 10:00"]]
    assert lags["lag_h"].tolist()[0] == 6.5 and pd.isna(lags["lag_h"].tolist()[1]) and lags["lag_h"].tolist()[2] == 1.5
    assert DEFAULT_MAX_LAG_HOURS == 3.0
    assert stale_series(lags)["protocol"].tolist() == ["akash", "honeygain"]
    assert stale_series(lags, 7.0)["protocol"].tolist() == ["honeygain"]
    empty = series_lag(summary.iloc[:0], now)
    assert empty.empty and stale_series(empty).empty
