"""Train a challenger, score it with every candidate, govern CURRENT and the serving source, and forecast.

One training run (:func:`train_protocol`) for one protocol:

1. Holdout = the most recent ``max(20 %, 7 days)`` of the feature rows; the challenger LSTM trains on the rest.
2. The rolling-origin harness (:mod:`.harness`) scores, at the SAME origins with the SAME information
   (allocation held at the origin), every statistical candidate (:func:`.candidates.statistical_candidates`),
   the challenger (``lstm``) and the current champion re-scored on this holdout (``champion``). Conformal
   80/95 % intervals per candidate are calibrated on the ``calibration_days`` of origins just before the
   holdout, so the holdout coverage is out-of-sample. The challenger's validation period is widened to
   cover that calibration window, so its calibration forecasts come from weights never fitted on those
   hours (the window only chose the early-stopping epoch and the blend weight); the holdout coverage of
   the served source is checked and a note says when its 80 % interval under-covers.
3. :func:`.registry.judge_challenger` decides the check and whether CURRENT moves; the challenger is saved
   as a version either way, CURRENT moves only on promotion.
4. :func:`.registry.choose_source` picks what serves (champion or best statistical candidate) and the
   decision, with its scores and interval quantiles, is written to ``<models>/serving/<protocol>.json``.

:func:`forecast_protocol` then produces the next 24 h from recent telemetry with the decided source and
its intervals; every row names its source and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.candidates import (
    HORIZON_HOURS,
    OriginContext,
    frozen_ets_forecaster,
    statistical_candidates,
)
from earnopt_assets.forecasting.model.config import ModelConfig
from earnopt_assets.forecasting.model.errors import InsufficientHistoryError
from earnopt_assets.forecasting.model.predictor import EarningsPredictor, ModelLoadError, SequenceValidationError
from earnopt_assets.forecasting.registry import (
    CHAMPION_KEY,
    DEFAULT_MAPE_TARGET_PCT,
    ETS_SOURCE,
    FALLBACK_SOURCE,
    FROZEN_ETS_KEY,
    LSTM_BASE_SOURCE,
    LSTM_SOURCE,
    ChallengerVerdict,
    ServingDecision,
    choose_source,
    current_version,
    frozen_ets_block,
    frozen_ets_of,
    judge_challenger,
    read_serving_decision,
    score_row,
    set_current,
    write_serving_decision,
)
from earnopt_assets.numerics.baselines import fallback_forecast

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT_DAYS = 7
CALIBRATION_DAYS = 14
# the served source's 80 % interval covering fewer holdout hours than this is reported as under-covering
MIN_HOLDOUT_COVERAGE_80_PCT = 70.0


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
    head: str = "direct"
    ensemble_size: int = 1
    holdout_fraction: float = HOLDOUT_FRACTION
    min_holdout_days: int = MIN_HOLDOUT_DAYS
    calibration_days: int = CALIBRATION_DAYS
    mape_target_pct: float = DEFAULT_MAPE_TARGET_PCT
    model_options: dict[str, Any] = field(default_factory=dict)  # any other ModelConfig field (tests: smaller windows)

    def model_config(self, protocol: str, timezone: str = "UTC", host_totals: Mapping[str, float] | None = None) -> ModelConfig:
        """The model's one settings type from these knobs (``validation_split`` = its validation fraction)."""
        return ModelConfig(
            protocol=protocol,
            head=self.head,
            sequence_length=self.sequence_length,
            lstm_units=tuple(self.lstm_units),
            dropout=self.dropout,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            batch_size=self.batch_size,
            patience=self.patience,
            seed=self.seed,
            ensemble_size=self.ensemble_size,
            validation_fraction=self.validation_split,
            timezone=timezone,
            host_totals=host_totals,
            **self.model_options,
        )


@dataclass
class TrainingReport:
    """Everything one training run decided and measured (the asset renders it)."""

    protocol: str
    challenger_version: str | None  # None when the LSTM could not be trained (see notes)
    verdict: ChallengerVerdict
    decision: ServingDecision
    scores: pd.DataFrame  # one row per candidate: candidate, role, mape_%, mase, mae_usd, ...
    holdout: pd.DataFrame  # per (origin, target hour): actual, each candidate's point, served bounds
    training_seconds: float
    scoring_seconds: float
    train_rows: int
    holdout_rows: int
    holdout_start: pd.Timestamp
    served_column: str | None = None  # the holdout/scores column of the served source ("champion" when a kept champion serves)
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
    holdout_hours = max(round(span_hours * fraction), min_days * 24)
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


def imputed_on_grid(frame: pd.DataFrame, ts: np.ndarray) -> np.ndarray | None:
    """Hours of the grid ``ts`` (from :func:`hourly_series`) flagged ``imputed`` in ``frame`` (earnings
    spread over a collector gap), or None when the frame has no flag. The harness does not score them."""
    if "imputed" not in frame.columns:
        return None
    flagged = pd.DatetimeIndex(frame.loc[frame["imputed"].fillna(False).astype(bool), "ts"])
    return pd.DatetimeIndex(ts).isin(flagged)


def _default_validation_hours(config: ModelConfig, rows: int) -> int:
    """The model's own validation length for ``rows`` training hours (see ``EarningsPredictor.fit``)."""
    window = min(rows, config.max_train_hours)
    return int(config.validation_hours or max(config.min_validation_hours, round(config.validation_fraction * window)))


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


def fit_frozen_ets(earnings: np.ndarray, holdout_start: int, calibration_hours: int) -> tuple[Any | None, str | None]:
    """(FrozenETS, note): the ``ets`` peer's AutoETS fitted once on the last 4 weeks before the interval
    calibration window (before the holdout when the history is too short for that, said in the note), so
    neither the holdout nor, when possible, the calibration origins were seen by the fit. None when it
    cannot be fitted: ``ets`` then serves (and is ranked as) the refit."""
    from earnopt_assets.forecasting.candidates import InsufficientHistory, fill_gaps
    from earnopt_assets.forecasting.model.ets import ETS_WINDOW_HOURS, FrozenETS

    end = holdout_start - calibration_hours
    note = None
    if end < ETS_WINDOW_HOURS:
        end = holdout_start
        note = "frozen ETS parameters fitted on the hours up to the holdout, including the interval calibration window (history too short to keep it out)"
    if end < ETS_WINDOW_HOURS:
        return None, f"no frozen ETS parameters: {end} h before the holdout, the fit needs {ETS_WINDOW_HOURS} h; ets refits per request"
    try:
        ets = FrozenETS.fit(fill_gaps(np.asarray(earnings[:end], dtype=float)))
    except InsufficientHistory:
        ets = None
    if ets is None:
        return None, "no frozen ETS parameters: the AutoETS fit failed or the window is flat; ets refits per request"
    return ets, note


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
    from earnopt_assets.forecasting.warmup import history_hours, young_holdout_days

    # a young series (#17) is judged on a shorter holdout (>= 3 days), every candidate on the same origins
    holdout_days = young_holdout_days(history_hours(features["ts"]) if len(features) else 0.0, settings.min_holdout_days)
    train, holdout = split_holdout(features, settings.holdout_fraction, holdout_days)
    from earnopt_assets.forecasting.warmup import YOUNG_VALIDATION_HOURS, model_lag_hours

    # calibration origins only where the LSTM can forecast (past its own lag history, a day of slack): on a
    # young series the 14 calibration days would otherwise start before the model's first possible origin
    usable_days = (len(train) - model_lag_hours(settings.sequence_length) - HORIZON_HOURS) // 24
    if usable_days < settings.calibration_days:
        notes_young = f"calibration shortened to {max(1, usable_days)} days: the LSTM forecasts only after {model_lag_hours(settings.sequence_length)} h of history"
        settings = replace(settings, calibration_days=max(1, usable_days))
    else:
        notes_young = ""
    if holdout_days < settings.min_holdout_days:  # young: the model validates on 3 days too (forecasting.warmup)
        settings = replace(settings, model_options={"min_validation_hours": YOUNG_VALIDATION_HOURS, **settings.model_options})
    holdout_start = pd.Timestamp(holdout["ts"].iloc[0])
    notes: list[str] = [notes_young] if notes_young else []

    champion_version = current_version(models_dir, protocol)
    champion: EarningsPredictor | None = None
    if champion_version is not None:
        try:
            champion = load_model(models_dir, protocol, champion_version)
        except (ModelLoadError, OSError, ValueError) as exc:
            notes.append(f"champion {champion_version} could not be loaded ({exc}); judged without it and it cannot serve")
            champion_version = None
    config = settings.model_config(protocol, timezone, host_totals)
    challenger: EarningsPredictor | None = EarningsPredictor(config)
    calibration_hours = settings.calibration_days * 24
    started = time.perf_counter()
    default_validation = _default_validation_hours(config, len(train))
    try:
        # the interval calibration origins (just before the holdout) must be forecasts of weights never fitted on them
        try:
            challenger.fit(train, warm_start=champion, validation_hours=max(default_validation, calibration_hours + HORIZON_HOURS))
        except InsufficientHistoryError:  # too short for that validation: the model's own, and say the calibration overlaps training
            challenger.fit(train, warm_start=champion, validation_hours=default_validation)
            notes.append(f"history too short to keep the {settings.calibration_days} calibration days out of the challenger's training: its intervals may be too narrow")
    except SequenceValidationError as exc:  # too little clean history for the network: the candidates still compete
        notes.append(f"no challenger: the LSTM could not be trained on {len(train)} training rows ({exc})")
        challenger = None
    training_seconds = time.perf_counter() - started

    ts, earnings, allocation = hourly_series(features)
    start_index = int(np.searchsorted(ts, holdout_start.to_datetime64()))
    batch = {LSTM_SOURCE: challenger.batch_forecaster()} if challenger is not None else {}
    if champion is not None:
        batch[CHAMPION_KEY] = champion.batch_forecaster()
    frozen_ets, ets_note = fit_frozen_ets(earnings, start_index, calibration_hours)
    if ets_note:
        notes.append(ets_note)
    started = time.perf_counter()
    result, intervals = score_with_calibrated_intervals(
        ts, earnings, allocation, start_index, statistical_candidates(frozen_ets=frozen_ets),
        calibration_hours=calibration_hours, batch_forecasters=batch, unscored=imputed_on_grid(features, ts),
    )
    scoring_seconds = time.perf_counter() - started
    total = len(result.origins)
    scores = {name: score_row(score, total) for name, score in result.scores.items()}

    verdict = judge_challenger(scores, target_pct=settings.mape_target_pct, champion_version=champion_version)
    if challenger is None:
        verdict = replace(verdict, reasons=(notes[-1] + "; " + verdict.summary,))
    saved = None if challenger is None else challenger.save(
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
        promote=False,  # CURRENT moves only on the verdict, below
    )
    challenger_version = None if saved is None else saved.name
    if verdict.promote and challenger_version is not None:
        set_current(models_dir, protocol, challenger_version)
    serving_champion = challenger_version if verdict.promote else champion_version
    champion_key = LSTM_SOURCE if verdict.promote else CHAMPION_KEY
    serving_scores = {k: v for k, v in scores.items() if k not in (LSTM_SOURCE, CHAMPION_KEY)}
    if serving_champion is not None and champion_key in scores:
        serving_scores[LSTM_SOURCE] = scores[champion_key]
    served_model = challenger if verdict.promote else champion
    # a champion whose network correction got weight 0 on validation serves its statistical base alone: say so
    lstm_name = LSTM_BASE_SOURCE if served_model is not None and served_model.blend == 0.0 else LSTM_SOURCE
    decision = choose_source(protocol, serving_scores, target_pct=settings.mape_target_pct, champion_version=serving_champion, lstm_name=lstm_name)
    decision.scores = scores
    if frozen_ets is not None and FROZEN_ETS_KEY in scores:
        decision.ets = frozen_ets_block(frozen_ets)
    served_key = champion_key if decision.source in (LSTM_SOURCE, LSTM_BASE_SOURCE) else decision.source
    if decision.source == ETS_SOURCE and decision.ets is not None:
        served_key = FROZEN_ETS_KEY  # its intervals and holdout column are the frozen form's: what serves
    if served_key in intervals:
        decision.intervals = intervals[served_key].to_json()
    served_coverage = scores.get(served_key, {}).get("coverage_80_pct")
    if served_coverage is not None and served_coverage < MIN_HOLDOUT_COVERAGE_80_PCT:
        notes.append(
            f"the served {decision.source} 80 % interval covered {served_coverage:.0f} % of the holdout hours "
            f"(calibrated on the {settings.calibration_days} days before it): the intervals are too narrow for this period"
        )
    decision.holdout_start = str(holdout_start)
    decision.training = {**verdict.to_json(), "challenger_version": challenger_version, "trained_at": decision.decided_at, "notes": notes}
    write_serving_decision(models_dir, decision)

    roles = {LSTM_SOURCE: "challenger", CHAMPION_KEY: f"champion {champion_version}" if champion_version else "champion"}
    table = result.table().rename(columns={"origins": "origins_n"})
    table.insert(1, "role", [roles.get(n, "statistical") for n in table["candidate"]])
    table.insert(2, "serves", [(n == served_key) for n in table["candidate"]])
    facts = {} if challenger is None else {
        "epochs_run": challenger.epochs_run,
        "parameter_count": challenger.parameter_count(),
        "lstm_correction_weight": challenger.blend,
        "best_val_loss": float(min(challenger.history.get("val_loss") or [float("nan")])),
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
        served_column=served_key,
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
    elif decision.source in (LSTM_SOURCE, LSTM_BASE_SOURCE):
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
                protocol, origin, pd.DatetimeIndex(frame["target_ts"]), values, decision.source, version, decision.reason,
                _intervals(decision, values), decision.below_target, decision.mape_pct,
            )
        except SequenceValidationError as exc:
            why = f"data_too_short: {decision.source} serves but {exc}"
        except (ModelLoadError, OSError, ValueError) as exc:
            why = f"model_error: {decision.source} champion {version} unusable: {exc}"
    elif decision.source != FALLBACK_SOURCE:
        candidate = statistical_candidates().get(decision.source)
        reason = decision.reason
        if decision.source == ETS_SOURCE:  # what was scored as the served ets: the frozen parameters, else the refit
            frozen, refit_why = frozen_ets_of(decision)
            if frozen is not None:
                candidate = frozen_ets_forecaster(frozen)
            else:
                reason = f"{reason}; {refit_why}"
        try:
            if candidate is None:
                raise ValueError(f"unknown candidate {decision.source!r}")
            context = OriginContext.from_frame(telemetry)
            values = np.clip(np.nan_to_num(np.asarray(candidate(context), dtype=float), nan=0.0), 0.0, None)
            targets = pd.DatetimeIndex(context.target_ts)
            return ProtocolForecast(
                protocol, origin, targets, values, decision.source, None, reason,
                _intervals(decision, values), decision.below_target, decision.mape_pct,
            )
        except ValueError as exc:  # InsufficientHistory is a ValueError
            why = f"data_too_short: {decision.source} serves but cannot run on this history: {exc}"
    else:
        why = decision.reason
    from earnopt_assets.forecasting.warmup import warmup_forecast

    # a young series (#17): recent_level / seasonal_naive_24 below 7 days, the statistical step until a run decides
    step = warmup_forecast(telemetry, decided=decision is not None, why=why)
    if step is not None:
        return ProtocolForecast(protocol, origin, step.targets, step.values, step.source, None, step.reason, step.intervals, True, None)
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


@dataclass
class ForecastRun:
    """One forecast of every enabled protocol: the rows for the ``forecasts`` table and who served what."""

    rows: pd.DataFrame
    served: list[dict[str, Any]]
    without_telemetry: list[str]

    @property
    def below_target(self) -> list[str]:
        """Protocols served below target (or not at all, for lack of telemetry)."""
        return [r["protocol"] for r in self.served if r["below_target"]] + self.without_telemetry


def forecast_all(
    telemetry: pd.DataFrame,
    protocols: list[str],
    models_dir: str | Path,
    planned: Mapping[str, float],
    forecast_time: Any,
    device: str,
    priors: Mapping[str, float] | None = None,
) -> ForecastRun:
    """:func:`forecast_protocol` for each protocol with telemetry, assembled as ``forecasts`` rows; a protocol
    without telemetry gets the ``prior`` step from ``priors`` ($/h at full allocation, the catalog's, #17)."""
    from earnopt_assets.forecasting.store import forecast_rows

    parts, served, skipped = [], [], []
    for protocol in protocols:
        series = telemetry.loc[telemetry["protocol"] == protocol] if not telemetry.empty else telemetry
        if series.empty:
            skipped.append(protocol)
            if priors is not None and protocol in priors:
                from earnopt_assets.forecasting.warmup import prior_forecast

                step = prior_forecast(priors[protocol], planned.get(protocol), pd.Timestamp(forecast_time))
                result = ProtocolForecast(protocol, pd.Timestamp(forecast_time).floor("h"), step.targets, step.values, step.source,
                                          None, step.reason, step.intervals, True, None)
                parts.append(
                    forecast_rows(forecast_time, device, protocol, result.origin_ts, result.targets, result.values, result.source,
                                  None, result.reason, result.intervals, True)
                )
                served.append(forecast_summary_row(result, planned.get(protocol)))
            continue
        result = forecast_protocol(series, protocol, models_dir, planned_allocation=planned.get(protocol))
        parts.append(
            forecast_rows(forecast_time, device, protocol, result.origin_ts, result.targets, result.values, result.source,
                          result.model_version, result.reason, result.intervals, result.below_target)
        )
        served.append(forecast_summary_row(result, planned.get(protocol)))
    return ForecastRun(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(), served, skipped)
