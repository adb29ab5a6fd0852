"""Every feature against a hand-computed value; validation errors; scaling helpers; vectorised builder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.ingestion.features import (
    FEATURE_COLUMNS,
    FeatureValidationError,
    build_feature_table,
    build_feature_table_reference,
    calendar_features,
    ema,
    expm1_money,
    log1p_money,
    rate_of_change,
    scaler_from_json,
    scaler_to_json,
    validate_features,
)

HOST = {"cpu_cores": 8.0, "memory_gb": 16.0, "bandwidth_mbps": 100.0, "storage_gb": 2000.0}
START = pd.Timestamp("2024-03-01 00:00")


def _ramp(hours: int = 200, drop: tuple[int, ...] = ()) -> pd.DataFrame:
    """e_t = t + 1 dollars; failures 1 in every third hour; fixed resources."""
    t = np.arange(hours)
    frame = pd.DataFrame(
        {
            "device": "local",
            "protocol": "honeygain",
            "ts": START + pd.to_timedelta(t, unit="h"),
            "earnings_usd": (t + 1).astype(float),
            "cpu_cores": 2.0,
            "memory_gb": 4.0,
            "bandwidth_mbps": 25.0,
            "storage_gb": 500.0,
            "allocation": 0.5,
            "connection_failures": (t % 3 == 0).astype(int),
        }
    )
    return frame.drop(index=list(drop)).reset_index(drop=True)


def _row(table: pd.DataFrame, hour: int) -> pd.Series:
    return table.loc[table["ts"] == START + pd.Timedelta(hours=hour)].iloc[0]


def test_earnings_features_hand_computed():
    table, stats = build_feature_table(_ramp(), HOST, "UTC")
    assert stats.output_rows == 200 - 168 and table["ts"].min() == START + pd.Timedelta(hours=168)
    t = 180
    row = _row(table, t)
    assert row["earnings_usd"] == t + 1
    assert row["lag_1"] == t and row["lag_2"] == t - 1
    assert row["lag_24"] == t + 1 - 24 and row["lag_168"] == t + 1 - 168
    assert row["ma_1h"] == t + 1
    assert row["ma_6h"] == pytest.approx((t + 1) - 2.5)  # mean of t-4 .. t+1
    assert row["ma_24h"] == pytest.approx((t + 1) - 11.5)
    # population std of 24 consecutive integers: sqrt((24^2 - 1) / 12)
    assert row["volatility_24h"] == pytest.approx(math.sqrt(575 / 12), rel=1e-9)
    assert row["roc_1"] == pytest.approx(1 / ((t + 1 + t) / 2), rel=1e-6)
    # failures at t % 3 == 0: exactly 8 of any 24 consecutive hours
    assert row["failure_rate_24h"] == pytest.approx(8 / 24)


def test_ema_and_roc_hand_computed():
    a = 2 / 13
    m0 = 2.0
    m1 = a * 4 + (1 - a) * m0
    m2 = a * 4 + (1 - a) * m1  # the missing hour carries the last value
    m3 = a * 8 + (1 - a) * m2
    out = ema(np.array([2.0, 4.0, np.nan, 8.0]))
    assert out[0] == pytest.approx(m0) and out[1] == pytest.approx(m1)
    assert np.isnan(out[2]) and out[3] == pytest.approx(m3)
    roc = rate_of_change(np.array([1.0, 3.0, 0.0, 0.0]))
    assert np.isnan(roc[0])
    assert roc[1] == pytest.approx(2 / 2.0)  # (3-1)/((3+1)/2)
    assert roc[2] == pytest.approx(-2.0)  # a drop to zero is the bound
    assert roc[3] == 0.0  # 0/0 guarded by eps


def test_calendar_features_use_local_time():
    # 2024-03-10 14:00 UTC is 15:00 on Sunday in Berlin (UTC+1); March has 31 days.
    cal = calendar_features(pd.DatetimeIndex(["2024-03-10 14:00"]), "Europe/Berlin")
    assert cal["hour"][0] == 15 and cal["day_of_week"][0] == 6 and cal["day_of_month"][0] == 10
    assert cal["hour_sin"][0] == pytest.approx(math.sin(2 * math.pi * 15 / 24))
    assert cal["hour_cos"][0] == pytest.approx(math.cos(2 * math.pi * 15 / 24))
    assert cal["dow_sin"][0] == pytest.approx(math.sin(2 * math.pi * 6 / 7))
    assert cal["dow_cos"][0] == pytest.approx(math.cos(2 * math.pi * 6 / 7))
    assert cal["dom_sin"][0] == pytest.approx(math.sin(2 * math.pi * 9 / 31))
    assert cal["dom_cos"][0] == pytest.approx(math.cos(2 * math.pi * 9 / 31))
    # Summer time starts 2024-03-31 01:00 UTC: local 02:00 does not exist.
    dst = calendar_features(pd.DatetimeIndex(["2024-03-31 00:00", "2024-03-31 01:00"]), "Europe/Berlin")
    assert list(dst["hour"]) == [1.0, 3.0]
    # tz-aware input is converted, not reinterpreted
    aware = calendar_features(pd.DatetimeIndex(["2024-03-10 14:00"]).tz_localize("UTC"), "Europe/Berlin")
    assert aware["hour"][0] == 15


def test_resource_and_health_features_hand_computed():
    table, _ = build_feature_table(_ramp(), HOST, "UTC")
    row = _row(table, 190)
    assert row["cpu_util"] == pytest.approx(2 / 8)
    assert row["memory_util"] == pytest.approx(4 / 16)
    assert row["bandwidth_util"] == pytest.approx(25 / 100)
    assert row["storage_util"] == pytest.approx(500 / 2000)
    assert row["allocation"] == 0.5


def test_gaps_drop_rows_whose_windows_touch_them():
    table, stats = build_feature_table(_ramp(drop=(180,)), HOST, "UTC")
    # 168..179 keep full windows; 181..199 have the gap inside their 24 h windows (and 181 has no lag_1).
    assert sorted((table["ts"] - START).dt.total_seconds() // 3600) == list(range(168, 180))
    assert stats.missing_hours == 1 and stats.series == 1
    assert stats.warmup_or_gap_rows == 199 - 12
    assert list(table.columns) == ["device", "protocol", "ts", *FEATURE_COLUMNS]


def test_vectorised_builder_matches_the_per_series_reference():
    rng = np.random.default_rng(0)
    parts = []
    for device, offset in (("a", 0), ("b", 37)):
        for protocol in ("honeygain", "storj", "akash"):
            frame = _ramp(400)
            frame["device"], frame["protocol"] = device, protocol
            frame["ts"] = frame["ts"] + pd.Timedelta(hours=offset)
            frame["earnings_usd"] = rng.lognormal(-5, 0.5, len(frame))
            frame["connection_failures"] = rng.poisson(0.3, len(frame))
            parts.append(frame.drop(index=rng.choice(len(frame), 15, replace=False)))
    raw = pd.concat(parts).sample(frac=1.0, random_state=3)
    fast, fast_stats = build_feature_table(raw, HOST, "Europe/Berlin")
    slow, slow_stats = build_feature_table_reference(raw, HOST, "Europe/Berlin")
    assert fast_stats == slow_stats
    assert list(fast.columns) == list(slow.columns) and (fast.dtypes == slow.dtypes).all()
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), slow.reset_index(drop=True), rtol=1e-12, atol=0)
    validate_features(fast)


def test_builder_edge_cases():
    empty, stats = build_feature_table(_ramp().iloc[0:0], HOST)
    assert len(empty) == 0 and stats.output_rows == 0 and list(empty.columns)[:3] == ["device", "protocol", "ts"]
    duplicated = pd.concat([_ramp(10), _ramp(10).iloc[[3]]])
    with pytest.raises(FeatureValidationError, match="duplicate"):
        build_feature_table(duplicated, HOST)
    off_hour = _ramp(10)
    off_hour.loc[2, "ts"] += pd.Timedelta(minutes=5)
    with pytest.raises(FeatureValidationError, match="whole hours"):
        build_feature_table(off_hour, HOST)


def test_validate_features_names_the_column():
    table, _ = build_feature_table(_ramp(), HOST)
    validate_features(table)
    bad = table.copy()
    bad.loc[bad.index[3], "ma_6h"] = np.nan
    with pytest.raises(FeatureValidationError, match="'ma_6h' has 1 NaN/Inf"):
        validate_features(bad)
    bad = table.copy()
    bad.loc[bad.index[0], "lag_24"] = np.inf
    with pytest.raises(FeatureValidationError, match="lag_24"):
        validate_features(bad)
    bad = table.copy()
    bad["allocation"] = 1.5
    with pytest.raises(FeatureValidationError, match=r"'allocation' above 1\.0"):
        validate_features(bad)
    bad = table.copy()
    bad["earnings_usd"] = -1.0
    with pytest.raises(FeatureValidationError, match=r"'earnings_usd' below 0\.0"):
        validate_features(bad)
    bad = table.copy()
    bad["hour"] = bad["hour"].astype(str)
    with pytest.raises(FeatureValidationError, match="'hour' has dtype"):
        validate_features(bad)
    with pytest.raises(FeatureValidationError, match="missing feature columns: ema_12"):
        validate_features(table.drop(columns=["ema_12"]))


def test_scaling_helpers_round_trip_through_json():
    import json

    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    x = np.random.default_rng(1).lognormal(0, 1, size=(50, 3))
    for scaler in (StandardScaler().fit(x), MinMaxScaler().fit(x)):
        restored = scaler_from_json(json.loads(json.dumps(scaler_to_json(scaler))))
        np.testing.assert_allclose(restored.transform(x), scaler.transform(x))
        np.testing.assert_allclose(restored.inverse_transform(restored.transform(x)), x)
    with pytest.raises(ValueError, match="unknown scaler"):
        scaler_from_json({"type": "robust"})
    with pytest.raises(ValueError, match="corrupt"):
        scaler_from_json({"type": "standard", "mean": [0.0], "scale": [0.0]})
    with pytest.raises(TypeError):
        scaler_to_json(object())
    money = np.array([0.0, 0.01, 10.0])
    np.testing.assert_allclose(expm1_money(log1p_money(money)), money)
    with pytest.raises(FeatureValidationError):
        log1p_money(np.array([-1.0]))
