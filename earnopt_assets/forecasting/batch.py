"""Many forecast origins (service requests) of one model in one vectorised NumPy pass.

Each request is validated and reduced to a :class:`ForecastOrigin` (its hourly series on a contiguous
grid + the resolved future allocation path) by :func:`prepare_origin` (any frame with ``ts``,
``earnings_usd``, ``allocation``) or :func:`prepare_origin_from_columns` (posted rows as arrays, no
DataFrame). :class:`BatchedForecaster` then runs :meth:`EarningsPredictor.forecast_series` on all of them
at once: the base, the windows and the network (:mod:`earnopt_assets.forecasting.inference`) are batched
over origins, so n requests cost one pass, not n. Rows equal single-origin forecasts to float precision.

What a served forecast does not repeat (each measured on the 2-core host, a 128/64 direct-head model):
the per-origin tails validated in ``prepare`` are kept and not rebuilt; the statistical base of every
origin AND of every input-window row (the one-step errors the network reads) is computed in ONE pass
(:class:`_OnePassBase`: the model asks for it three times); and the local calendar channels read hours
already shifted to local time (:class:`_LocalHours`) instead of converting time zones with pandas per
request, whenever the zone's offsets are whole hours.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.model.config import HORIZON_HOURS
from earnopt_assets.forecasting.model.forecast import Tails, forecast_z, to_earnings
from earnopt_assets.forecasting.model.predictor import (
    EarningsPredictor,
    HourlySeries,
    _blas_controller,
    series_from_arrays,
    series_from_frame,
)

HOUR_NS = 3_600_000_000_000


@dataclass(frozen=True)
class ForecastOrigin:
    """One request's validated inputs: its hourly series (last ``tail_hours``) and future allocation path."""

    series: HourlySeries
    allocation_path: np.ndarray
    tails: Tails | None = None  # the predictor's (1, T) tails of ``series``, built once by the validation

    @property
    def origin_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.series.ts[-1])


def _origin(predictor: EarningsPredictor, series: HourlySeries, allocation_path) -> ForecastOrigin:
    predictor._require_fitted()
    keep = predictor.tail_hours
    series = HourlySeries(series.ts[-keep:], series.earnings[-keep:], series.allocation[-keep:])
    tails = predictor.tails_from_series([series], strict=True)  # the same validation (and errors) as predict_next_24h
    return ForecastOrigin(series, predictor.resolve_allocation_path(series.allocation, allocation_path), tails)


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
        self._local: _LocalHours | None = None

    def warm_up(self) -> None:
        """Nothing to compile with NumPy inference (kept so loaders need not care)."""

    def forecast(self, origins: Sequence[ForecastOrigin], horizon: int = HORIZON_HOURS) -> np.ndarray:
        if not origins:
            return np.empty((0, horizon))
        with self._lock:
            parts = [self._forecast(origins[i : i + self.max_batch]) for i in range(0, len(origins), self.max_batch)]
        return np.concatenate(parts)[:, :horizon]

    def _forecast(self, origins: Sequence[ForecastOrigin]) -> np.ndarray:
        """``predictor.forecast_series`` of the origins, without repeating the work listed in the module
        docstring (the same functions of the model, the same numbers)."""
        predictor = self.predictor
        if any(o.tails is None for o in origins):
            return predictor.forecast_series([o.series for o in origins], [o.allocation_path for o in origins])
        tails = Tails(*(np.concatenate([getattr(o.tails, name) for o in origins]) for name in ("Z", "A", "E")))
        timezone, direct = predictor.config.timezone, predictor.config.head == "direct"
        local = self._local_hours(timezone) if direct else None  # recursive: future hours may cross a DST change
        if local is not None and (shifted := local.shift(tails.E)) is not None:
            tails, timezone = Tails(tails.Z, tails.A, shifted), "UTC"
        state = predictor.state
        if direct and state.blend != 0.0:  # blend 0: the base alone, asked for once
            state = copy.copy(state)
            state.base = _OnePassBase(predictor.state.base, predictor.sequence_length)
        future = np.stack([o.allocation_path for o in origins])
        with _blas_controller().limit(limits=1, user_api="blas"):
            _, z_path = forecast_z(
                tails, state, predictor.network, head=predictor.config.head, sequence_length=predictor.sequence_length,
                timezone=timezone, future_allocation=future,
            )
        return to_earnings(z_path, future, predictor.allocation_beta)

    def _local_hours(self, timezone: str) -> _LocalHours | None:
        if timezone in ("UTC", "Etc/UTC", "utc"):
            return None
        if self._local is None or self._local.timezone != timezone:
            self._local = _LocalHours(timezone)
        return self._local


class _OnePassBase:
    """The fitted statistical base, computing in one call what a direct-head forecast asks it for three
    times: the 24 h path of each tail's origin (twice) and the one-step forecast ``b_{s|s-1}`` of every row
    ``s`` of the input window (the base-error channel). The first origin-path call predicts all those
    origins together (``b_{s|s-1}`` is the h = 1 column of the 24 h path from ``s - 1``); a later call
    for the same tails is served from that pass, any other call goes to the base unchanged."""

    def __init__(self, base: Any, window: int) -> None:
        self._base = base
        self._window = window
        self._Z: np.ndarray | None = None
        self._paths: np.ndarray | None = None  # (n, 24) from each origin
        self._one_step: np.ndarray | None = None  # (n, window): b_{s|s-1} of the window rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def predict(self, Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS) -> np.ndarray:
        n, T = Z.shape
        rows, origins = np.asarray(rows), np.asarray(origins)
        at_origins = len(rows) == n and (rows == np.arange(n)).all() and (origins == T - 1).all()
        if self._Z is not Z and at_origins and horizon == HORIZON_HOURS and self._window < T:
            window_rows = np.repeat(np.arange(n), self._window)
            window_origins = np.tile(np.arange(T - 1 - self._window, T - 1), n)  # s - 1 for every window row s
            paths = self._base.predict(Z, np.concatenate([rows, window_rows]), np.concatenate([origins, window_origins]), horizon)
            self._Z, self._paths, self._one_step = Z, paths[:n], paths[n:, 0].reshape(n, self._window)
        if self._Z is Z:
            if at_origins and horizon <= HORIZON_HOURS:
                return self._paths[:, :horizon].copy()
            first = T - 1 - self._window
            if horizon == 1 and len(origins) and origins.min() >= first and origins.max() < T - 1:
                return self._one_step[rows, origins - first][:, None]
        return self._base.predict(Z, rows, origins, horizon)


class _LocalHours:
    """UTC epoch hours -> the same instants' local wall-clock hours counted from the epoch
    (``epoch + utcoffset``), from a table of the zone's offsets built once per range of hours. Local
    hour-of-day and day-of-week of those are the zone's (what the calendar channels read), so the
    channels can be computed as if in UTC. Only for zones whose offsets are whole hours (None otherwise)."""

    SPAN_HOURS = 2 * 366 * 24

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        self._start = 0
        self._offsets = np.zeros(0, dtype=np.int64)

    def _build(self, low: int, high: int) -> bool:
        start = low - self.SPAN_HOURS // 4
        hours = np.arange(start, max(high + 1, start + self.SPAN_HOURS), dtype=np.int64)
        stamps = pd.DatetimeIndex((hours * HOUR_NS).astype("datetime64[ns]")).tz_localize("UTC").tz_convert(self.timezone)
        offset_ns = stamps.tz_localize(None).asi8 - hours * HOUR_NS
        if (offset_ns % HOUR_NS).any():
            return False
        self._start, self._offsets = start, offset_ns // HOUR_NS
        return True

    def shift(self, epoch_hours: np.ndarray) -> np.ndarray | None:
        low, high = int(epoch_hours.min()), int(epoch_hours.max())
        if (low < self._start or high >= self._start + len(self._offsets)) and not self._build(low, high):
            return None
        return epoch_hours + self._offsets[epoch_hours - self._start]


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
