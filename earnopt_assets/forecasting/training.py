"""Train, evaluate and use one protocol's predictor: the logic behind the forecasting assets.

Holdout: the most recent ``max(20 %, 7 days)`` of a protocol's feature rows; the model trains on the rest
(its last 20 % of windows validates, chronologically) and is scored on the holdout with rolling-origin
24-hour forecasts, one origin every 24 h, against the seasonal-naive baselines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.defs.render import figure_markdown, pyplot
from earnopt_assets.numerics.baselines import fallback_forecast
from earnopt_assets.numerics.metrics import METRIC_NAMES
from earnopt_assets.forecasting.predictor import (
    HORIZON_HOURS,
    EarningsPredictor,
    ModelLoadError,
    SequenceValidationError,
)
from earnopt_assets.forecasting.registry import (
    DEFAULT_MAPE_TARGET_PCT,
    MapeCheckOutcome,
    check_passed,
    judge_mape,
    read_model_summary,
)

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT_DAYS = 7
FALLBACK_SOURCE = "seasonal_naive_fallback"
LSTM_SOURCE = "lstm"


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
    mape_target_pct: float = DEFAULT_MAPE_TARGET_PCT


@dataclass
class TrainingReport:
    protocol: str
    predictor: EarningsPredictor
    evaluation: dict[str, Any]
    check: MapeCheckOutcome
    training_seconds: float
    train_rows: int
    holdout_rows: int
    holdout_start: pd.Timestamp
    version_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


def train_protocol(
    features: pd.DataFrame,
    protocol: str,
    models_dir: str | Path | None,
    settings: TrainingSettings,
    *,
    timezone: str = "UTC",
    host_totals: Mapping[str, float] | None = None,
    save: bool = True,
) -> TrainingReport:
    """Train on all but the holdout, score on the holdout, judge the MAPE check, save (atomically)."""
    train, holdout = split_holdout(features, settings.holdout_fraction, settings.min_holdout_days)
    predictor = EarningsPredictor(
        protocol,
        settings.sequence_length,
        models_dir,
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
    started = time.perf_counter()
    predictor.train(train, settings.epochs, settings.batch_size, settings.validation_split)
    seconds = time.perf_counter() - started
    evaluation = predictor.evaluate(holdout, context=train)
    check = judge_mape(evaluation, settings.mape_target_pct)
    report = TrainingReport(
        protocol=protocol,
        predictor=predictor,
        evaluation=evaluation,
        check=check,
        training_seconds=seconds,
        train_rows=len(train),
        holdout_rows=len(holdout),
        holdout_start=pd.Timestamp(holdout["ts"].iloc[0]),
    )
    if save and models_dir is not None:
        report.version_dir = predictor.save(
            extra_metadata={
                "mape_check": check.to_json(),
                "holdout_start": str(report.holdout_start),
                "train_rows": report.train_rows,
                "holdout_rows": report.holdout_rows,
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
            }
        )
    return report


def metrics_table(evaluation: Mapping[str, Any]) -> str:
    """Markdown table: one row per forecaster (model and both baselines), one column per metric."""
    header = "| forecaster | " + " | ".join(m.upper() if m != "r2" else "R²" for m in METRIC_NAMES) + " | hours | zero actuals skipped |"
    lines = [header, "|" + "---|" * (len(METRIC_NAMES) + 3)]
    for name in ("model", "seasonal_naive_24", "seasonal_naive_168"):
        m = evaluation.get(name) or {}
        cells = []
        for key in METRIC_NAMES:
            value = m.get(key)
            cells.append("n/a" if value is None else (f"{value:.2f}%" if key == "mape" else f"{value:.4g}"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m.get('n', 0)} | {m.get('mape_skipped', 0)} |")
    return "\n".join(lines)


def holdout_plot_markdown(table: pd.DataFrame | None, protocol: str) -> str:
    """Forecast vs actual over the holdout as a PNG embedded in markdown (matplotlib, Agg backend)."""
    if table is None or table.empty:
        return "_no holdout forecasts to plot_"
    plt = pyplot()
    ordered = table.sort_values("target_ts")
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=80)
    ax.plot(ordered["target_ts"], ordered["actual"], color="black", linewidth=1.0, label="actual")
    ax.plot(ordered["target_ts"], ordered["model"], color="tab:blue", linewidth=1.0, label="LSTM (24 h recursive)")
    ax.plot(ordered["target_ts"], ordered["seasonal_naive_24"], color="tab:orange", linewidth=0.8, alpha=0.7, label="same hour yesterday")
    for origin in ordered["origin_ts"].unique():
        ax.axvline(origin, color="grey", linewidth=0.3, alpha=0.5)
    ax.set_title(f"{protocol}: holdout forecasts (a new origin every 24 h)")
    ax.set_ylabel("USD / hour")
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return figure_markdown(fig, f"{protocol} holdout forecast vs actual")


@dataclass
class ProtocolForecast:
    protocol: str
    origin_ts: pd.Timestamp
    targets: pd.DatetimeIndex
    values: np.ndarray
    source: str
    model_version: str | None
    reason: str | None


def forecast_protocol(
    telemetry: pd.DataFrame,
    protocol: str,
    models_dir: str | Path,
    predictor_cache: dict[str, EarningsPredictor] | None = None,
    planned_allocation: float | None = None,
) -> ProtocolForecast:
    """Next 24 h of one protocol from its recent raw telemetry: the LSTM if it may be used, else the fallback.

    ``planned_allocation`` is the share the protocol will run at (its ``allocation_state`` row, set by the
    allocator); the LSTM forecast is conditioned on it for all 24 hours. None holds the last observed
    allocation. The fallback (:func:`fallback_forecast`) is used when there is no model, its MAPE check failed or has
    not run, the data is too short or has gaps inside the window, or the model raises.
    """
    if telemetry.empty:
        raise ValueError(f"{protocol}: no telemetry to forecast from")
    telemetry = telemetry.sort_values("ts").reset_index(drop=True)
    origin = pd.Timestamp(telemetry["ts"].iloc[-1])
    summary = read_model_summary(models_dir, protocol)
    reason: str | None = None
    version = summary.get("version") if summary else None
    if summary is None:
        reason = "no_model: no trained model for this protocol"
    elif check_passed(summary) is not True:
        check = summary.get("mape_check") or {}
        why = "; ".join(check.get("reasons") or []) or "check has not passed"
        reason = f"check_failed: {why}"
    else:
        try:
            predictor = (predictor_cache or {}).get(protocol)
            if predictor is None or predictor.version != version:
                predictor = EarningsPredictor.load(models_dir, protocol, version)
                if predictor_cache is not None:
                    predictor_cache[protocol] = predictor
            frame = predictor.forecast_frame(telemetry, allocation_path=planned_allocation)
            return ProtocolForecast(protocol, origin, pd.DatetimeIndex(frame["target_ts"]), frame["value"].to_numpy(), LSTM_SOURCE, version, None)
        except SequenceValidationError as exc:
            reason = f"data_too_short: {exc}"
        except (ModelLoadError, OSError, ValueError) as exc:
            reason = f"model_error: {exc}"
    targets, values = fallback_forecast(telemetry["ts"], telemetry["earnings_usd"].to_numpy(dtype=float), HORIZON_HOURS)
    log.info("%s: seasonal-naive fallback (%s)", protocol, reason)
    return ProtocolForecast(protocol, origin, targets, values, FALLBACK_SOURCE, version, reason)
