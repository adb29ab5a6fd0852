"""Train a challenger, score it with every candidate, govern CURRENT and the serving source, and forecast.

One training run (:func:`train_protocol`) for one protocol:

1. Holdout = the most recent ``max(20 %, 7 days)`` of the feature rows; the challenger LSTM trains on the rest.
2. The rolling-origin harness (:mod:`.harness`) scores, at the SAME origins with the SAME information
   (allocation held at the origin), every statistical candidate (:func:`.candidates.statistical_candidates`),
   the challenger (``lstm``) and the current champion re-scored on this holdout (``champion``). Conformal
   80/95 % intervals per candidate are calibrated on the ``calibration_days`` of origins just before the
   holdout, so the holdout coverage is out-of-sample.
3. :func:`.registry.judge_challenger` decides the check and whether CURRENT moves; the challenger is saved
   as a version either way, CURRENT moves only on promotion.
4. :func:`.registry.choose_source` picks what serves (champion or best statistical candidate) and the
   decision, with its scores and interval quantiles, is written to ``<models>/serving/<protocol>.json``.

:func:`forecast_protocol` then produces the next 24 h from recent telemetry with the decided source and
its intervals; every row names its source and the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.candidates import HORIZON_HOURS, OriginContext, statistical_candidates
from earnopt_assets.forecasting.model.predictor import EarningsPredictor, ModelLoadError, SequenceValidationError
from earnopt_assets.forecasting.registry import (
    CHAMPION_KEY,
    DEFAULT_MAPE_TARGET_PCT,
    FALLBACK_SOURCE,
    LSTM_SOURCE,
    ChallengerVerdict,
    ServingDecision,
    choose_source,
    current_version,
    judge_challenger,
    model_root,
    read_serving_decision,
    score_row,
    set_current,
    version_dir,
    write_serving_decision,
)
from earnopt_assets.numerics.baselines import fallback_forecast

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT_DAYS = 7
CALIBRATION_DAYS = 7
KEEP_VERSIONS = 3


@dataclass
class TrainingSettings:
    """Knobs of one training run (the Dagster run config mirrors these)."""

    epochs: int = 30
    batch_size: int = 64
    sequence_length: int = 24
    lstm_units: tuple[int, int] = (128, 64)
    dropout: float = 0.2
    learning_rate: float = 1e-3
    validation_split: float = 0.2
    patience: int = 10
    seed: int = 7
    holdout_fraction: float = HOLDOUT_FRACTION
    min_holdout_days: int = MIN_HOLDOUT_DAYS
    calibration_days: int = CALIBRATION_DAYS
    mape_target_pct: float = DEFAULT_MAPE_TARGET_PCT


@dataclass
class TrainingReport:
    """Everything one training run decided and measured (the asset renders it)."""

    protocol: str
    challenger_version: str
    verdict: ChallengerVerdict
    decision: ServingDecision
    scores: pd.DataFrame  # one row per candidate: candidate, role, mape_%, mase, mae_usd, ...
    holdout: pd.DataFrame  # per (origin, target hour): actual, each candidate's point, served bounds
    training_seconds: float
    scoring_seconds: float
    train_rows: int
    holdout_rows: int
    holdout_start: pd.Timestamp
    model_facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def check(self):
        return self.verdict.check


def split_holdout(features: pd.DataFrame, fraction: float = HOLDOUT_FRACTION, min_days: int = MIN_HOLDOUT_DAYS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chronological split: the holdout is the most recent ``max(fraction, min_days)`` of the time span."""
    frame = features.sort_values("ts").reset_index(drop=True)
    if frame.empty:
        raise SequenceValidationError("no feature rows to split")
    ts = pd.DatetimeIndex(frame["ts"])
    span_hours = (ts[-1] - ts[0]) / pd.Timedelta(hours=1) + 1
    holdout_hours = max(int(round(span_hours * fraction)), min_days * 24)
    cut = ts[-1] - pd.Timedelta(hours=holdout_hours - 1)
    train, holdout = frame[frame["ts"] < cut], frame[frame["ts"] >= cut]
    if len(train) < holdout_hours:
        raise SequenceValidationError(
            f"only {int(span_hours)} h of features: a {holdout_hours} h holdout (>= {min_days} days) would leave "
            f"{len(train)} training rows; ingest more history first"
        )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def hourly_series(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ts, earnings, allocation)`` of one series on its contiguous hourly grid (missing hours NaN)."""
    data = frame.sort_values("ts").drop_duplicates("ts", keep="last").set_index("ts")
    grid = pd.date_range(data.index.min(), data.index.max(), freq="h")
    data = data.reindex(grid)
    allocation = data["allocation"].to_numpy(dtype=float) if "allocation" in data else np.ones(len(data))
    return grid.to_numpy(dtype="datetime64[ns]"), data["earnings_usd"].to_numpy(dtype=float), allocation


# ----------------------------------------------------------------------------- the LSTM behind one interface
# The model package's public surface used here: train, rolling-origin evaluation with the allocation held,
# save into a directory, load a version, forecast from telemetry.


def _new_challenger(protocol: str, settings: TrainingSettings, timezone: str, host_totals: Mapping[str, float] | None) -> EarningsPredictor:
    return EarningsPredictor(
        protocol,
        settings.sequence_length,
        None,
        lstm_units=settings.lstm_units,
        dropout=settings.dropout,
        learning_rate=settings.learning_rate,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        validation_split=settings.validation_split,
        patience=settings.patience,
        seed=settings.seed,
        timezone=timezone,
        host_totals=host_totals,
    )


def lstm_batch_forecaster(model: EarningsPredictor, features: pd.DataFrame) -> Callable[[list[OriginContext]], np.ndarray]:
    """The model as a harness batch forecaster: its forecasts at the asked origins, allocation held.

    The model reads its own feature channels (not only earnings and allocation), so each run of origins
    24 h apart is forecast by one rolling-origin evaluation over ``features`` (history up to the first
    origin as context, allocation held at each origin: the harness headline) and looked up by origin hour.
    An origin the model cannot forecast (too little clean history) stays NaN; the harness counts it.
    """
    frame = features.sort_values("ts").reset_index(drop=True)
    day = pd.Timedelta(hours=HORIZON_HOURS)

    def forecast(contexts: list[OriginContext]) -> np.ndarray:
        out = np.full((len(contexts), HORIZON_HOURS), np.nan)
        origins = [pd.Timestamp(ctx.origin_ts) for ctx in contexts]
        runs: list[list[int]] = []
        for i, origin in enumerate(origins):
            if runs and origin - origins[runs[-1][-1]] == day:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            first, last = origins[run[0]], origins[run[-1]]
            test = frame[(frame["ts"] > first) & (frame["ts"] <= last + day)]
            try:
                model.evaluate(test, context=frame[frame["ts"] <= first], condition_on_allocation=False)
            except SequenceValidationError:
                continue
            table = model.last_evaluation
            position = {origin: i for i in run for origin in [origins[i]]}
            for origin, rows in table.groupby("origin_ts"):
                i = position.get(pd.Timestamp(origin))
                if i is not None:
                    out[i, rows["horizon_hours"].to_numpy(int) - 1] = rows["model"].to_numpy(float)
        return out

    return forecast


def _save_challenger(model: EarningsPredictor, models_dir: Path, metadata: Mapping[str, Any]) -> str:
    """Save a new version WITHOUT moving CURRENT: written in a staging store beside the real one, then the
    finished version directory is renamed into ``versions/`` (atomic); CURRENT moves only via :func:`set_current`."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        model.model_dir = staging
        staged = model.save(extra_metadata=metadata)
        target = version_dir(models_dir, model.protocol, staged.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        model.model_dir = models_dir
    return target.name


def _prune_versions(models_dir: Path, protocol: str, keep: int = KEEP_VERSIONS) -> None:
    """Keep the newest ``keep`` versions; never the one CURRENT names."""
    root = model_root(models_dir, protocol) / "versions"
    if not root.is_dir():
        return
    current = current_version(models_dir, protocol)
    versions = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in versions[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def load_model(models_dir: str | Path, protocol: str, version: str) -> EarningsPredictor:
    return EarningsPredictor.load(models_dir, protocol, version)


# ----------------------------------------------------------------------------- one training run


def _holdout_table(result, ts: np.ndarray, served_key: str | None) -> pd.DataFrame:
    """Long table of the holdout forecasts: one row per (origin, step) with every candidate's point."""
    rows = []
    for i, origin in enumerate(result.origins):
        for h in range(result.actuals.shape[1]):
            target = origin + 1 + h
            if target >= len(ts):
                continue
            row = {"origin_ts": pd.Timestamp(ts[origin]), "target_ts": pd.Timestamp(ts[target]), "horizon_hours": h + 1, "actual": result.actuals[i, h]}
            for name, score in result.scores.items():
                row[name] = score.predictions[i, h]
            if served_key is not None and served_key in result.scores:
                for bound, values in result.scores[served_key].bounds.items():
                    row[bound] = values[i, h]
            rows.append(row)
    return pd.DataFrame(rows)


def train_protocol(
    features: pd.DataFrame,
    protocol: str,
    models_dir: str | Path,
    settings: TrainingSettings,
    *,
    timezone: str = "UTC",
    host_totals: Mapping[str, float] | None = None,
) -> TrainingReport:
    """Train a challenger, score every candidate, move CURRENT only on promotion, persist the serving decision."""
    from earnopt_assets.forecasting.harness import score_with_calibrated_intervals

    models_dir = Path(models_dir)
    train, holdout = split_holdout(features, settings.holdout_fraction, settings.min_holdout_days)
    holdout_start = pd.Timestamp(holdout["ts"].iloc[0])
    notes: list[str] = []

    challenger = _new_challenger(protocol, settings, timezone, host_totals)
    started = time.perf_counter()
    challenger.train(train, settings.epochs, settings.batch_size, settings.validation_split)
    training_seconds = time.perf_counter() - started

    ts, earnings, allocation = hourly_series(features)
    start_index = int(np.searchsorted(ts, holdout_start.to_datetime64()))
    calibration_hours = settings.calibration_days * 24
    batch = {LSTM_SOURCE: lstm_batch_forecaster(challenger, features)}
    champion_version = current_version(models_dir, protocol)
    if champion_version is not None:
        try:
            batch[CHAMPION_KEY] = lstm_batch_forecaster(load_model(models_dir, protocol, champion_version), features)
        except (ModelLoadError, OSError, ValueError) as exc:
            notes.append(f"champion {champion_version} could not be loaded ({exc}); judged without it and it cannot serve")
            champion_version = None
    started = time.perf_counter()
    result, intervals = score_with_calibrated_intervals(
        ts, earnings, allocation, start_index, statistical_candidates(),
        calibration_hours=calibration_hours, batch_forecasters=batch,
    )
    scoring_seconds = time.perf_counter() - started
    total = len(result.origins)
    scores = {name: score_row(score, total) for name, score in result.scores.items()}

    verdict = judge_challenger(scores, target_pct=settings.mape_target_pct, champion_version=champion_version)
    challenger_version = _save_challenger(
        challenger,
        models_dir,
        {
            "mape_check": verdict.check.to_json(),
            "governance": verdict.to_json(),
            "holdout_start": str(holdout_start),
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "scores": scores,
            "intervals": intervals[LSTM_SOURCE].to_json() if LSTM_SOURCE in intervals else None,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        },
    )
    if verdict.promote:
        set_current(models_dir, protocol, challenger_version)
    serving_champion = challenger_version if verdict.promote else champion_version
    champion_key = LSTM_SOURCE if verdict.promote else CHAMPION_KEY
    serving_scores = {k: v for k, v in scores.items() if k not in (LSTM_SOURCE, CHAMPION_KEY)}
    if serving_champion is not None and champion_key in scores:
        serving_scores[LSTM_SOURCE] = scores[champion_key]
    decision = choose_source(protocol, serving_scores, target_pct=settings.mape_target_pct, champion_version=serving_champion)
    decision.scores = scores
    served_key = champion_key if decision.source == LSTM_SOURCE else decision.source
    if served_key in intervals:
        decision.intervals = intervals[served_key].to_json()
    decision.holdout_start = str(holdout_start)
    decision.training = {**verdict.to_json(), "challenger_version": challenger_version, "trained_at": decision.decided_at, "notes": notes}
    write_serving_decision(models_dir, decision)
    _prune_versions(models_dir, protocol)

    roles = {LSTM_SOURCE: "challenger", CHAMPION_KEY: f"champion {champion_version}" if champion_version else "champion"}
    table = result.table().rename(columns={"origins": "origins_n"})
    table.insert(1, "role", [roles.get(n, "statistical") for n in table["candidate"]])
    table.insert(2, "serves", [(n == served_key) for n in table["candidate"]])
    facts = {
        "epochs_run": challenger.epochs_run,
        "parameter_count": challenger.parameter_count(),
        "best_val_loss": float(min(challenger.history.get("val_loss", [float("nan")]))),
    }
    return TrainingReport(
        protocol=protocol,
        challenger_version=challenger_version,
        verdict=verdict,
        decision=decision,
        scores=table,
        holdout=_holdout_table(result, ts, served_key),
        training_seconds=training_seconds,
        scoring_seconds=scoring_seconds,
        train_rows=len(train),
        holdout_rows=len(holdout),
        holdout_start=holdout_start,
        model_facts=facts,
        notes=notes,
    )


# ----------------------------------------------------------------------------- forecasting with the decided source


@dataclass
class ProtocolForecast:
    protocol: str
    origin_ts: pd.Timestamp
    targets: pd.DatetimeIndex
    values: np.ndarray
    source: str
    model_version: str | None
    reason: str
    intervals: dict[str, np.ndarray] | None = None
    below_target: bool = False
    mape_pct: float | None = None


def _intervals(decision: ServingDecision | None, values: np.ndarray) -> dict[str, np.ndarray] | None:
    if decision is None or not decision.intervals:
        return None
    from earnopt_assets.forecasting.intervals import ConformalIntervals

    try:
        return ConformalIntervals.from_json(decision.intervals).apply(values)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: stored intervals unusable: %s", decision.protocol, exc)
        return None


def forecast_protocol(
    telemetry: pd.DataFrame,
    protocol: str,
    models_dir: str | Path,
    predictor_cache: dict[str, EarningsPredictor] | None = None,
    planned_allocation: float | None = None,
) -> ProtocolForecast:
    """Next 24 h of one protocol from its recent raw telemetry, with the source its serving decision names.

    ``lstm`` loads the decided champion version (never a challenger that was not promoted) and conditions on
    ``planned_allocation`` (the allocator's share; None holds the last observed one). A statistical source
    runs that candidate on the telemetry. When the decided source cannot run (too little or gappy history,
    model files unusable) or no decision exists yet, the gap-tolerant ``seasonal_naive_fallback`` serves and
    ``reason`` says why. Intervals come from the decision's conformal quantiles of the served source.
    """
    if telemetry.empty:
        raise ValueError(f"{protocol}: no telemetry to forecast from")
    telemetry = telemetry.sort_values("ts").reset_index(drop=True)
    origin = pd.Timestamp(telemetry["ts"].iloc[-1])
    decision = read_serving_decision(models_dir, protocol)
    if decision is None:
        why = "no_decision: no training run has scored candidates for this protocol yet; same hour on an earlier day serves"
    elif decision.source == LSTM_SOURCE:
        version = decision.model_version
        try:
            model = (predictor_cache or {}).get(protocol)
            if model is None or model.version != version:
                model = load_model(models_dir, protocol, str(version))
                if predictor_cache is not None:
                    predictor_cache[protocol] = model
            frame = model.forecast_frame(telemetry, allocation_path=planned_allocation)
            values = frame["value"].to_numpy(dtype=float)
            return ProtocolForecast(
                protocol, origin, pd.DatetimeIndex(frame["target_ts"]), values, LSTM_SOURCE, version, decision.reason,
                _intervals(decision, values), decision.below_target, decision.mape_pct,
            )
        except SequenceValidationError as exc:
            why = f"data_too_short: lstm serves but {exc}"
        except (ModelLoadError, OSError, ValueError) as exc:
            why = f"model_error: lstm champion {version} unusable: {exc}"
    elif decision.source != FALLBACK_SOURCE:
        candidate = statistical_candidates().get(decision.source)
        try:
            if candidate is None:
                raise ValueError(f"unknown candidate {decision.source!r}")
            context = OriginContext.from_frame(telemetry)
            values = np.clip(np.nan_to_num(np.asarray(candidate(context), dtype=float), nan=0.0), 0.0, None)
            targets = pd.DatetimeIndex(context.target_ts)
            return ProtocolForecast(
                protocol, origin, targets, values, decision.source, None, decision.reason,
                _intervals(decision, values), decision.below_target, decision.mape_pct,
            )
        except ValueError as exc:  # InsufficientHistory is a ValueError
            why = f"data_too_short: {decision.source} serves but cannot run on this history: {exc}"
    else:
        why = decision.reason
    targets, values = fallback_forecast(telemetry["ts"], telemetry["earnings_usd"].to_numpy(dtype=float), HORIZON_HOURS)
    log.info("%s: seasonal-naive fallback (%s)", protocol, why)
    return ProtocolForecast(protocol, origin, targets, values, FALLBACK_SOURCE, None, why, None, True, None)


def forecast_summary_row(result: ProtocolForecast, planned: float | None) -> dict[str, Any]:
    """One row of the forecast asset's "which source serves" table."""
    return {
        "protocol": result.protocol,
        "source": result.source,
        "below_target": bool(result.below_target),
        "mape_%": result.mape_pct,
        "next_24h_usd": float(np.sum(result.values)),
        "allocation_share": planned,
        "model_version": result.model_version,
        "reason": result.reason,
    }
