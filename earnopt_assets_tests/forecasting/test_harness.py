"""Rolling-origin harness: origins, metric formulas, no future information in the headline, the
allocation-conditional diagnostic, unavailable candidates, batch forecasters and out-of-sample coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.candidates import InsufficientHistory, OriginContext, statistical_candidates
from earnopt_assets.forecasting.harness import (
    origin_contexts,
    rolling_origins,
    score_candidates,
    score_with_calibrated_intervals,
)
from earnopt_assets.numerics.metrics import interval_coverage, mase, seasonal_naive_scale


def series(days: int, seed: int = 1, noise: float = 0.5):
    n = 24 * days
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    y = 10 + 4 * np.sin(2 * np.pi * t / 24) + 2 * np.sin(2 * np.pi * t / 168) + rng.normal(0, noise, n)
    ts = pd.date_range("2026-01-01", periods=n, freq="h").to_numpy()
    return ts, y, np.ones(n)


def naive_only():
    c = statistical_candidates()
    return {k: c[k] for k in ("seasonal_naive_24", "seasonal_naive_168")}


def test_rolling_origins():
    assert rolling_origins(100, 52, horizon=24, step=24) == [51, 75]  # 75 + 24 = 99, the last hour
    assert rolling_origins(99, 52) == [51]
    assert rolling_origins(200, 52, end=100) == [51, 75]
    assert rolling_origins(100, 52, step=6)[:3] == [51, 57, 63]
    with pytest.raises(ValueError):
        rolling_origins(100, 0)


def test_metrics_formulas():
    assert seasonal_naive_scale(np.r_[np.zeros(24), np.full(24, 2.0)], 24) == 2.0
    assert seasonal_naive_scale(np.ones(48), 24) is None
    assert mase([1, 2, np.nan], [2, 2, 5], 0.5) == pytest.approx(1.0)
    assert mase([1, 2], [2, 2], None) is None
    assert interval_coverage([1, 5, np.nan, 3], [0, 0, 0, 3], [2, 2, 2, 4]) == pytest.approx(200 / 3)
    assert interval_coverage([np.nan], [0], [1]) is None


def test_scores_match_a_hand_computation():
    ts, y, alloc = series(30)
    holdout = 24 * 25
    result = score_candidates(ts, y, alloc, holdout, naive_only())
    assert result.origins == list(range(holdout - 1, len(y) - 24, 24)) and len(result.origins) == 5
    pred = np.array([y[o + 1 - 24 : o + 1] for o in result.origins])
    act = np.array([y[o + 1 : o + 25] for o in result.origins])
    s = result.scores["seasonal_naive_24"]
    np.testing.assert_allclose(s.predictions, pred)
    np.testing.assert_allclose(s.residuals, act - pred)
    assert s.mape_pct == pytest.approx(100 * np.mean(np.abs(act - pred) / np.abs(act)))
    scale = np.mean(np.abs(y[24:holdout] - y[: holdout - 24]))
    assert s.mase == pytest.approx(np.mean(np.abs(act - pred)) / scale)
    assert s.coverage_80_pct is None and s.n_origins == 5
    table = result.table()
    assert {"mape_%", "mase", "mae_usd", "rmse_usd", "coverage_80_%", "coverage_95_%"} <= set(table.columns)
    assert result.best() in ("seasonal_naive_24", "seasonal_naive_168")


def test_headline_forecasters_never_see_the_future():
    ts, y, alloc = series(30)
    alloc = np.linspace(0.2, 1.0, len(y))
    holdout = 24 * 27  # two origins: MSTL and ETS are refitted at each
    seen = []

    def peeking(ctx: OriginContext) -> np.ndarray:
        seen.append(ctx.planned_allocation)
        for values in (ctx.ts, ctx.earnings, ctx.allocation):  # no way back to the full arrays
            assert values.base is None or values.base.size == values.size
        return np.full(24, float(np.nanmean(ctx.earnings)))

    def future_hungry(ctx: OriginContext) -> np.ndarray:
        # uses the planned allocation when offered; in the headline there is none to use
        a = ctx.target_allocation()
        return np.full(24, 10.0 * a.mean())

    forecasters = {"peek": peeking, "alloc": future_hungry, **statistical_candidates(allocation_beta=0.7)}
    headline = score_candidates(ts, y, alloc, holdout, forecasters)
    assert seen and all(p is None for p in seen)

    # overwrite everything after origin o: the forecasts made at o must not change
    for i in (0,):
        o = headline.origins[i]
        y2, a2 = y.copy(), alloc.copy()
        y2[o + 1 :] = 1e6
        a2[o + 1 :] = 0.01
        changed = score_candidates(ts, y2, a2, holdout, forecasters)
        for name, score in headline.scores.items():
            np.testing.assert_array_equal(changed.scores[name].predictions[i], score.predictions[i], err_msg=name)

    seen.clear()
    diagnostic = score_candidates(ts, y, alloc, holdout, forecasters, conditional=True)
    assert all(p is not None for p in seen) and diagnostic.conditional
    o = diagnostic.origins[0]
    np.testing.assert_allclose(seen[0], alloc[o + 1 : o + 25])
    # the conditional diagnostic differs for allocation users only
    assert not np.allclose(diagnostic.scores["alloc"].predictions, headline.scores["alloc"].predictions)
    assert not np.allclose(diagnostic.scores["seasonal_naive_24_alloc"].predictions, headline.scores["seasonal_naive_24_alloc"].predictions)
    np.testing.assert_array_equal(diagnostic.scores["seasonal_naive_24"].predictions, headline.scores["seasonal_naive_24"].predictions)


def test_contexts_are_copies_not_views():
    ts, y, alloc = series(10)
    (ctx,) = origin_contexts(ts, y, alloc, [100])
    assert ctx.earnings.base is None or ctx.earnings.base is not y
    assert len(ctx.earnings) == 101 and not ctx.earnings.flags.writeable
    with pytest.raises(ValueError):
        ctx.earnings[0] = 1.0


def test_unavailable_candidate_is_marked_and_not_ranked():
    ts, y, alloc = series(12)
    holdout = 24 * 6  # first origins have < 168 h: weekly naive cannot forecast them

    def never(ctx):
        raise InsufficientHistory("too short")

    result = score_candidates(ts, y, alloc, holdout, {**naive_only(), "never": never})
    weekly = result.scores["seasonal_naive_168"]
    assert 0 < weekly.n_origins < len(result.origins) and weekly.unavailable_reason
    assert result.scores["never"].n_origins == 0 and result.scores["never"].mape_pct is None
    assert result.best() == "seasonal_naive_24"
    assert result.table().loc[lambda t: t["candidate"] == "never", "mape_%"].isna().all()


def test_batch_forecaster_gets_all_origins_in_one_call():
    ts, y, alloc = series(30)
    calls = []

    def batch(contexts):
        calls.append(len(contexts))
        return np.stack([c.earnings[-24:] for c in contexts])

    result = score_candidates(ts, y, alloc, 24 * 25, naive_only(), batch_forecasters={"batch_naive": batch})
    assert calls == [len(result.origins)]
    np.testing.assert_allclose(result.scores["batch_naive"].predictions, result.scores["seasonal_naive_24"].predictions)
    with pytest.raises(ValueError):
        score_candidates(ts, y, alloc, 24 * 25, {}, batch_forecasters={"bad": lambda cs: np.zeros((1, 3))})


def test_calibrated_intervals_cover_out_of_sample():
    ts, y, alloc = series(90, noise=1.0)
    holdout = 24 * 60
    result, intervals = score_with_calibrated_intervals(ts, y, alloc, holdout, naive_only(), calibration_hours=24 * 28, interval_mode="additive")
    s = result.scores["seasonal_naive_168"]
    assert set(intervals) == {"seasonal_naive_24", "seasonal_naive_168"}
    assert abs(s.coverage_80_pct - 80) <= 7 and abs(s.coverage_95_pct - 95) <= 5
    lower, upper = s.bounds["lower_80"], s.bounds["upper_80"]
    assert (lower <= s.predictions + 1e-12).all() and (upper >= s.predictions - 1e-12).all()
