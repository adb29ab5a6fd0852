"""Forecast error metrics. Plain numpy.

For actuals ``a_i`` and forecasts ``f_i`` over ``n`` hours:

* MSE  = (1/n) * sum (a_i - f_i)^2,  RMSE = sqrt(MSE),  MAE = (1/n) * sum |a_i - f_i|
* MAPE = (100/m) * sum_{i: a_i != 0} |a_i - f_i| / |a_i|  (percent; the n - m zero-actual hours are
  skipped and reported as ``mape_skipped``, because a relative error of a zero actual is undefined)
* R^2  = 1 - sum (a_i - f_i)^2 / sum (a_i - mean(a))^2  (None when the actuals are constant)
* MASE = MAE / S with S = (1/|T|) * sum_{t in T} |y_t - y_{t-24}| over the in-sample hours T (before the
  holdout) where both values are observed: the forecast's MAE relative to the in-sample MAE of
  "same hour yesterday" (< 1 beats that naive forecast on its own training data; None when S = 0)
* coverage = 100 * #{i: lo_i <= a_i <= hi_i} / n over the hours with an observed actual (percent)
"""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("mse", "mae", "rmse", "mape", "r2")


def forecast_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """MSE, MAE, RMSE, MAPE (percent, zero actuals skipped and counted) and R^2.

    Values that are not finite in either array are an error: callers align and filter first.
    """
    a = np.asarray(actual, dtype=float).ravel()
    f = np.asarray(predicted, dtype=float).ravel()
    if a.shape != f.shape:
        raise ValueError(f"actual has {a.size} values but predicted has {f.size}")
    if not (np.isfinite(a).all() and np.isfinite(f).all()):
        raise ValueError("forecast_metrics needs finite actual and predicted values")
    n = int(a.size)
    if n == 0:
        return {"mse": None, "mae": None, "rmse": None, "mape": None, "r2": None, "n": 0, "mape_skipped": 0}
    err = a - f
    mse = float(np.mean(err**2))
    nonzero = a != 0
    skipped = int(n - nonzero.sum())
    mape = float(100.0 * np.mean(np.abs(err[nonzero]) / np.abs(a[nonzero]))) if nonzero.any() else None
    sst = float(np.sum((a - a.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / sst if sst > 0 else None
    return {
        "mse": mse,
        "mae": float(np.mean(np.abs(err))),
        "rmse": math.sqrt(mse),
        "mape": mape,
        "r2": r2,
        "n": n,
        "mape_skipped": skipped,
    }


def seasonal_naive_scale(insample: np.ndarray, season: int = 24) -> float | None:
    """MASE denominator: mean |y_t - y_{t-season}| over the in-sample pairs where both are finite
    (None when there is no such pair or the mean is 0)."""
    y = np.asarray(insample, dtype=float).ravel()
    if len(y) <= season:
        return None
    diff = np.abs(y[season:] - y[:-season])
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return None
    scale = float(diff.mean())
    return scale if scale > 0 else None


def mase(actual: np.ndarray, predicted: np.ndarray, scale: float | None) -> float | None:
    """MAE / ``scale`` over the pairs where both values are finite (None without a scale or a pair)."""
    a = np.asarray(actual, dtype=float).ravel()
    f = np.asarray(predicted, dtype=float).ravel()
    if a.shape != f.shape:
        raise ValueError(f"actual has {a.size} values but predicted has {f.size}")
    keep = np.isfinite(a) & np.isfinite(f)
    if scale is None or not np.isfinite(scale) or scale <= 0 or not keep.any():
        return None
    return float(np.mean(np.abs(a[keep] - f[keep])) / scale)


def interval_coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float | None:
    """Percent of the observed actuals inside ``[lower, upper]`` (None when no actual is observed)."""
    a = np.asarray(actual, dtype=float).ravel()
    lo = np.asarray(lower, dtype=float).ravel()
    hi = np.asarray(upper, dtype=float).ravel()
    if not (a.shape == lo.shape == hi.shape):
        raise ValueError(f"actual, lower and upper differ in size: {a.size}, {lo.size}, {hi.size}")
    keep = np.isfinite(a) & np.isfinite(lo) & np.isfinite(hi)
    if not keep.any():
        return None
    inside = (a[keep] >= lo[keep]) & (a[keep] <= hi[keep])
    return float(100.0 * inside.mean())
