"""One rolling-origin harness for every forecast candidate (statistical peers and the LSTM alike).

Series: a contiguous hourly grid ``y_0 .. y_{n-1}`` (earnings, NaN = missing) with allocation shares
``a_0 .. a_{n-1}``. The holdout starts at index ``T`` (``holdout_start``).

* Origins: ``o = T-1, T-1+step, ...`` while ``o + H <= end - 1`` (``H = horizon``, ``end`` = ``holdout_end``
  or ``n``). At origin ``o`` a forecaster sees ONLY ``y_0..y_o`` and ``a_0..a_o`` (read-only copies, so it
  cannot reach the future through the array's base) and forecasts ``y_{o+1} .. y_{o+H}``.
* HEADLINE (``conditional=False``): ``planned_allocation`` is None for every candidate, i.e. the allocation
  is held at what was known at the origin. This is what a live forecast knows.
* DIAGNOSTIC (``conditional=True``): ``planned_allocation = a_{o+1..o+H}`` (the actual future allocation,
  earnopt's own control input). Label it as such wherever it is shown.

Scores per candidate over all (origin, step) pairs with an observed actual and a forecast:

* MAPE = (100/m) sum |a - f| / |a| over the m pairs with a != 0 (zero actuals skipped and counted)
* MASE = MAE / S, S = mean |y_t - y_{t-24}| over the in-sample hours t < T (both observed)
* MAE, RMSE; coverage_L = percent of actuals inside the level-L interval (when intervals are given)

A candidate that raises :class:`~earnopt_assets.forecasting.candidates.InsufficientHistory` at an origin
gets NaN there and is scored on the origins it could forecast (``n_origins`` says how many);
:meth:`HarnessResult.best` only ranks candidates that forecast EVERY origin, so all are compared on the
same hours.

:func:`score_with_calibrated_intervals` runs the harness twice: on a calibration window of origins just
before the holdout (residuals -> :class:`~earnopt_assets.forecasting.intervals.ConformalIntervals` per
candidate), then on the holdout with those intervals, so the reported coverage is out-of-sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.candidates import HORIZON_HOURS, Forecaster, InsufficientHistory, OriginContext
from earnopt_assets.forecasting.intervals import ConformalIntervals, level_key
from earnopt_assets.numerics.metrics import forecast_metrics, interval_coverage, mase, seasonal_naive_scale

BatchForecaster = Callable[[list[OriginContext]], np.ndarray]
MASE_SEASON = 24


def rolling_origins(n_hours: int, holdout_start: int, horizon: int = HORIZON_HOURS, step: int = 24, end: int | None = None) -> list[int]:
    """Origin indices ``o`` (history ``[0, o]``, targets ``(o, o + horizon]``) whose targets lie in
    ``[holdout_start, end)`` (``end`` defaults to ``n_hours``)."""
    end = n_hours if end is None else min(end, n_hours)
    if holdout_start < 1:
        raise ValueError(f"holdout_start must leave at least one history hour, got {holdout_start}")
    if step < 1 or horizon < 1:
        raise ValueError("step and horizon must be positive")
    return list(range(holdout_start - 1, end - horizon, step))


@dataclass
class CandidateScore:
    """Scores of one candidate over the harness origins (see the module docstring for the formulas)."""

    name: str
    mape_pct: float | None
    mase: float | None
    mae: float
    rmse: float
    coverage_80_pct: float | None
    coverage_95_pct: float | None
    n_origins: int
    n_zero_actuals_skipped: int
    residuals: np.ndarray
    predictions: np.ndarray
    bounds: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    unavailable_reason: str | None = None

    @property
    def ms_per_origin(self) -> float | None:
        return 1000.0 * self.seconds / self.n_origins if self.n_origins else None


@dataclass
class HarnessResult:
    scores: dict[str, CandidateScore]
    origins: list[int]
    actuals: np.ndarray
    conditional: bool = False
    mase_scale: float | None = None

    def complete(self, names=None) -> list[str]:
        """Candidates that forecast every origin (among ``names``)."""
        pool = list(self.scores) if names is None else [n for n in names if n in self.scores]
        return [n for n in pool if self.scores[n].n_origins == len(self.origins) and len(self.origins) > 0]

    def best(self, names=None) -> str:
        """Lowest MAPE among the complete candidates (ties and missing MAPE: MASE, then MAE)."""
        pool = self.complete(names)
        if not pool:
            raise ValueError("no candidate forecast every origin")

        def key(name: str):
            s = self.scores[name]
            inf = math.inf
            return (s.mape_pct if s.mape_pct is not None else inf, s.mase if s.mase is not None else inf, s.mae)

        return min(pool, key=key)

    def table(self) -> pd.DataFrame:
        """One row per candidate, units in the column names."""
        rows = []
        for name, s in self.scores.items():
            rows.append(
                {
                    "candidate": name,
                    "mape_%": s.mape_pct,
                    "mase": s.mase,
                    "mae_usd": s.mae if np.isfinite(s.mae) else None,
                    "rmse_usd": s.rmse if np.isfinite(s.rmse) else None,
                    "coverage_80_%": s.coverage_80_pct,
                    "coverage_95_%": s.coverage_95_pct,
                    "origins": s.n_origins,
                    "zero_actuals_skipped": s.n_zero_actuals_skipped,
                    "ms_per_origin": s.ms_per_origin,
                }
            )
        return pd.DataFrame(rows)


def _readonly(values: np.ndarray) -> np.ndarray:
    out = np.array(values, copy=True)
    out.setflags(write=False)
    return out


def origin_contexts(ts, earnings, allocation, origins: list[int], *, horizon: int = HORIZON_HOURS, conditional: bool = False) -> list[OriginContext]:
    """The :class:`OriginContext` of each origin: copies of the history ``[0, o]`` and, only when
    ``conditional``, the actual allocation of the ``horizon`` hours after it as ``planned_allocation``."""
    ts = np.asarray(ts, dtype="datetime64[ns]")
    earnings = np.asarray(earnings, dtype=float)
    allocation = np.asarray(allocation, dtype=float)
    contexts = []
    for o in origins:
        planned = None
        if conditional:
            future = allocation[o + 1 : o + 1 + horizon].copy()
            held = allocation[: o + 1][np.isfinite(allocation[: o + 1])]
            fill = held[-1] if len(held) else 1.0
            future[~np.isfinite(future)] = fill
            planned = _readonly(future)
        contexts.append(
            OriginContext(
                ts=_readonly(ts[: o + 1]),
                earnings=_readonly(earnings[: o + 1]),
                allocation=_readonly(allocation[: o + 1]),
                horizon=horizon,
                planned_allocation=planned,
            )
        )
    return contexts


def _run_single(forecaster: Forecaster, contexts: list[OriginContext], horizon: int) -> tuple[np.ndarray, str | None]:
    out = np.full((len(contexts), horizon), np.nan)
    reason = None
    for i, ctx in enumerate(contexts):
        try:
            f = np.asarray(forecaster(ctx), dtype=float)
        except InsufficientHistory as exc:
            reason = str(exc)
            continue
        if f.shape != (horizon,):
            raise ValueError(f"forecaster returned shape {f.shape}, expected ({horizon},)")
        out[i] = f
    return out, reason


def _run_batch(forecaster: BatchForecaster, contexts: list[OriginContext], horizon: int) -> tuple[np.ndarray, str | None]:
    try:
        out = np.asarray(forecaster(contexts), dtype=float)
    except InsufficientHistory as exc:
        return np.full((len(contexts), horizon), np.nan), str(exc)
    if out.shape != (len(contexts), horizon):
        raise ValueError(f"batch forecaster returned shape {out.shape}, expected ({len(contexts)}, {horizon})")
    return out, None


def _score(name, predictions, actuals, scale, interval: ConformalIntervals | None, seconds: float, reason: str | None) -> CandidateScore:
    have = np.isfinite(predictions).all(axis=1)
    pairs = np.isfinite(actuals) & np.isfinite(predictions)
    residuals = actuals - predictions
    a, f = actuals[pairs], predictions[pairs]
    if a.size:
        m = forecast_metrics(a, f)
        mape_pct, mae, rmse, skipped = m["mape"], m["mae"], m["rmse"], m["mape_skipped"]
    else:
        mape_pct, mae, rmse, skipped = None, math.nan, math.nan, 0
    bounds: dict[str, np.ndarray] = {}
    coverage: dict[str, float | None] = {"80": None, "95": None}
    if interval is not None and have.any():
        applied = interval.apply(np.where(have[:, None], predictions, 0.0))
        for key, values in applied.items():
            bounds[key] = np.where(have[:, None], values, np.nan)
        for level in interval.levels:
            k = level_key(level)
            coverage[k] = interval_coverage(actuals[have], bounds[f"lower_{k}"][have], bounds[f"upper_{k}"][have])
    return CandidateScore(
        name=name,
        mape_pct=mape_pct,
        mase=mase(a, f, scale),
        mae=mae,
        rmse=rmse,
        coverage_80_pct=coverage.get("80"),
        coverage_95_pct=coverage.get("95"),
        n_origins=int(have.sum()),
        n_zero_actuals_skipped=int(skipped),
        residuals=residuals,
        predictions=predictions,
        bounds=bounds,
        seconds=seconds,
        unavailable_reason=reason if not have.all() else None,
    )


def score_candidates(
    ts,
    earnings,
    allocation,
    holdout_start: int,
    forecasters: Mapping[str, Forecaster],
    *,
    horizon: int = HORIZON_HOURS,
    step: int = 24,
    conditional: bool = False,
    batch_forecasters: Mapping[str, BatchForecaster] | None = None,
    intervals: Mapping[str, ConformalIntervals] | None = None,
    holdout_end: int | None = None,
    unscored: np.ndarray | None = None,
) -> HarnessResult:
    """Score every candidate at the same rolling origins with the same information (module docstring).

    ``unscored``: hours (bool, like ``earnings``) whose actual is not scored, e.g. imputed hours whose
    earnings were spread over a collector gap; they stay in the forecasters' context."""
    earnings = np.asarray(earnings, dtype=float)
    n = len(earnings)
    if not (len(ts) == len(allocation) == n):
        raise ValueError("ts, earnings and allocation need the same length")
    origins = rolling_origins(n, holdout_start, horizon, step, holdout_end)
    contexts = origin_contexts(ts, earnings, allocation, origins, horizon=horizon, conditional=conditional)
    scored = earnings if unscored is None else np.where(np.asarray(unscored, dtype=bool), np.nan, earnings)
    actuals = np.array([scored[o + 1 : o + 1 + horizon] for o in origins]).reshape(len(origins), horizon)
    scale = seasonal_naive_scale(earnings[:holdout_start], MASE_SEASON)
    intervals = intervals or {}
    scores: dict[str, CandidateScore] = {}
    runs: list[tuple[str, Callable, Callable]] = [(name, f, _run_single) for name, f in forecasters.items()]
    runs += [(name, f, _run_batch) for name, f in (batch_forecasters or {}).items()]
    for name, forecaster, runner in runs:
        if name in scores:
            raise ValueError(f"candidate {name!r} given twice")
        started = time.perf_counter()
        if origins:
            predictions, reason = runner(forecaster, contexts, horizon)
        else:
            predictions, reason = np.empty((0, horizon)), "no origin in the holdout"
        seconds = time.perf_counter() - started
        scores[name] = _score(name, predictions, actuals, scale, intervals.get(name), seconds, reason)
    return HarnessResult(scores=scores, origins=origins, actuals=actuals, conditional=conditional, mase_scale=scale)


def fit_intervals(result: HarnessResult, *, mode: str = "relative", **kwargs) -> dict[str, ConformalIntervals]:
    """One :class:`ConformalIntervals` per candidate of a (calibration) harness run with any finite residual."""
    out = {}
    for name, score in result.scores.items():
        if np.isfinite(score.residuals).any():
            out[name] = ConformalIntervals.fit(score.residuals, score.predictions, mode=mode, **kwargs)
    return out


def score_with_calibrated_intervals(
    ts,
    earnings,
    allocation,
    holdout_start: int,
    forecasters: Mapping[str, Forecaster],
    *,
    calibration_hours: int,
    horizon: int = HORIZON_HOURS,
    step: int = 24,
    calibration_step: int | None = None,
    batch_forecasters: Mapping[str, BatchForecaster] | None = None,
    conditional: bool = False,
    interval_mode: str = "relative",
    unscored: np.ndarray | None = None,
) -> tuple[HarnessResult, dict[str, ConformalIntervals]]:
    """Calibrate intervals on origins whose targets lie in ``[holdout_start - calibration_hours,
    holdout_start)``, then score the holdout with them (coverage out-of-sample)."""
    calibration_start = max(1, holdout_start - calibration_hours)
    calibration = score_candidates(
        ts, earnings, allocation, calibration_start, forecasters, horizon=horizon, step=calibration_step or step,
        conditional=conditional, batch_forecasters=batch_forecasters, holdout_end=holdout_start, unscored=unscored,
    )
    intervals = fit_intervals(calibration, mode=interval_mode)
    result = score_candidates(
        ts, earnings, allocation, holdout_start, forecasters, horizon=horizon, step=step,
        conditional=conditional, batch_forecasters=batch_forecasters, intervals=intervals, unscored=unscored,
    )
    return result, intervals
