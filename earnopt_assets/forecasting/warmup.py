"""Forecasts for young series (#17): a forecast from the first hour, improving in steps as history grows.

Steps, chosen automatically from the hours of history ``n`` (first to last observed hour) and named in
``source``:

==========================  =====================  ==========================================================
source                      history                point forecast for each of the next 24 hours
==========================  =====================  ==========================================================
``prior``                   no telemetry           the catalog's ``prior_usd_per_hour`` x allocation^beta
``recent_level``            n >= 1 h               level L = mean of the observed hours of the last 24 h
``seasonal_naive_24_level_blend`` n >= 24 h              w * S_h + (1 - w) * L, S_h = median of the same hour on the
                                                   (up to 7) previous days, w = d / (d + 1), d = whole days seen
statistical candidates      n >= 168 h             scored in the harness by ``earnings_model`` (served source)
``lstm``                    n >= 25 days           the champion rule decides (see :func:`lstm_minimum_history`)
==========================  =====================  ==========================================================

Intervals at every step, wider when history is short. With ``sd`` the spread of the step's own errors
(prior: a log-normal with sigma ``PRIOR_LOG_SIGMA``; level: std of the hours in the level window, at least
``LEVEL_MIN_RELATIVE_SD`` x L since a level cannot see the daily rhythm; naive:
std of e_t - e_{t-24} over the pairs seen), bounds = point -/+ z * sd * W(n), z = 1.2816 (80 %) and 1.96
(95 %), clipped at 0, with the widening factor

    W(n) = min(MAX_WIDENING, max(1, sqrt(FULL_CONFIDENCE_HOURS / n)))

(28 days of history = 1; 7 days = 2; below ~3 days the cap 3). The same W widens the conformal intervals of
the statistical candidates and the LSTM (``ConformalIntervals.widen``) while the series is young.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.candidates import HORIZON_HOURS

PRIOR_SOURCE = "prior"
LEVEL_SOURCE = "recent_level"
NAIVE_SOURCE = "seasonal_naive_24_level_blend"  # not the statistical candidate "seasonal_naive_24"
WARMUP_SOURCES: tuple[str, ...] = (PRIOR_SOURCE, LEVEL_SOURCE, NAIVE_SOURCE)
LEVEL_MIN_HOURS = 1
NAIVE_MIN_HOURS = 24
STATISTICAL_MIN_HOURS = 168
FULL_CONFIDENCE_HOURS = 28 * 24
MAX_WIDENING = 3.0
LEVEL_MIN_RELATIVE_SD = 0.3  # typical daily swing around the level (bandwidth/storage protocols)
PRIOR_LOG_SIGMA = 1.0  # the catalog's prior is a figure for a typical host: a factor e either way is ~1 sd
Z = {"80": 1.2816, "95": 1.96}
PRIOR_ELASTICITY = 0.6  # earnings ~ allocation^0.6 (numerics.response.PRIOR_BETA)

# The LSTM's minimum history (lstm_minimum_history), each term from what reads it:
# * earnings_features start once the lag-168 feature exists (the model sees feature rows only);
# * the model's first training origin needs min_history_hours(sequence_length) = 216 h of its own lag history;
# * it needs >= 48 training origins, each with a 24 h target;
# * a young validation of 72 h (the model's default is 7 days; 3 days still choose the early-stopping epoch
#   and the blend weight on hours never trained on);
# * a young holdout of 3 days: 3 daily origins on which every candidate and the champion are scored alike.
FEATURE_WARMUP_HOURS = 168
MIN_TRAIN_ORIGINS = 48
YOUNG_VALIDATION_HOURS = 72
YOUNG_HOLDOUT_DAYS = 3


def model_lag_hours(sequence_length: int = 24) -> int:
    """The model's own lag history before its first origin (``forecasting.model.forecast.min_history_hours``)."""
    from earnopt_assets.forecasting.model.forecast import min_history_hours

    return int(min_history_hours(sequence_length))


def lstm_min_train_hours(sequence_length: int = 24) -> int:
    """Feature rows the young LSTM needs before its holdout: lag history + 48 origins + horizon + validation."""
    return model_lag_hours(sequence_length) + MIN_TRAIN_ORIGINS + HORIZON_HOURS + YOUNG_VALIDATION_HOURS


def lstm_minimum_history(sequence_length: int = 24, holdout_days: int = YOUNG_HOLDOUT_DAYS) -> int:
    """Hours of raw telemetry before the LSTM can train and be judged: feature warm-up + training + holdout."""
    return FEATURE_WARMUP_HOURS + lstm_min_train_hours(sequence_length) + holdout_days * 24


LSTM_MIN_TRAIN_HOURS = lstm_min_train_hours()
LSTM_MIN_HISTORY_HOURS = lstm_minimum_history()
LSTM_MIN_HISTORY_RULE = (
    f"the LSTM trains once a protocol has {LSTM_MIN_HISTORY_HOURS / 24:g} days of telemetry = "
    f"{FEATURE_WARMUP_HOURS} h before the first feature row (the lag-168 'same hour last week' feature) + "
    f"{model_lag_hours()} h of the model's own lag history + {MIN_TRAIN_ORIGINS} training origins + "
    f"{HORIZON_HOURS} h target + {YOUNG_VALIDATION_HOURS} h validation + a {YOUNG_HOLDOUT_DAYS}-day holdout on which "
    f"every candidate is scored at the same origins (holdout and validation grow to 7 days as history allows)"
)


def widening_factor(history_hours: float) -> float:
    """W(n) = min(3, max(1, sqrt(672 / n))): how much wider a young series' intervals are."""
    if history_hours <= 0:
        return MAX_WIDENING
    return float(min(MAX_WIDENING, max(1.0, math.sqrt(FULL_CONFIDENCE_HOURS / history_hours))))


def history_hours(ts: pd.Series | pd.DatetimeIndex | np.ndarray, earnings: np.ndarray | None = None) -> float:
    """Hours from the first to the last observed hour, inclusive (0 without observations)."""
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(ts)))
    if earnings is not None:
        index = index[np.isfinite(np.asarray(earnings, dtype=float))]
    if len(index) == 0:
        return 0.0
    return float((index.max() - index.min()) / pd.Timedelta(hours=1) + 1)


def step_for(hours: float) -> str:
    """The warm-up step history allows (``statistical`` from 7 days: the harness chooses from there)."""
    if hours < LEVEL_MIN_HOURS:
        return PRIOR_SOURCE
    if hours < NAIVE_MIN_HOURS:
        return LEVEL_SOURCE
    if hours < STATISTICAL_MIN_HOURS:
        return NAIVE_SOURCE
    return "statistical"


@dataclass
class StepForecast:
    """One young-series forecast: the step's point forecast and its widened intervals."""

    source: str
    reason: str
    targets: pd.DatetimeIndex
    values: np.ndarray
    intervals: dict[str, np.ndarray]
    history_hours: float
    widening: float


def _bounds(point: np.ndarray, sd: np.ndarray | float, widening: float) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for level, z in Z.items():
        half = z * np.asarray(sd, dtype=float) * widening
        out[f"lower_{level}"] = np.clip(point - half, 0.0, None)
        out[f"upper_{level}"] = np.clip(point + half, 0.0, None)
    return out


def prior_forecast(prior_usd_per_hour: float, allocation: float | None, origin: pd.Timestamp, horizon: int = HORIZON_HOURS) -> StepForecast:
    """No telemetry: the catalog prior at the share held (1.0 when unknown); log-normal interval."""
    share = 1.0 if allocation is None or not np.isfinite(allocation) else float(np.clip(allocation, 0.01, 1.0))
    value = float(prior_usd_per_hour) * share**PRIOR_ELASTICITY
    point = np.full(horizon, value)
    intervals = {}
    for level, z in Z.items():
        factor = math.exp(z * PRIOR_LOG_SIGMA)
        intervals[f"lower_{level}"] = point / factor
        intervals[f"upper_{level}"] = point * factor
    targets = pd.date_range(pd.Timestamp(origin).floor("h") + pd.Timedelta(hours=1), periods=horizon, freq="h")
    reason = (f"prior: no telemetry yet; the catalog's prior ${prior_usd_per_hour:.4f}/h at full allocation x share "
              f"{share:.2f}^{PRIOR_ELASTICITY} (interval: x/÷ e^(z·{PRIOR_LOG_SIGMA:g}))")
    return StepForecast(PRIOR_SOURCE, reason, targets, point, intervals, 0.0, MAX_WIDENING)


def young_forecast(ts: pd.Series | pd.DatetimeIndex | np.ndarray, earnings: np.ndarray, horizon: int = HORIZON_HOURS,
                   *, why: str = "") -> StepForecast:
    """``recent_level`` (>= 1 h) or ``seasonal_naive_24_level_blend`` (seasonal naive 24 blended with the level, >= 24 h) for the next
    ``horizon`` hours after the last observed hour. Raises ValueError without any observed hour."""
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(ts)))
    values = np.asarray(earnings, dtype=float)
    keep = np.isfinite(values)
    if not keep.any():
        raise ValueError("no observed hours to forecast from")
    series = pd.Series(values[keep], index=index[keep]).sort_index()
    series = series[~series.index.duplicated(keep="last")]
    last = series.index[-1]
    hours = history_hours(series.index)
    widening = widening_factor(hours)
    recent = series[series.index > last - pd.Timedelta(hours=24)]
    level = float(recent.mean())
    # a level cannot see the daily rhythm: its sd is floored at LEVEL_MIN_RELATIVE_SD of the level
    level_sd = max(float(recent.std(ddof=0)) if len(recent) >= 2 else 0.0, LEVEL_MIN_RELATIVE_SD * abs(level))
    targets = pd.date_range(last + pd.Timedelta(hours=1), periods=horizon, freq="h")
    prefix = f"{why}; " if why else ""
    if hours < NAIVE_MIN_HOURS:
        point = np.full(horizon, max(level, 0.0))
        reason = (f"{prefix}recent_level: {hours:.0f} h of history (< {NAIVE_MIN_HOURS} h): mean of the last "
                  f"{len(recent)} observed hours; intervals x{widening:.1f} for short history")
        return StepForecast(LEVEL_SOURCE, reason, targets, point, _bounds(point, level_sd, widening), hours, widening)
    days = int(hours // 24)
    weight = days / (days + 1.0)
    lookup = series.to_dict()
    naive = np.empty(horizon)
    for i, target in enumerate(targets):
        same_hour = [lookup[t] for k in range(1, 8) if (t := target - pd.Timedelta(hours=24 * k)) in lookup]
        naive[i] = float(np.median(same_hour)) if same_hour else level
    point = np.clip(weight * naive + (1.0 - weight) * level, 0.0, None)
    lagged = series.reindex(series.index - pd.Timedelta(hours=24)).to_numpy()
    diffs = series.to_numpy() - lagged
    diffs = diffs[np.isfinite(diffs)]
    sd = float(np.std(diffs)) if len(diffs) >= 12 else level_sd
    reason = (f"{prefix}seasonal_naive_24_level_blend: {hours / 24:.1f} days of history (< 7): {weight:.2f} x same hour on the "
              f"previous {min(days, 7)} day(s) + {1 - weight:.2f} x 24 h level; intervals x{widening:.1f} for short history")
    return StepForecast(NAIVE_SOURCE, reason, targets, point, _bounds(point, sd, widening), hours, widening)


def young_history(series: pd.DataFrame) -> bool:
    """True while a telemetry frame (ts, earnings_usd) is below the statistical step (< 7 days)."""
    return history_hours(series["ts"], series["earnings_usd"].to_numpy(dtype=float)) < STATISTICAL_MIN_HOURS


# ------------------------------------------------------------------ the statistical step (7 days .. LSTM minimum)

YOUNG_SCORING_HOURS = 72  # the last 3 days' daily origins score the candidates while no training run decides


def statistical_step_forecast(ts: np.ndarray, earnings: np.ndarray, allocation: np.ndarray, *, why: str = "") -> StepForecast:
    """From 7 days without a serving decision: score every statistical candidate on the last 3 days' daily
    origins (the harness: same origins, same information for all), serve the best one from the newest hour,
    with conformal intervals from those residuals widened by W(n). Raises ValueError when none can run."""
    from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates
    from earnopt_assets.forecasting.harness import fit_intervals, score_candidates

    ts = np.asarray(ts, dtype="datetime64[ns]")
    earnings = np.asarray(earnings, dtype=float)
    allocation = np.asarray(allocation, dtype=float)
    hours = history_hours(ts, earnings)
    widening = widening_factor(hours)
    start = max(24, len(ts) - YOUNG_SCORING_HOURS)
    candidates = statistical_candidates()
    result = score_candidates(ts, earnings, allocation, start, candidates)
    best = result.best()
    score = result.scores[best]
    context = OriginContext(ts=ts, earnings=earnings, allocation=allocation)
    point = np.clip(np.nan_to_num(np.asarray(candidates[best](context), dtype=float), nan=0.0), 0.0, None)
    intervals = fit_intervals(result).get(best)
    if intervals is not None:
        bounds = intervals.widen(widening).apply(point)
    else:
        bounds = _bounds(point, float(np.nanstd(score.residuals)) if np.isfinite(score.residuals).any() else 0.5 * float(point.mean()), widening)
    mape = f"{score.mape_pct:.1f} %" if score.mape_pct is not None else "n/a"
    prefix = f"{why}; " if why else ""
    reason = (f"{prefix}{best}: {hours / 24:.1f} days of history (statistical step, LSTM from {LSTM_MIN_HISTORY_HOURS // 24} days); "
              f"best of {len(result.complete())} candidates on the last {len(result.origins)} daily origins (MAPE {mape}); "
              f"intervals x{widening:.1f} for short history")
    targets = pd.DatetimeIndex(context.target_ts)
    return StepForecast(best, reason, targets, point, {k: np.asarray(v, dtype=float) for k, v in bounds.items()}, hours, widening)


# ------------------------------------------------------------------ earnings_model readiness

@dataclass(frozen=True)
class TrainingReadiness:
    """Whether a protocol has the LSTM's minimum history (#17), and how far along it is."""

    history_hours: float
    needed_hours: int = LSTM_MIN_HISTORY_HOURS

    @property
    def ready(self) -> bool:
        return self.history_hours >= self.needed_hours

    @property
    def summary(self) -> str:
        return f"warming up: {self.history_hours / 24:.1f} of {self.needed_hours / 24:g} days"

    @property
    def rule(self) -> str:
        return LSTM_MIN_HISTORY_RULE

    @property
    def serving_now(self) -> str:
        return step_for(self.history_hours) if self.history_hours < STATISTICAL_MIN_HOURS else "the best statistical candidate"


def young_holdout_days(feature_hours: float, min_holdout_days: int) -> int:
    """The holdout of a young series: ``min_holdout_days`` once the feature rows leave the LSTM its minimum
    training hours besides it, else what is left after those hours, never under 3 days (every candidate is
    still scored at the same origins, so the comparison stays like with like)."""
    if feature_hours - min_holdout_days * 24 >= LSTM_MIN_TRAIN_HOURS:
        return min_holdout_days
    return max(YOUNG_HOLDOUT_DAYS, min(min_holdout_days, int((feature_hours - LSTM_MIN_TRAIN_HOURS) // 24)))


# ------------------------------------------------------------------ entry points for training.py / defs

def warmup_forecast(telemetry: pd.DataFrame, *, decided: bool, why: str = "") -> StepForecast | None:
    """The warm-up step for one series' recent telemetry (ts, earnings_usd, allocation) while no training
    run has decided its source (``decided`` False): ``recent_level`` / ``seasonal_naive_24_level_blend`` below 7 days,
    the statistical step from 7 days. None = not a warm-up case (a decided source that cannot run on this
    telemetry: the caller's gap-tolerant fallback serves and says why)."""
    if decided:
        return None
    frame = telemetry.sort_values("ts")
    if why.startswith("no_decision"):
        why = "no training run yet"  # the caller's sentence names the fallback this step replaces
    hours = history_hours(frame["ts"], frame["earnings_usd"].to_numpy(dtype=float))
    if hours <= 0:
        return None
    if hours < STATISTICAL_MIN_HOURS:
        return young_forecast(frame["ts"], frame["earnings_usd"].to_numpy(dtype=float), why=why)
    from earnopt_assets.forecasting.candidates import OriginContext

    context = OriginContext.from_frame(frame)
    try:
        return statistical_step_forecast(context.ts, context.earnings, context.allocation, why=why)
    except ValueError:
        return None


def training_readiness(features: pd.DataFrame, recorded_hours: float | None) -> TrainingReadiness:
    """Readiness from the span ``earnings_features`` recorded (history.json), else from the feature rows,
    which start after the 168 h lag warm-up (span + 168 h)."""
    if recorded_hours is not None:
        return TrainingReadiness(float(recorded_hours))
    if features.empty:
        return TrainingReadiness(0.0)
    return TrainingReadiness(history_hours(features["ts"]) + FEATURE_WARMUP_HOURS)
