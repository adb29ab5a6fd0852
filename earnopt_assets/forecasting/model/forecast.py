"""Network inputs, training samples and the NumPy forecast loop (direct 24-output head or recursive).

Per origin ``t`` (z = allocation-normalised earnings, causally filled; b = the statistical base of
:mod:`.base`; ``scale_t = max(mean(z_{t-167..t}), floor)``, floor = 5 % of the training mean):

* window rows s = t-L+1 .. t, channels (before standardisation with the training mean/std):
  ``z_s / scale_t``; r_s = log((z_s + eps_t) / (b_{s|s-1} + eps_t)), eps_t = 0.1 scale_t (the base's own
  one-step relative error, i.e. what the correction can learn from); ``v_s / scale_t`` with v_s = z_{s+24} when s + 24 <= t, else the
  base forecast b_{s+24|t} (so the window carries the base path the correction applies to); local
  hour-of-day and day-of-week as sin/cos; the allocation share a_s.
* target (direct head): ``y_h = (q_h - mu) / sigma``, q_h = clip(log((z_{t+h} + eps_t) / (b_{t+h|t} + eps_t)),
  -3, 3) for h = 1..24 (a RELATIVE correction: MAPE is relative and nights are near zero), mu/sigma of
  the training targets; the recursive head learns h = 1 only.
* forecast: ``z^_{t+h} = max(0, (b_{t+h|t} + eps_t) * exp(g * (mu + sigma * f(x)_h)) - eps_t)`` and
  ``e^_{t+h} = z^_{t+h} * clip(a_{t+h})**beta`` with a_{t+h} the planned share (default: held at a_t).
  g is the blend weight chosen on validation. The recursive head runs 24 one-step forecasts, appending
  each z^ to the history and recomputing the base and the window from it.
* combination with a simple statistical forecast ``s_{t+h}``: ``z~_{t+h} = (1 - c) * z^_{t+h} + c * s_{t+h}``,
  ``s`` = ``last_week`` (``z_{t+h-168}``), ``median_4_weeks`` (``median_{k=1..4} z_{t+h-168k}``, robust
  to one unusual week) or ``ets`` (the frozen exponential smoothing of :mod:`.ets`, when the base has
  one), the kind and ``c`` (``naive_weight``) chosen together on the validation origins
  (``z_{t+h-24}`` is not offered: it is already one of the base's NNLS components)
  after ``g`` (``c = 0``: the model alone). Averaging a model with simple seasonal forecasts is a classic
  robust combination: a level-adjusted base over-extrapolates short level shifts (holidays, outages).

Training samples and forecasts use the SAME functions: training gathers windows from the one long
series at many origins, forecasting from per-origin tails of :data:`TAIL_HOURS` (enough for every lag
the base and the window read), so both see identical numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earnopt_assets.forecasting.model.base import (
    ALLOCATION_FLOOR,
    FULL_BASE_HISTORY,
    HORIZON_HOURS,
    MIN_BASE_HISTORY,
    StatisticalBase,
    _gather,
    allocation_factor,
    components,
    ets_path,
    median_of,
)
from earnopt_assets.forecasting.model.ets import FrozenETS

CHANNELS: tuple[str, ...] = ("z", "base_error", "next_day", "hour_sin", "hour_cos", "dow_sin", "dow_cos", "allocation")
SCALE_HOURS = 168
LEVEL_FLOOR_FRACTION = 0.05
# Relative corrections: log((z + eps) / (b + eps)) with eps = EPS_FRACTION * scale_t keeps near-zero
# night hours from dominating (MAPE is relative; an additive correction of the level's size at a
# 0.1-level hour is a 1000 % error).
EPS_FRACTION = 0.1
LOG_RATIO_CLIP = 3.0


def log_ratio(z: np.ndarray, b: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return np.clip(np.log((np.maximum(z, 0.0) + eps) / (np.maximum(b, 0.0) + eps)), -LOG_RATIO_CLIP, LOG_RATIO_CLIP)


def apply_ratio(b: np.ndarray, correction: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return np.maximum((b + eps) * np.exp(np.clip(correction, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)) - eps, 0.0)


def tail_hours(sequence_length: int) -> int:
    """History a forecast reads at most: the base's 4 weeks behind the first window row's one-step base."""
    return FULL_BASE_HISTORY + sequence_length + 1


def min_history_hours(sequence_length: int) -> int:
    """History a forecast needs at least: one week of lags behind the window."""
    return MIN_BASE_HISTORY + sequence_length


@dataclass
class FittedState:
    """Everything fitted besides the network weights (saved as ``state.json``)."""

    base: StatisticalBase
    allocation_beta: float | None
    level_floor: float
    channel_mean: np.ndarray
    channel_std: np.ndarray
    target_mean: float
    target_std: float
    blend: float = 1.0
    allocation_response: dict[str, Any] | None = None
    naive_weight: float = 0.0  # c of the combination with a seasonal naive forecast (module docstring); 0 in older versions
    naive_kind: str = "last_week"  # which one: a key of COMBINATION_KINDS
    validation_scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base.to_json(),
            "allocation_beta": self.allocation_beta,
            "allocation_response": self.allocation_response,
            "level_floor": self.level_floor,
            "channels": list(CHANNELS),
            "channel_mean": self.channel_mean.tolist(),
            "channel_std": self.channel_std.tolist(),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "blend": self.blend,
            "naive_weight": self.naive_weight,
            "naive_kind": self.naive_kind,
            "validation_scores": self.validation_scores,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FittedState:
        if list(data.get("channels", [])) != list(CHANNELS):
            raise ValueError(f"channels {data.get('channels')} differ from this code's {list(CHANNELS)}")
        mean = np.asarray(data["channel_mean"], dtype=float)
        std = np.asarray(data["channel_std"], dtype=float)
        if mean.shape != (len(CHANNELS),) or std.shape != mean.shape or not (std > 0).all():
            raise ValueError("channel scaler has the wrong shape or a non-positive std")
        beta = data.get("allocation_beta")
        if beta is not None and not 0.0 < float(beta) <= 1.0:
            raise ValueError(f"allocation_beta {beta} is not in (0, 1]")
        blend = float(data["blend"])
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend {blend} is not in [0, 1]")
        naive_weight = float(data.get("naive_weight", 0.0))
        if not 0.0 <= naive_weight <= 1.0:
            raise ValueError(f"naive_weight {naive_weight} is not in [0, 1]")
        naive_kind = str(data.get("naive_kind", "last_week"))
        if naive_kind not in COMBINATION_KINDS:
            raise ValueError(f"naive_kind {naive_kind!r} is not one of {COMBINATION_KINDS}")
        base = StatisticalBase.from_json(data["base"])
        if naive_kind == "ets" and base.ets is None:
            raise ValueError("naive_kind 'ets' needs the base's ETS parameters, which are missing")
        return cls(
            base=base,
            allocation_beta=None if beta is None else float(beta),
            level_floor=float(data["level_floor"]),
            channel_mean=mean,
            channel_std=std,
            target_mean=float(data["target_mean"]),
            target_std=float(data["target_std"]),
            blend=blend,
            naive_weight=naive_weight,
            naive_kind=naive_kind,
            allocation_response=data.get("allocation_response"),
            validation_scores={str(k): float(v) for k, v in (data.get("validation_scores") or {}).items()},
        )


def calendar_channels(epoch_hours: np.ndarray, timezone: str) -> np.ndarray:
    """(..., 4) local hour-of-day and day-of-week as sin/cos of UTC epoch hours."""
    epoch_hours = np.asarray(epoch_hours, dtype=np.int64)
    if timezone in ("UTC", "Etc/UTC", "utc"):
        hour = epoch_hours % 24
        dow = (epoch_hours // 24 + 3) % 7  # 1970-01-01 was a Thursday (pandas dayofweek 3)
    else:
        import pandas as pd

        unique, inverse = np.unique(epoch_hours.ravel(), return_inverse=True)
        local = pd.DatetimeIndex((unique * 3_600_000_000_000).astype("datetime64[ns]")).tz_localize("UTC").tz_convert(timezone)
        hour = local.hour.to_numpy()[inverse].reshape(epoch_hours.shape)
        dow = local.dayofweek.to_numpy()[inverse].reshape(epoch_hours.shape)
    two_pi = 2.0 * np.pi
    return np.stack(
        [np.sin(two_pi * hour / 24.0), np.cos(two_pi * hour / 24.0), np.sin(two_pi * dow / 7.0), np.cos(two_pi * dow / 7.0)], axis=-1
    )


def origin_scale(Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, floor: float) -> np.ndarray:
    recent = _gather(Z, rows[:, None], origins[:, None] - np.arange(SCALE_HOURS)[None, :])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(recent), recent, np.nan), axis=1)
    return np.maximum(np.nan_to_num(mean, nan=floor), floor)


def one_step_errors(Z: np.ndarray, base: StatisticalBase, rows: np.ndarray, hours: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """r_s = log((z_s + eps) / (b_{s|s-1} + eps)) for the given (row, hour) pairs (any shape, eps broadcast)."""
    shape = hours.shape
    flat_rows, flat_hours = rows.reshape(-1), hours.reshape(-1)
    predicted = base.predict(Z, flat_rows, flat_hours - 1, horizon=1)[:, 0].reshape(shape)
    return log_ratio(np.nan_to_num(_gather(Z, flat_rows, flat_hours).reshape(shape)), predicted, eps)


def raw_windows(
    Z: np.ndarray,
    A: np.ndarray,
    E: np.ndarray,
    rows: np.ndarray,
    origins: np.ndarray,
    base_path: np.ndarray,
    scale: np.ndarray,
    base: StatisticalBase,
    sequence_length: int,
    timezone: str,
    one_step_base: np.ndarray | None = None,
) -> np.ndarray:
    """Unstandardised windows (n, L, len(CHANNELS)); see the module docstring for each channel.

    ``one_step_base`` (m, T): b_{s|s-1} of every column of ``Z`` when already computed (one long series:
    computed once instead of once per window row)."""
    L = sequence_length
    offsets = np.arange(-L + 1, 1)[None, :]
    hours = origins[:, None] + offsets  # (n, L)
    r2 = rows[:, None]
    out = np.empty((len(origins), L, len(CHANNELS)))
    z_window = _gather(Z, r2, hours)
    out[..., 0] = z_window / scale[:, None]
    eps = EPS_FRACTION * scale[:, None]
    if one_step_base is None:
        out[..., 1] = one_step_errors(Z, base, np.broadcast_to(r2, hours.shape), hours, eps)
    else:
        out[..., 1] = log_ratio(np.nan_to_num(z_window), np.nan_to_num(_gather(one_step_base, r2, hours)), eps)
    ahead = hours + 24
    known = ahead <= origins[:, None]
    future_step = np.clip(ahead - origins[:, None], 1, HORIZON_HOURS) - 1
    future = np.take_along_axis(base_path, future_step, axis=1)
    out[..., 2] = np.where(known, _gather(Z, r2, np.minimum(ahead, origins[:, None])), future) / scale[:, None]
    out[..., 3:7] = calendar_channels(_gather(E, r2, hours).astype(np.int64), timezone)
    out[..., 7] = np.clip(_gather(A, r2, hours), ALLOCATION_FLOOR, 1.0)
    return np.nan_to_num(out, nan=0.0)


def standardise(X: np.ndarray, state: FittedState) -> np.ndarray:
    return (X - state.channel_mean) / state.channel_std


@dataclass
class Tails:
    """Per-origin history tails (n, T) ending at each origin: causally filled z, allocation, epoch hour."""

    Z: np.ndarray
    A: np.ndarray
    E: np.ndarray

    @property
    def origins(self) -> np.ndarray:
        return np.full(self.Z.shape[0], self.Z.shape[1] - 1, dtype=np.int64)


def forecast_z(
    tails: Tails,
    state: FittedState,
    network: Callable[[np.ndarray], np.ndarray] | None,
    *,
    head: str,
    sequence_length: int,
    timezone: str,
    future_allocation: np.ndarray,
    blend: float | None = None,
    naive_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(base z path, model z path), both (n, 24), for every tail; ``network`` None = base only (still
    combined with the seasonal naive by ``naive_weight``, default the fitted one)."""
    g = state.blend if blend is None else float(blend)
    c = state.naive_weight if naive_weight is None else float(naive_weight)
    n, T = tails.Z.shape
    rows = np.arange(n)
    origins = tails.origins
    base_path = state.base.predict(tails.Z, rows, origins)
    kind, ets = state.naive_kind, state.base.ets
    if network is None or g == 0.0:
        return base_path, combine_with_seasonal_naive(base_path, tails, c, kind, ets)
    if head == "direct":
        base_path, correction, eps = direct_correction(tails, state, network, sequence_length=sequence_length, timezone=timezone)
        return base_path, combine_with_seasonal_naive(apply_ratio(base_path, g * correction, eps), tails, c, kind, ets)
    # recursive: one step at a time, each prediction appended to the history
    Z = np.concatenate([tails.Z, np.full((n, HORIZON_HOURS), np.nan)], axis=1)
    A = np.concatenate([tails.A, np.clip(future_allocation, ALLOCATION_FLOOR, 1.0)], axis=1)
    E = np.concatenate([tails.E, tails.E[:, -1:] + np.arange(1, HORIZON_HOURS + 1)[None, :]], axis=1)
    predicted = np.empty((n, HORIZON_HOURS))
    for k in range(HORIZON_HOURS):
        o = np.full(n, T - 1 + k, dtype=np.int64)
        step_base = state.base.predict(Z, rows, o)
        scale = origin_scale(Z, rows, o, state.level_floor)
        X = raw_windows(Z, A, E, rows, o, step_base, scale, state.base, sequence_length, timezone)
        out = np.asarray(network(standardise(X, state)), dtype=float)[:, 0]
        value = apply_ratio(step_base[:, 0], g * (state.target_mean + state.target_std * out), EPS_FRACTION * scale)
        predicted[:, k] = value
        Z[:, T + k] = value
    return base_path, combine_with_seasonal_naive(predicted, tails, c, kind, ets)


SEASONAL_NAIVE_KINDS: tuple[str, ...] = ("last_week", "median_4_weeks")
# what the model may be combined with: the seasonal naive kinds and the frozen ETS (when fitted)
COMBINATION_KINDS: tuple[str, ...] = (*SEASONAL_NAIVE_KINDS, "ets")


def combination_path(tails: Tails, kind: str, ets: FrozenETS | None = None) -> np.ndarray:
    """(n, 24) partner forecast of the combination: :func:`seasonal_naive_path` or the frozen ETS (NaN
    where it cannot forecast)."""
    if kind == "ets":
        return ets_path(tails.Z, np.arange(tails.Z.shape[0]), tails.origins, HORIZON_HOURS, ets)
    return seasonal_naive_path(tails, kind)


def seasonal_naive_path(tails: Tails, kind: str = "last_week") -> np.ndarray:
    """(n, 24) seasonal naive forecast of h = 1..24 from each tail (causally filled, ends at the origin t):
    ``last_week`` = z_{t+h-168}; ``median_4_weeks`` = median over k = 1..4 of z_{t+h-168k} (weeks before
    the tail's start are NaN and skipped)."""
    T = tails.Z.shape[1]
    weeks = 1 if kind == "last_week" else 4
    lags = []
    for k in range(1, weeks + 1):
        start = T - 168 * k
        if start < 0:
            break
        lags.append(tails.Z[:, start : start + HORIZON_HOURS])
    if not lags:
        return np.full((tails.Z.shape[0], HORIZON_HOURS), np.nan)
    if weeks == 1:
        return lags[0]
    return median_of(np.stack(lags, axis=-1), len(lags))  # = np.nanmedian over the weeks, without its masked arrays


def combine_with_seasonal_naive(path: np.ndarray, tails: Tails, weight: float, kind: str = "last_week", ets: FrozenETS | None = None) -> np.ndarray:
    """``(1 - c) * path + c * s`` (c = ``weight``, s = :func:`combination_path` of ``kind``, floored at 0);
    where s is NaN the model's value stays."""
    if weight <= 0.0:
        return path.copy()
    naive = np.maximum(combination_path(tails, kind, ets), 0.0)
    return np.where(np.isfinite(naive), (1.0 - weight) * path + weight * naive, path)


def all_one_step_base(Z: np.ndarray, base: StatisticalBase) -> np.ndarray:
    """b_{s|s-1} for every column s >= 1 of every row of ``Z`` (NaN at s = 0)."""
    m, T = Z.shape
    out = np.full((m, T), np.nan)
    if T > 1:
        rows = np.repeat(np.arange(m), T - 1)
        hours = np.tile(np.arange(1, T), m)
        out[:, 1:] = base.predict(Z, rows, hours - 1, horizon=1)[:, 0].reshape(m, T - 1)
    return out


def direct_correction(
    tails: Tails, state: FittedState, network: Callable[[np.ndarray], np.ndarray], *, sequence_length: int, timezone: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base path, log-ratio correction (n, 24) before the blend weight, eps (n, 1)) of the direct head."""
    n = tails.Z.shape[0]
    rows = np.arange(n)
    origins = tails.origins
    base_path = state.base.predict(tails.Z, rows, origins)
    scale = origin_scale(tails.Z, rows, origins, state.level_floor)
    X = raw_windows(tails.Z, tails.A, tails.E, rows, origins, base_path, scale, state.base, sequence_length, timezone)
    correction = state.target_mean + state.target_std * np.asarray(network(standardise(X, state)), dtype=float)
    return base_path, correction, EPS_FRACTION * scale[:, None]


def build_tails(z_filled: np.ndarray, allocation: np.ndarray, epoch_hours: np.ndarray, origins: np.ndarray, length: int) -> Tails:
    """Tails of one long series at many origins (NaN before the series starts)."""
    index = origins[:, None] + np.arange(-length + 1, 1)[None, :]
    zero = np.zeros(len(origins), dtype=np.int64)[:, None]
    Z = _gather(z_filled[None, :], zero, index)
    A = _gather(allocation[None, :], zero, index)
    E = epoch_hours[origins][:, None] + np.arange(-length + 1, 1)[None, :]
    return Tails(Z, np.nan_to_num(A, nan=1.0), E)


def training_samples(
    z_filled: np.ndarray,
    z_raw: np.ndarray,
    allocation: np.ndarray,
    epoch_hours: np.ndarray,
    origins: np.ndarray,
    state: FittedState,
    sequence_length: int,
    timezone: str,
    outputs: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X raw (n, L, C), residual targets (n, outputs) in scale units, kept origins) of ``origins``.

    Inputs read only hours <= t (causally filled); targets are the RAW z of hours t+1..t+outputs, and an
    origin with a missing target hour is dropped.
    """
    Z = z_filled[None, :]
    A = np.nan_to_num(allocation, nan=1.0)[None, :]
    E = epoch_hours[None, :]
    rows = np.zeros(len(origins), dtype=np.int64)
    targets = _gather(z_raw[None, :], rows[:, None], origins[:, None] + np.arange(1, outputs + 1)[None, :])
    keep = np.isfinite(targets).all(axis=1)
    origins, rows, targets = origins[keep], rows[keep], targets[keep]
    base_path = state.base.predict(Z, rows, origins)
    scale = origin_scale(Z, rows, origins, state.level_floor)
    X = raw_windows(Z, A, E, rows, origins, base_path, scale, state.base, sequence_length, timezone, one_step_base=all_one_step_base(Z, state.base))
    Y = log_ratio(targets, base_path[:, :outputs], EPS_FRACTION * scale[:, None])
    return X, Y, origins


def base_components_at(z_filled: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS, ets: FrozenETS | None = None) -> np.ndarray:
    return components(z_filled[None, :], np.zeros(len(origins), dtype=np.int64), origins, horizon, ets)


def held_future_allocation(allocation_tail: np.ndarray, path: np.ndarray | None) -> np.ndarray:
    """(24,) future shares: ``path`` or the last finite share held."""
    if path is not None:
        return np.asarray(path, dtype=float)
    finite = allocation_tail[np.isfinite(allocation_tail)]
    return np.full(HORIZON_HOURS, float(finite[-1]) if len(finite) else 1.0)


def to_earnings(z_path: np.ndarray, future_allocation: np.ndarray, beta: float | None) -> np.ndarray:
    return np.maximum(z_path * allocation_factor(future_allocation, beta), 0.0)
