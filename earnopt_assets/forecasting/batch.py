"""Many forecast origins (service requests) of one model in one vectorised NumPy pass.

Each request is validated and reduced to a :class:`ForecastOrigin` (its hourly series on a contiguous
grid + the resolved future allocation path) by :func:`prepare_origin` (any frame with ``ts``,
``earnings_usd``, ``allocation``) or :func:`prepare_origin_from_columns` (posted rows as arrays, no
DataFrame). :class:`BatchedForecaster` then runs :meth:`EarningsPredictor.forecast_series` on all of them
at once: the base, the windows and the network (:mod:`earnopt_assets.forecasting.inference`) are batched
over origins, so n requests cost one pass, not n. Rows equal single-origin forecasts to float precision.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.model.config import HORIZON_HOURS
from earnopt_assets.forecasting.model.predictor import (
    EarningsPredictor,
    HourlySeries,
    series_from_arrays,
    series_from_frame,
)

HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class ForecastOrigin:
    """One request's validated inputs: its hourly series (last ``tail_hours``) and future allocation path."""

    series: HourlySeries
    allocation_path: np.ndarray

    @property
    def origin_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.series.ts[-1])


def _origin(predictor: EarningsPredictor, series: HourlySeries, allocation_path) -> ForecastOrigin:
    predictor._require_fitted()
    keep = predictor.tail_hours
    series = HourlySeries(series.ts[-keep:], series.earnings[-keep:], series.allocation[-keep:])
    predictor.tails_from_series([series], strict=True)  # the same validation (and errors) as predict_next_24h
    return ForecastOrigin(series, predictor.resolve_allocation_path(series.allocation, allocation_path))


def prepare_origin(
    predictor: EarningsPredictor, recent_data: pd.DataFrame, allocation_path: Sequence[float] | float | np.ndarray | None = None
) -> ForecastOrigin:
    """The predictor's own input path (same validation and errors as ``predict_next_24h``)."""
    predictor._require_fitted()
    return _origin(predictor, series_from_frame(recent_data, predictor.protocol), allocation_path)


def prepare_origin_from_columns(
    predictor: EarningsPredictor,
    ts_ns: np.ndarray,
    columns: Mapping[str, np.ndarray],
    allocation_path: Sequence[float] | float | np.ndarray | None = None,
) -> ForecastOrigin | None:
    """:func:`prepare_origin` for posted rows given as arrays (``ts_ns``: UTC epoch ns), no DataFrame.
    None when there is nothing to read (the caller then takes the frame path, which reports precisely)."""
    predictor._require_fitted()
    if len(ts_ns) == 0 or "earnings_usd" not in columns:
        return None
    ts = np.asarray(ts_ns, dtype=np.int64).astype("datetime64[ns]")
    allocation = columns.get("allocation")
    series = series_from_arrays(ts, np.asarray(columns["earnings_usd"], dtype=float), None if allocation is None else np.asarray(allocation, dtype=float), predictor.protocol)
    return _origin(predictor, series, allocation_path)


class BatchedForecaster:
    """``forecast(origins) -> (n, 24)`` for one loaded model; thread-safe (calls are serialised)."""

    def __init__(self, predictor: EarningsPredictor, max_batch: int = 256) -> None:
        predictor._require_fitted()
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Nothing to compile with NumPy inference (kept so loaders need not care)."""

    def forecast(self, origins: Sequence[ForecastOrigin], horizon: int = HORIZON_HOURS) -> np.ndarray:
        if not origins:
            return np.empty((0, horizon))
        with self._lock:
            parts = [
                self.predictor.forecast_series(
                    [o.series for o in origins[i : i + self.max_batch]], [o.allocation_path for o in origins[i : i + self.max_batch]]
                )
                for i in range(0, len(origins), self.max_batch)
            ]
        return np.concatenate(parts)[:, :horizon]


def predict_many(
    predictor: EarningsPredictor,
    frames: Sequence[pd.DataFrame],
    allocation_paths: Sequence[Sequence[float] | float | np.ndarray | None] | None = None,
) -> np.ndarray:
    """``predict_next_24h(frame, path)`` of each frame, computed as one batch (n, 24)."""
    paths = list(allocation_paths) if allocation_paths is not None else [None] * len(frames)
    if len(paths) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(paths)} allocation paths")
    return BatchedForecaster(predictor).forecast([prepare_origin(predictor, f, p) for f, p in zip(frames, paths)])
