"""Batched recursive 24-hour forecasts: many origins (requests) of one model in one network call per step.

:meth:`EarningsPredictor.predict_next_24h` runs the recursion for one origin with batch-1 network calls.
A service answering many concurrent requests for the same protocol can instead stack their origins
``i = 1..n`` and run the SAME recursion on all of them at once:

* inputs per origin come from the predictor itself (:func:`prepare_origin` = ``history_arrays`` +
  ``_origin_inputs``: window ``W_i`` (L, C) and earnings tail of L + 168 hours);
* base      b_{i,t+h} = w1 e_{i,t+h-24} + w2 e_{i,t+h-168} + (w3 ref_{i,t} + w4 lvl6_{i,t}) p(cell_{i,t+h}),
  fixed at each origin's levels and moved to each origin's future allocation path a_{i,t+h} — the
  predictor's own :meth:`EarningsPredictor.base_paths`, called once for the whole batch;
* step h    x_i = ((W_i / d_i - mu) / sigma) with d_i = ref_{i,t+h-1} on the money channels,
  y^ = f([x_1..x_n]) (ONE call of the compiled network, batch padded to a bucket size),
  e^_{i,t+h} = max(0, b_{i,t+h} + ref_{i,t+h-1} (mu_y + sigma_y g y^_i));
* feedback  the new row's earnings features by the formulas of :func:`next_earnings_row` (trailing
  means/std over the 25-hour tail, symmetric rate of change, EMA recurrence), vectorised over origins;
  calendar and next-hour seasonal channels of the future hours computed once for the whole batch; the
  new row's ``allocation`` channel is the origin's path value a_{i,t+h} (default: its last share held).

Results equal ``predict_next_24h`` per origin to float tolerance (tested); the network call is the only
float32 part, and a GEMM over the batch instead of n GEMVs changes the summation order, not the maths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from earnopt_assets.ingestion.features import (
    EARNINGS_FEATURES,
    EMA_SPAN,
    RESOURCE_TOTAL_KEYS,
    ROC_EPS,
    calendar_features,
    earnings_features,
    health_features,
    resource_features,
)
from earnopt_assets.forecasting.predictor import (
    HORIZON_HOURS,
    TELEMETRY_INPUT_COLUMNS,
    EarningsPredictor,
    HistoryArrays,
)

HOUR_NS = 3_600_000_000_000

BATCH_BUCKETS: tuple[int, ...] = (1, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ForecastOrigin:
    """One request's validated model inputs: raw window (L, C), earnings tail (L + 168) and origin hour."""

    window: np.ndarray
    tail: np.ndarray
    origin_ts: pd.Timestamp
    allocation_path: np.ndarray | None = None  # resolved future shares (24); None = hold the last share
    allocation_tail: np.ndarray | None = None  # allocation of the tail's hours; None = the last share held


def prepare_origin(
    predictor: EarningsPredictor, recent_data: pd.DataFrame, allocation_path: Sequence[float] | float | np.ndarray | None = None
) -> ForecastOrigin:
    """The predictor's own input path (same validation and errors as ``predict_next_24h``)."""
    predictor._require_fitted()
    arrays = predictor.history_arrays(recent_data)
    window, tail = predictor._origin_inputs(arrays, len(arrays.ts) - 1)
    path = None if allocation_path is None else predictor.resolve_allocation_path(window, allocation_path)
    atail = predictor._allocation_tail(arrays, len(arrays.ts) - 1)
    return ForecastOrigin(window, tail, pd.Timestamp(arrays.ts[-1]), path, atail)


def prepare_origin_from_columns(
    predictor: EarningsPredictor,
    ts_ns: np.ndarray,
    columns: Mapping[str, np.ndarray],
    allocation_path: Sequence[float] | float | np.ndarray | None = None,
) -> ForecastOrigin | None:
    """:func:`prepare_origin` for raw telemetry given as arrays (``ts_ns``: UTC epoch nanoseconds), without
    building a DataFrame — the per-request cost a service pays. None when the fast path does not apply
    (hours not contiguous, or no host totals): the caller then takes :func:`prepare_origin`, which lays
    the rows on the hourly grid and reports gaps precisely.

    On a contiguous series the hourly grid is the series itself, so :func:`series_features` reduces to
    the same feature-family functions called here (earnings, resource and health families on the whole
    series; the calendar family, a per-hour function, only on the window's hours). Validation is the
    predictor's own (:meth:`EarningsPredictor._origin_inputs`), with the same errors.
    """
    predictor._require_fitted()
    if not predictor.config.host_totals or len(ts_ns) == 0:
        return None
    order = np.argsort(ts_ns, kind="stable")
    ts_ns = np.asarray(ts_ns, dtype=np.int64)[order]
    if len(ts_ns) > 1 and not (np.diff(ts_ns) == HOUR_NS).all():
        return None
    data = {name: np.asarray(columns[name], dtype=float)[order] for name in TELEMETRY_INPUT_COLUMNS if name != "ts"}
    L = predictor.sequence_length
    n = len(ts_ns)
    ts = pd.DatetimeIndex(ts_ns.view("datetime64[ns]"))
    families: dict[str, np.ndarray] = {}
    families.update(earnings_features(data["earnings_usd"]))
    usage = {key: data[key] for key, _ in RESOURCE_TOTAL_KEYS.values()}
    families.update(resource_features(usage, data["allocation"], predictor.config.host_totals))
    families.update(health_features(data["connection_failures"]))
    start = max(n - L, 0)
    calendar = calendar_features(ts[start:], predictor.config.timezone)
    features = np.full((n, len(predictor.feature_columns)), np.nan)
    for j, name in enumerate(predictor.feature_columns):
        features[start:, j] = calendar[name] if name in calendar else families[name][start:]
    if "allocation" in predictor.feature_columns:  # the whole allocation history: the base's lags need it
        features[:, predictor.feature_columns.index("allocation")] = families["allocation"]
    arrays = HistoryArrays(ts, features, data["earnings_usd"])
    window, tail = predictor._origin_inputs(arrays, n - 1)
    path = None if allocation_path is None else predictor.resolve_allocation_path(window, allocation_path)
    atail = predictor._allocation_tail(arrays, n - 1)
    return ForecastOrigin(window, tail, pd.Timestamp(ts[-1]), path, atail)


def next_earnings_rows(history: np.ndarray, cursor: int, previous_ema: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`earnopt_assets.forecasting.predictor.next_earnings_row` for every row of ``history`` (n, T).

    Same formulas on the 25-hour tail ending at column ``cursor``: trailing means as cumulative-sum
    differences over 6 and 24 hours, population std sqrt(max(E[x^2] - E[x]^2, 0)), rate of change
    (e_t - e_{t-1}) / ((|e_t| + |e_{t-1}|) / 2 + eps), EMA m_t = a e_t + (1 - a) m_{t-1}, a = 2 / (12 + 1).
    """
    tail = history[:, cursor - 24 : cursor + 1]
    e = tail[:, -1]
    prev = tail[:, -2]
    alpha = 2.0 / (EMA_SPAN + 1.0)
    last24 = tail[:, -24:]
    mean24 = np.cumsum(last24, axis=1)[:, -1] / 24.0
    mean_sq24 = np.cumsum(last24 * last24, axis=1)[:, -1] / 24.0
    return {
        "earnings_usd": e.copy(),
        "lag_1": prev.copy(),
        "lag_2": tail[:, -3].copy(),
        "lag_24": tail[:, 0].copy(),
        "lag_168": history[:, cursor - 168].copy(),
        "ma_1h": e.copy(),
        "ma_6h": np.cumsum(tail[:, -6:], axis=1)[:, -1] / 6.0,
        "ma_24h": mean24,
        "ema_12": alpha * e + (1.0 - alpha) * np.asarray(previous_ema, dtype=float),
        "roc_1": (e - prev) / ((np.abs(e) + np.abs(prev)) / 2.0 + ROC_EPS),
        "volatility_24h": np.sqrt(np.clip(mean_sq24 - mean24 * mean24, 0.0, None)),
    }


class BatchedForecaster:
    """Runs :meth:`EarningsPredictor.predict_next_24h`'s recursion for many origins of one model at once.

    The network is called through one XLA-compiled concrete function per bucket size in
    :data:`BATCH_BUCKETS` (fixed shapes: no retracing); a batch is padded up to the next bucket, and a
    batch larger than the biggest bucket is cut into chunks. Thread-safe to call; calls are serialised
    per forecaster (one model's batches never interleave).
    """

    def __init__(self, predictor: EarningsPredictor, buckets: Sequence[int] = BATCH_BUCKETS) -> None:
        predictor._require_fitted()
        if not buckets or min(buckets) < 1:
            raise ValueError("buckets must be positive batch sizes")
        self.predictor = predictor
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self._calls: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def _call(self, bucket: int) -> Callable[[np.ndarray], np.ndarray]:
        call = self._calls.get(bucket)
        if call is None:
            import tensorflow as tf

            model = self.predictor.model
            spec = tf.TensorSpec(shape=(bucket, self.predictor.sequence_length, self.predictor.n_channels), dtype=tf.float32)

            @tf.function(input_signature=[spec], jit_compile=True)
            @tf.autograph.experimental.do_not_convert
            def forward(x):
                return model(x, training=False)

            concrete = forward.get_concrete_function()
            call = self._calls[bucket] = lambda x: concrete(tf.constant(x)).numpy()
        return call

    def warm_up(self) -> None:
        """Compile every bucket now (at model load), so no request pays for tracing."""
        shape = (self.predictor.sequence_length, self.predictor.n_channels)
        for bucket in self.buckets:
            self._call(bucket)(np.zeros((bucket, *shape), dtype=np.float32))

    def network(self, x: np.ndarray) -> np.ndarray:
        """Scaled residual output (n,) for scaled windows ``x`` (n, L, C), padded to a bucket size."""
        n = len(x)
        bucket = next(b for b in self.buckets if b >= n)
        if bucket != n:
            padded = np.zeros((bucket, *x.shape[1:]), dtype=np.float32)
            padded[:n] = x
            x = padded
        return self._call(bucket)(x)[:n, 0]

    def forecast(self, origins: Sequence[ForecastOrigin], horizon: int = HORIZON_HOURS) -> np.ndarray:
        """Forecasts (n, horizon) for ``origins``, row i equal to ``predict_next_24h`` of origin i."""
        if not origins:
            return np.empty((0, horizon))
        with self._lock:
            parts = [
                self._forecast_chunk(origins[start : start + self.max_batch], horizon)
                for start in range(0, len(origins), self.max_batch)
            ]
        return np.concatenate(parts)

    def _forecast_chunk(self, origins: Sequence[ForecastOrigin], horizon: int) -> np.ndarray:
        p = self.predictor
        n = len(origins)
        idx = p._index
        money = p._money_index()
        mean, inv_scale = p.feature_scaler.mean_, 1.0 / p.feature_scaler.scale_
        t_mean, t_scale = float(p.target_scaler.mean_[0]), float(p.target_scaler.scale_[0])
        gain = float(p.config.residual_gain)
        ma_col = idx["ma_24h"]
        alloc_col = idx.get("allocation")
        floor = float(p.config.level_floor)
        earnings_cols = [(idx[c], c) for c in EARNINGS_FEATURES if c in idx]
        ema_col = idx.get("ema_12")

        # Calendar and season of every origin's future hours in one call each (the pandas part).
        offsets = pd.to_timedelta(np.arange(1, horizon + 2), unit="h")
        future = pd.DatetimeIndex(np.concatenate([(o.origin_ts + offsets).as_unit("ns").asi8 for o in origins]).view("datetime64[ns]"))  # t+1 .. t+horizon+1 per origin
        grid = np.arange(n * (horizon + 1)).reshape(n, horizon + 1)
        targets = grid[:, :horizon].ravel()
        calendar = calendar_features(future[targets], p.config.timezone)
        calendar_cols = [(idx[c], values.reshape(n, horizon)) for c, values in calendar.items() if c in idx]
        season_all = p._season(future).reshape(n, horizon + 1)  # profile at t+1 .. t+horizon+1
        season_target = season_all[:, :horizon]  # p(cell_{t+h})
        season_after = p._season(future + pd.Timedelta(hours=1)).reshape(n, horizon + 1)[:, :horizon]

        W = np.stack([o.window for o in origins]).astype(float)
        tail_len = len(origins[0].tail)
        history = np.empty((n, tail_len + horizon))
        history[:, :tail_len] = np.stack([o.tail for o in origins])
        cursor = tail_len - 1
        out = np.empty((n, horizon))
        paths = np.stack(
            [
                o.allocation_path[:horizon] if o.allocation_path is not None else p.resolve_allocation_path(o.window, None, horizon)
                for o in origins
            ]
        )
        atails = np.stack(
            [o.allocation_tail if o.allocation_tail is not None else np.full(tail_len, o.window[-1, alloc_col] if alloc_col is not None else np.nan) for o in origins]
        )
        base_path = p.base_paths(W, history[:, :tail_len], season_target, paths, atails)
        divisor = np.ones((n, 1, p.n_channels))
        for h in range(horizon):
            level = np.maximum(W[:, -1, ma_col], floor)
            divisor[:, 0, money] = level[:, None]
            x = ((W / divisor - mean) * inv_scale).astype(np.float32)
            residual = gain * self.network(x).astype(float) * t_scale + t_mean
            value = base_path[:, h] + residual * level
            value = np.where(np.isfinite(value) & (value >= 0), value, 0.0)
            out[:, h] = value
            cursor += 1
            history[:, cursor] = value
            previous_ema = W[:, -1, ema_col] if ema_col is not None else np.full(n, np.nan)
            recomputed = next_earnings_rows(history, cursor, previous_ema)
            row = W[:, -1].copy()  # resource and health features persist from the last observed hour
            for col, name in earnings_cols:
                row[:, col] = recomputed[name]
            for col, values in calendar_cols:
                row[:, col] = values[:, h]
            if alloc_col is not None:
                row[:, alloc_col] = paths[:, h]
            row[:, idx["next_lag_24"]] = history[:, cursor + 1 - 24]
            row[:, idx["next_lag_168"]] = history[:, cursor + 1 - 168]
            row[:, idx["next_season"]] = season_after[:, h]
            W[:, :-1] = W[:, 1:]
            W[:, -1] = row
        return out


def predict_many(
    predictor: EarningsPredictor,
    frames: Sequence[pd.DataFrame],
    allocation_paths: Sequence[Sequence[float] | float | np.ndarray | None] | None = None,
) -> np.ndarray:
    """Convenience: ``predict_next_24h(frame, path)`` of each frame, computed as one batch (n, 24)."""
    forecaster = BatchedForecaster(predictor)
    paths = list(allocation_paths) if allocation_paths is not None else [None] * len(frames)
    if len(paths) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(paths)} allocation paths")
    return forecaster.forecast([prepare_origin(predictor, frame, path) for frame, path in zip(frames, paths)])
