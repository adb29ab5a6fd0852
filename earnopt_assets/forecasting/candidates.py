"""Statistical forecast candidates and the one interface every forecaster (statistical or LSTM) implements.

A forecaster is a function of an :class:`OriginContext` (everything known at the forecast origin ``t``:
the hourly history up to and including ``t``) returning the point forecast of hours ``t+1 .. t+H``
(``H = 24``), never negative, never NaN. The rolling-origin harness (:mod:`.harness`) scores all of them
on the same origins with the same information.

Candidates (``e`` = earnings, ``a`` = allocation share, ``h = 1..H``):

* ``seasonal_naive_24`` / ``seasonal_naive_168``: ``f_{t+h} = e_{t+h-s}`` with ``s = 24`` / ``168``
  (:func:`earnopt_assets.numerics.baselines.seasonal_naive`). Missing hours of the history are first
  filled by linear interpolation in time (leading gaps take the first observed value).
* ``seasonal_naive_24_alloc`` / ``seasonal_naive_168_alloc`` (only with ``allocation_beta``): the same lag
  moved from the allocation it was observed at to the target hour's, exactly as the model's base does:
  ``f_{t+h} = e_{t+h-s} * (clip(a_{t+h}) / clip(a_{t+h-s}))**beta`` with shares clipped to
  ``[ALLOCATION_FLOOR, 1]``. ``a_{t+h}`` is ``planned_allocation[h-1]`` in the allocation-conditional
  diagnostic and otherwise the allocation held at the origin (last finite ``a``).
* ``mstl``: statsforecast's MSTL with seasons 24 and 168 (daily and weekly; only 24 when the window holds
  fewer than two weeks) and an AutoETS (non-seasonal, model ``ZZN``) forecaster of the trend, fitted on
  the last ``MSTL_WINDOW_HOURS`` (8 weeks) of the history.
* ``ets``: statsforecast's AutoETS with season 24 and an additive seasonal component (model ``ZZA``:
  error and trend chosen by AICc), fitted on the last ``ETS_WINDOW_HOURS`` (4 weeks). The seasonal
  component is forced because the unrestricted search picks a flat ``ETS(A,N,N)`` on smooth series with
  a weekly swing (the level tracks the swing better than 23 extra seasonal states pay for in AICc).

The statistical fits use a capped recent window so one origin costs well under a second; both outputs are
clipped to ``>= 0``. A candidate that cannot run on the history it is given raises
:class:`InsufficientHistory` (a ``ValueError``) so the harness can mark it unavailable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.numerics.baselines import seasonal_naive

HORIZON_HOURS = 24
DAY_HOURS = 24
WEEK_HOURS = 168
# Same floor as the model's base: a protocol switched (almost) off must not make (a / a_ref)**beta explode.
ALLOCATION_FLOOR = 0.02
MSTL_WINDOW_HOURS = 8 * WEEK_HOURS
ETS_WINDOW_HOURS = 4 * WEEK_HOURS

STATISTICAL_NAMES: tuple[str, ...] = ("seasonal_naive_24", "seasonal_naive_168", "mstl", "ets")
ALLOCATION_NAMES: tuple[str, ...] = ("seasonal_naive_24_alloc", "seasonal_naive_168_alloc")


class InsufficientHistory(ValueError):
    """The candidate cannot forecast from this history (too short, or no observed value at all)."""


@dataclass(frozen=True, eq=False)
class OriginContext:
    """Everything known at a forecast origin: history up to and including the origin hour.

    ``ts`` is a contiguous hourly grid (datetime64, UTC-naive); ``earnings`` has NaN for missing hours;
    ``allocation`` is the share in force each hour. ``planned_allocation`` (``(horizon,)``) is set ONLY by
    the allocation-conditional diagnostic; the headline leaves it None = allocation held at the origin.
    """

    ts: np.ndarray
    earnings: np.ndarray
    allocation: np.ndarray
    horizon: int = HORIZON_HOURS
    planned_allocation: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ts)
        if len(self.earnings) != n or len(self.allocation) != n:
            raise ValueError(f"ts, earnings and allocation need the same length, got {n}, {len(self.earnings)}, {len(self.allocation)}")
        if n == 0:
            raise InsufficientHistory("empty history")
        if self.planned_allocation is not None and np.shape(self.planned_allocation) != (self.horizon,):
            raise ValueError(f"planned_allocation needs shape ({self.horizon},), got {np.shape(self.planned_allocation)}")

    @property
    def origin_ts(self) -> np.datetime64:
        """The origin hour (last hour of the history)."""
        return self.ts[-1]

    @property
    def target_ts(self) -> np.ndarray:
        """The ``horizon`` forecast hours after the origin."""
        return self.ts[-1] + np.arange(1, self.horizon + 1) * np.timedelta64(1, "h")

    @property
    def held_allocation(self) -> float:
        """The last finite allocation share of the history (NaN when none is known)."""
        a = np.asarray(self.allocation, dtype=float)
        finite = np.flatnonzero(np.isfinite(a))
        return float(a[finite[-1]]) if len(finite) else float("nan")

    def target_allocation(self) -> np.ndarray:
        """Allocation of each forecast hour: the planned path if given (diagnostic), else held at the origin."""
        if self.planned_allocation is not None:
            return np.asarray(self.planned_allocation, dtype=float)
        return np.full(self.horizon, self.held_allocation)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, earnings: str = "earnings_usd", allocation: str = "allocation", horizon: int = HORIZON_HOURS) -> OriginContext:
        """Context at the last hour of a one-series frame (``ts`` + value columns), reindexed onto the
        contiguous hourly grid (missing hours NaN). Without an allocation column the share is 1."""
        data = frame.sort_values("ts").drop_duplicates("ts", keep="last").set_index("ts")
        grid = pd.date_range(data.index.min(), data.index.max(), freq="h")
        data = data.reindex(grid)
        alloc = data[allocation].to_numpy(dtype=float) if allocation in data else np.ones(len(data))
        return cls(ts=grid.to_numpy(dtype="datetime64[ns]"), earnings=data[earnings].to_numpy(dtype=float), allocation=alloc, horizon=horizon)


Forecaster = Callable[[OriginContext], np.ndarray]


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over missing (non-finite) hours; leading/trailing gaps take the nearest
    observed value. Raises :class:`InsufficientHistory` when nothing is observed."""
    v = np.asarray(values, dtype=float)
    known = np.isfinite(v)
    if not known.any():
        raise InsufficientHistory("no observed value in the history")
    if known.all():
        return v.copy()
    idx = np.arange(len(v))
    return np.interp(idx, idx[known], v[known])


def _clip(forecast: np.ndarray) -> np.ndarray:
    out = np.nan_to_num(np.asarray(forecast, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out, 0.0, None)


def _check_lag_history(ctx: OriginContext, season: int) -> None:
    if season < ctx.horizon:
        raise InsufficientHistory(f"season {season} is shorter than the horizon {ctx.horizon}")
    if len(ctx.earnings) < season:
        raise InsufficientHistory(f"seasonal naive {season} needs {season} hours of history, got {len(ctx.earnings)}")


def seasonal_naive_forecaster(season: int) -> Forecaster:
    """``f_{t+h} = e_{t+h-season}`` on the gap-filled history."""

    def forecast(ctx: OriginContext) -> np.ndarray:
        _check_lag_history(ctx, season)
        tail = fill_gaps(ctx.earnings[-season:])
        return _clip(seasonal_naive(tail, season, ctx.horizon))

    forecast.__name__ = f"seasonal_naive_{season}"
    return forecast


def allocation_scale(target: np.ndarray, reference: np.ndarray, beta: float) -> np.ndarray:
    """``(clip(a_target) / clip(a_ref))**beta``, shares clipped to ``[ALLOCATION_FLOOR, 1]``; 1 where
    either share is unknown."""
    target = np.asarray(target, dtype=float)
    reference = np.asarray(reference, dtype=float)
    ratio = np.clip(target, ALLOCATION_FLOOR, 1.0) / np.clip(reference, ALLOCATION_FLOOR, 1.0)
    scale = np.power(ratio, float(beta))
    return np.where(np.isfinite(scale), scale, 1.0)


def allocation_seasonal_naive_forecaster(season: int, beta: float) -> Forecaster:
    """``f_{t+h} = e_{t+h-s} (clip(a_{t+h}) / clip(a_{t+h-s}))**beta`` (see the module docstring)."""

    def forecast(ctx: OriginContext) -> np.ndarray:
        _check_lag_history(ctx, season)
        tail = fill_gaps(ctx.earnings[-season:])
        lag_values = seasonal_naive(tail, season, ctx.horizon)
        alloc = np.asarray(ctx.allocation[-season:], dtype=float)
        lag_alloc = alloc[: ctx.horizon]  # a_{t+h-s} for h = 1..H
        return _clip(lag_values * allocation_scale(ctx.target_allocation(), lag_alloc, beta))

    forecast.__name__ = f"seasonal_naive_{season}_alloc"
    return forecast


def _window(ctx: OriginContext, hours: int, minimum: int, name: str) -> np.ndarray:
    y = np.asarray(ctx.earnings[-hours:], dtype=float)
    if np.isfinite(y).sum() < minimum or len(y) < minimum:
        raise InsufficientHistory(f"{name} needs at least {minimum} observed hours, got {int(np.isfinite(y).sum())}")
    return fill_gaps(y)


def mstl_forecast(ctx: OriginContext, window_hours: int = MSTL_WINDOW_HOURS) -> np.ndarray:
    """MSTL(24, 168) + AutoETS(ZZN) trend on the last ``window_hours`` (seasons shortened on short history)."""
    from statsforecast.models import MSTL, AutoETS

    y = _window(ctx, window_hours, 2 * DAY_HOURS + 1, "mstl")
    seasons = [s for s in (DAY_HOURS, WEEK_HOURS) if len(y) >= 2 * s + 1]
    if float(np.ptp(y)) == 0.0:
        return _clip(np.full(ctx.horizon, y[-1]))
    model = MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN"))
    return _clip(model.forecast(y=y, h=ctx.horizon)["mean"])


def ets_forecast(ctx: OriginContext, window_hours: int = ETS_WINDOW_HOURS) -> np.ndarray:
    """AutoETS (``ZZA``, season 24) on the last ``window_hours``."""
    from statsforecast.models import AutoETS

    y = _window(ctx, window_hours, 2 * DAY_HOURS + 1, "ets")
    if float(np.ptp(y)) == 0.0:
        return _clip(np.full(ctx.horizon, y[-1]))
    return _clip(AutoETS(season_length=DAY_HOURS, model="ZZA").forecast(y=y, h=ctx.horizon)["mean"])


def frozen_ets_forecast(ctx: OriginContext, ets: Any, beta: float | None = None, window_hours: int = ETS_WINDOW_HOURS) -> np.ndarray:
    """The ``ets`` peer with its smoothing parameters fitted once at training (a
    :class:`~earnopt_assets.forecasting.model.ets.FrozenETS`, the model base's): the same state recursion
    over the last ``window_hours`` (at least one week) of the gap-filled history, one matrix product
    instead of a refit. With ``beta`` it reads earnings moved to allocation 1, ``e / clip(a)**beta`` (as the
    base it was fitted for does), and moves the forecast back at the target hours' shares."""
    from earnopt_assets.forecasting.model.base import allocation_factor
    from earnopt_assets.forecasting.model.ets import INIT_HOURS

    hours = min(window_hours, len(ctx.earnings))
    y = _window(ctx, hours, INIT_HOURS, "ets")
    if beta is None:
        return _clip(ets.forecast(y, ctx.horizon))
    z = y / allocation_factor(np.asarray(ctx.allocation[-hours:], dtype=float), beta)
    return _clip(ets.forecast(z, ctx.horizon) * allocation_factor(ctx.target_allocation(), beta))


def frozen_ets_forecaster(ets: Any) -> Forecaster:
    """``ets_frozen``: :func:`frozen_ets_forecast` with the parameters ``ets`` (no allocation scaling), the
    function an ``ets`` answer of the service and the 15-minute path applies."""

    def forecast(ctx: OriginContext) -> np.ndarray:
        return frozen_ets_forecast(ctx, ets)

    forecast.__name__ = "ets_frozen"
    return forecast


def statistical_candidates(*, allocation_beta: float | None = None, frozen_ets: Any = None) -> dict[str, Forecaster]:
    """The statistical peers every LSTM is scored against (names in :data:`STATISTICAL_NAMES`, plus the
    allocation-scaled seasonal naive ones of :data:`ALLOCATION_NAMES` when ``allocation_beta`` is given, and
    ``ets_frozen`` (:func:`frozen_ets_forecaster`) when ``frozen_ets`` parameters are given)."""
    out: dict[str, Forecaster] = {
        "seasonal_naive_24": seasonal_naive_forecaster(DAY_HOURS),
        "seasonal_naive_168": seasonal_naive_forecaster(WEEK_HOURS),
        "mstl": mstl_forecast,
        "ets": ets_forecast,
    }
    if allocation_beta is not None and np.isfinite(allocation_beta):
        out["seasonal_naive_24_alloc"] = allocation_seasonal_naive_forecaster(DAY_HOURS, float(allocation_beta))
        out["seasonal_naive_168_alloc"] = allocation_seasonal_naive_forecaster(WEEK_HOURS, float(allocation_beta))
    if frozen_ets is not None:
        out["ets_frozen"] = frozen_ets_forecaster(frozen_ets)
    return out
