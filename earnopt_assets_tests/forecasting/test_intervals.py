"""Split-conformal intervals: coverage on synthetic data, the formula, JSON round trip, widen()."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earnopt_assets.forecasting.intervals import ConformalIntervals


def synthetic(n_origins: int, seed: int, relative: bool):
    rng = np.random.default_rng(seed)
    level = rng.uniform(1, 20, size=(n_origins, 24))
    noise = rng.standard_t(df=5, size=(n_origins, 24)) * (1 + np.arange(24) / 12)  # error grows with the step
    actual = level + (noise * 0.1 * level if relative else noise)
    return level, actual


@pytest.mark.parametrize("mode", ["relative", "additive"])
def test_coverage_within_tolerance_on_fresh_data(mode):
    relative = mode == "relative"
    pred, act = synthetic(60, 0, relative)
    intervals = ConformalIntervals.fit(act - pred, pred, mode=mode)
    pred2, act2 = synthetic(400, 1, relative)
    bounds = intervals.apply(pred2)
    for key, nominal in (("80", 80), ("95", 95)):
        inside = (act2 >= bounds[f"lower_{key}"]) & (act2 <= bounds[f"upper_{key}"])
        assert abs(100 * inside.mean() - nominal) <= 5, (mode, key, 100 * inside.mean())
    assert (bounds["lower_95"] <= bounds["lower_80"]).all() and (bounds["upper_95"] >= bounds["upper_80"]).all()
    assert (bounds["lower_95"] >= 0).all()


def test_quantiles_are_the_conformal_order_statistics():
    residuals = np.tile(np.arange(1.0, 40.0)[:, None] - 20.0, (1, 3))  # -19..19 at every step
    intervals = ConformalIntervals.fit(residuals, np.full_like(residuals, 100.0), mode="additive", pool_width=0, levels=(0.8,))
    lo, hi = intervals.quantiles[0.8]
    # n = 39: k_lo = floor(40 * 0.1) = 4 -> -16; k_hi = ceil(40 * 0.9) = 36 -> 16
    np.testing.assert_allclose(lo, -16.0)
    np.testing.assert_allclose(hi, 16.0)
    assert intervals.n_calibration == [39, 39, 39]
    b = intervals.apply(np.full(3, 10.0))
    np.testing.assert_allclose(b["lower_80"], 0.0)  # clipped at zero
    np.testing.assert_allclose(b["upper_80"], 26.0)


def test_json_round_trip_and_widen():
    pred, act = synthetic(40, 2, True)
    intervals = ConformalIntervals.fit(act - pred, pred)
    doc = json.loads(json.dumps(intervals.to_json()))
    again = ConformalIntervals.from_json(doc)
    point = pred[:3]
    for key, values in intervals.apply(point).items():
        np.testing.assert_array_equal(again.apply(point)[key], values)
    wide = intervals.widen(2.0)
    base, widened = intervals.apply(np.full(24, 10.0)), wide.apply(np.full(24, 10.0))
    np.testing.assert_allclose(widened["upper_95"] - 10.0, 2 * (base["upper_95"] - 10.0))
    assert wide.widen_factor == 2.0 and ConformalIntervals.from_json(wide.to_json()).widen_factor == 2.0
    with pytest.raises(ValueError):
        intervals.widen(0)
    with pytest.raises(ValueError):
        ConformalIntervals.from_json({"format": 1, "levels": {}})
    with pytest.raises(ValueError):
        intervals.apply(np.zeros(12))


def test_fit_rejects_unusable_input():
    with pytest.raises(ValueError):
        ConformalIntervals.fit(np.full((3, 24), np.nan), np.ones((3, 24)))
    with pytest.raises(ValueError):
        ConformalIntervals.fit(np.zeros((3, 24)), np.ones((3, 23)))
    with pytest.raises(ValueError):
        ConformalIntervals.fit(np.zeros((3, 24)), np.ones((3, 24)), mode="magic")
