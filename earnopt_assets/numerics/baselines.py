"""Seasonal-naive forecasts: the yardstick every LSTM must beat, and the fallback when it cannot be used.

Seasonal naive with season ``s`` forecasts hour ``t + h`` (``h = 1..24``) from the origin ``t`` as the
value observed ``s`` hours earlier: ``f_{t+h} = e_{t+h-s}``. With ``s = 24`` ("same hour yesterday") and
``s = 168`` ("same hour last week") and ``h <= 24`` every value used is already observed at the origin.

The fallback (:func:`fallback_forecast`) tolerates gaps: for each target hour it takes the most recent
observed value at ``t + h - k*24`` for ``k = 1..7`` (same hour on an earlier day), then the mean of the
last 24 observed hours, then 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HORIZON_HOURS = 24
SEASONS: tuple[int, ...] = (24, 168)


def seasonal_naive(earnings: np.ndarray, season: int, horizon: int = HORIZON_HOURS) -> np.ndarray:
    """Forecast ``horizon`` hours after the last value of a contiguous hourly ``earnings`` array."""
    e = np.asarray(earnings, dtype=float)
    if season < horizon:
        raise ValueError(f"season {season} is shorter than the horizon {horizon}: it would need future values")
    if len(e) < season:
        raise ValueError(f"seasonal naive with season {season} needs {season} hours, got {len(e)}")
    n = len(e)
    return np.array([e[n - 1 + h - season] for h in range(1, horizon + 1)], dtype=float)


def fallback_forecast(ts: pd.Series | pd.DatetimeIndex, earnings: np.ndarray, horizon: int = HORIZON_HOURS) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Gap-tolerant seasonal-naive forecast of the ``horizon`` hours after the last observed hour.

    Returns the target hours and values (never negative, never NaN). Raises ``ValueError`` when there is
    no observation at all.
    """
    index = pd.DatetimeIndex(ts)
    values = np.asarray(earnings, dtype=float)
    keep = np.isfinite(values)
    index, values = index[keep], values[keep]
    if len(index) == 0:
        raise ValueError("no observed hours to forecast from")
    series = pd.Series(values, index=index).sort_index()
    series = series[~series.index.duplicated(keep="last")]
    last = series.index[-1]
    recent = series[series.index > last - pd.Timedelta(hours=24)]
    level = float(recent.mean()) if len(recent) else 0.0
    targets = pd.date_range(last + pd.Timedelta(hours=1), periods=horizon, freq="h")
    out = np.empty(horizon)
    lookup = series.to_dict()
    for i, target in enumerate(targets):
        value = level
        for k in range(1, 8):
            candidate = lookup.get(target - pd.Timedelta(hours=24 * k))
            if candidate is not None:
                value = float(candidate)
                break
        out[i] = value
    return targets, np.clip(np.nan_to_num(out, nan=0.0), 0.0, None)
