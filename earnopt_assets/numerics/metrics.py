"""Forecast error metrics. Plain numpy.

For actuals ``a_i`` and forecasts ``f_i`` over ``n`` hours:

* MSE  = (1/n) * sum (a_i - f_i)^2,  RMSE = sqrt(MSE),  MAE = (1/n) * sum |a_i - f_i|
* MAPE = (100/m) * sum_{i: a_i != 0} |a_i - f_i| / |a_i|  (percent; the n - m zero-actual hours are
  skipped and reported as ``mape_skipped``, because a relative error of a zero actual is undefined)
* R^2  = 1 - sum (a_i - f_i)^2 / sum (a_i - mean(a))^2  (None when the actuals are constant)
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
