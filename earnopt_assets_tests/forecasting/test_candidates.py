"""Statistical candidates: the seasonal naive formulas, the allocation scaling, short history and gaps,
and that MSTL / AutoETS from statsforecast produce sane non-negative forecasts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.candidates import (
    ALLOCATION_FLOOR,
    HORIZON_HOURS,
    InsufficientHistory,
    OriginContext,
    fill_gaps,
    statistical_candidates,
)


def seasonal_series(hours: int, seed: int = 0, noise: float = 0.2) -> np.ndarray:
    t = np.arange(hours)
    rng = np.random.default_rng(seed)
    return 10 + 3 * np.sin(2 * np.pi * t / 24) + 1.5 * np.sin(2 * np.pi * t / 168) + rng.normal(0, noise, hours)


def context(values: np.ndarray, allocation: np.ndarray | None = None, planned: np.ndarray | None = None) -> OriginContext:
    ts = pd.date_range("2026-01-01", periods=len(values), freq="h").to_numpy()
    alloc = np.ones(len(values)) if allocation is None else allocation
    return OriginContext(ts=ts, earnings=np.asarray(values, float), allocation=alloc, planned_allocation=planned)


def test_interface_names():
    assert set(statistical_candidates()) == {"seasonal_naive_24", "seasonal_naive_168", "mstl", "ets"}
    assert set(statistical_candidates(allocation_beta=0.8)) == {
        "seasonal_naive_24", "seasonal_naive_168", "mstl", "ets", "seasonal_naive_24_alloc", "seasonal_naive_168_alloc"
    }
    assert issubclass(InsufficientHistory, ValueError)


def test_seasonal_naive_takes_the_lags():
    y = np.arange(400, dtype=float)
    ctx = context(y)
    c = statistical_candidates()
    np.testing.assert_array_equal(c["seasonal_naive_24"](ctx), y[-24:])
    np.testing.assert_array_equal(c["seasonal_naive_168"](ctx), y[-168:-144])
    assert ctx.origin_ts == ctx.ts[-1] and ctx.target_ts[0] == ctx.ts[-1] + np.timedelta64(1, "h")


def test_short_history_raises_insufficient():
    c = statistical_candidates()
    ctx = context(seasonal_series(100))
    assert c["seasonal_naive_24"](ctx).shape == (HORIZON_HOURS,)
    with pytest.raises(InsufficientHistory):
        c["seasonal_naive_168"](ctx)
    with pytest.raises(InsufficientHistory):
        c["mstl"](context(seasonal_series(30)))
    with pytest.raises(InsufficientHistory):
        c["seasonal_naive_24"](context(np.full(48, np.nan)))


def test_gaps_are_interpolated_and_forecasts_finite_non_negative():
    y = seasonal_series(24 * 30) - 9.0  # dips below zero: forecasts must be clipped
    y[-30:-20] = np.nan
    y[5] = np.nan
    filled = fill_gaps(y)
    assert np.isfinite(filled).all() and filled[-25] == pytest.approx(np.interp(len(y) - 25, [len(y) - 31, len(y) - 20], [y[-31], y[-20]]))
    ctx = context(y)
    for name, forecaster in statistical_candidates().items():
        f = forecaster(ctx)
        assert f.shape == (HORIZON_HOURS,) and np.isfinite(f).all() and (f >= 0).all(), name


def test_allocation_scaled_naive_matches_the_formula_and_uses_planned_only_when_given():
    n = 400
    y = seasonal_series(n)
    alloc = np.full(n, 0.5)
    alloc[-24:] = 0.25  # yesterday at 0.25, the origin holds 0.25
    beta = 0.8
    c = statistical_candidates(allocation_beta=beta)
    held = c["seasonal_naive_24_alloc"](context(y, alloc))
    np.testing.assert_allclose(held, y[-24:])  # same allocation then and now: unchanged
    weekly = c["seasonal_naive_168_alloc"](context(y, alloc))
    np.testing.assert_allclose(weekly, y[-168:-144] * (0.25 / 0.5) ** beta)
    planned = np.full(24, 1.0)
    conditional = c["seasonal_naive_24_alloc"](context(y, alloc, planned))
    np.testing.assert_allclose(conditional, y[-24:] * (1.0 / 0.25) ** beta)
    floor = c["seasonal_naive_24_alloc"](context(y, alloc, np.zeros(24)))
    np.testing.assert_allclose(floor, y[-24:] * (ALLOCATION_FLOOR / 0.25) ** beta)


def test_mstl_and_ets_beat_a_flat_guess_on_a_seasonal_series():
    y = seasonal_series(24 * 70 + 24, noise=0.1)
    history, future = y[:-24], y[-24:]
    ctx = context(history)
    c = statistical_candidates()
    flat = np.mean(np.abs(future - history[-24:].mean()))
    # MSTL models both seasons; ETS only the daily one (the weekly swing moves its level)
    for name, limit in (("mstl", 0.3), ("ets", 0.75)):
        err = np.mean(np.abs(future - c[name](ctx)))
        assert err < limit * flat, (name, err, flat)


def test_constant_series_and_from_frame():
    c = statistical_candidates()
    ctx = context(np.full(24 * 20, 3.0))
    for name in ("mstl", "ets"):
        np.testing.assert_allclose(c[name](ctx), 3.0)
    frame = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=50, freq="h"), "earnings_usd": np.arange(50.0), "allocation": 0.4})
    frame = frame.drop(index=[10, 11])
    ctx = OriginContext.from_frame(frame)
    assert len(ctx.ts) == 50 and np.isnan(ctx.earnings[10]) and ctx.held_allocation == 0.4
    with pytest.raises(ValueError):
        OriginContext(ts=ctx.ts, earnings=ctx.earnings[:-1], allocation=ctx.allocation)
