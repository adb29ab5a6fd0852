"""Holdout evaluation glue kept for the model's own callers (the /evaluate endpoint, older training code).

The rolling-origin harness that scores the model beside the statistical candidates is EVAL's
(:mod:`earnopt_assets.forecasting.harness`); this is the same protocol for one model and the two seasonal
naive baselines: origins at the hour before ``test_df`` starts and every 24 h after, each a 24 h forecast
from the history up to it, compared with the actual hours that exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.model.config import HORIZON_HOURS
from earnopt_assets.forecasting.model.errors import InsufficientHistoryError
from earnopt_assets.numerics.metrics import forecast_metrics

BASELINES: tuple[str, ...] = ("seasonal_naive_24", "seasonal_naive_168")


def better_baseline(evaluation: Mapping[str, Any]) -> str:
    """Name of the seasonal-naive baseline with the lower MAPE (ties go to the 24 h one)."""

    def mape(name: str) -> float:
        value = (evaluation.get(name) or {}).get("mape")
        return float("inf") if value is None else float(value)

    return "seasonal_naive_24" if mape("seasonal_naive_24") <= mape("seasonal_naive_168") else "seasonal_naive_168"


def evaluate(model: Any, test_df: pd.DataFrame, context: pd.DataFrame | None = None, *, condition_on_allocation: bool = True) -> dict[str, Any]:
    """Rolling-origin 24 h forecasts over ``test_df`` (history: ``context`` + the test hours before each origin).

    ``condition_on_allocation``: each forecast gets the holdout's ACTUAL allocation of its target hours
    (earnopt's own control input, known before the hours run); False holds the origin's share (the
    headline protocol). Returns ``{"model", "seasonal_naive_24", "seasonal_naive_168": forecast_metrics,
    "origins", "skipped_origins", "better_baseline"}``; the per-hour table is kept on ``model.last_evaluation``.
    """
    from earnopt_assets.forecasting.model.predictor import HourlySeries, series_from_frame

    model._require_fitted()
    frame = test_df if context is None else pd.concat([context, test_df], ignore_index=True)
    frame = frame.drop_duplicates(subset="ts", keep="last")
    series = series_from_frame(frame, model.protocol)
    test_ts = pd.DatetimeIndex(pd.to_datetime(test_df["ts"])).sort_values()
    position = {t: i for i, t in enumerate(pd.DatetimeIndex(series.ts))}
    origins, skipped = [], 0
    origin_ts = test_ts[0] - pd.Timedelta(hours=1)
    while origin_ts + pd.Timedelta(hours=1) <= test_ts[-1]:
        o = position.get(origin_ts)
        if o is None or o + 1 < model.required_history_hours or not np.isfinite(series.earnings[o]):
            skipped += 1
        else:
            origins.append(o)
        origin_ts += pd.Timedelta(hours=HORIZON_HOURS)
    if not origins:
        raise InsufficientHistoryError(f"{model.protocol}: no forecast origin in the holdout had {model.required_history_hours} h of history")
    histories = [HourlySeries(series.ts[: o + 1], series.earnings[: o + 1], series.allocation[: o + 1]) for o in origins]
    n = len(series.ts)
    paths = []
    for o in origins:
        if not condition_on_allocation:
            paths.append(None)
            continue
        future = series.allocation[o + 1 : o + 1 + HORIZON_HOURS]
        path = np.full(HORIZON_HOURS, future[-1] if len(future) else series.allocation[o])
        path[: len(future)] = future
        paths.append(np.clip(path, 0.0, 1.0))
    predicted = model.forecast_series(histories, paths, strict=False)
    last_test = test_ts[-1]
    rows = []
    for k, o in enumerate(origins):
        for h in range(1, HORIZON_HOURS + 1):
            j = o + h
            if j >= n or pd.Timestamp(series.ts[j]) > last_test or not np.isfinite(series.earnings[j]):
                continue
            rows.append(
                {
                    "origin_ts": pd.Timestamp(series.ts[o]),
                    "target_ts": pd.Timestamp(series.ts[j]),
                    "horizon_hours": h,
                    "actual": float(series.earnings[j]),
                    "model": float(predicted[k, h - 1]),
                    "seasonal_naive_24": float(series.earnings[j - 24]),
                    "seasonal_naive_168": float(series.earnings[j - 168]) if j >= 168 else np.nan,
                }
            )
    table = pd.DataFrame(rows, columns=["origin_ts", "target_ts", "horizon_hours", "actual", "model", *BASELINES])
    usable = table[np.isfinite(table[["actual", "model", *BASELINES]].to_numpy(dtype=float)).all(axis=1)].reset_index(drop=True)
    model.last_evaluation = usable
    if usable.empty:
        raise InsufficientHistoryError(f"{model.protocol}: no holdout hour could be scored")
    result: dict[str, Any] = {name: forecast_metrics(usable["actual"], usable[name]) for name in ("model", *BASELINES)}
    result["origins"] = len(origins)
    result["skipped_origins"] = skipped
    result["better_baseline"] = better_baseline(result)
    from earnopt_assets.forecasting.model.predictor import _json_safe

    model.metrics = _json_safe(result)
    return result
