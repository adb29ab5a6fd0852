"""Asset group: forecasting. Thin Dagster wiring around :mod:`earnopt_assets.forecasting`.

* ``earnings_model`` — one LSTM per protocol (static partitions = the catalog's protocol names, read when
  the code location loads; add a protocol to the catalog and reload the location to get its partition).
  Reads the protocol's Parquet feature snapshot (never the warehouse), so training holds no DuckDB lock.
* ``mape_within_target`` — blocking check per partition: holdout MAPE < target (default 15 %) AND model
  MAPE <= the better seasonal-naive baseline. The result is stored with the model (``metadata.json``),
  where ``earnings_forecast`` reads it.
* ``earnings_forecast`` — next 24 h of every enabled protocol into the DuckDB ``forecasts`` table, LSTM
  or seasonal-naive fallback. Refreshes by declarative automation when ``raw_earnings`` or a model
  updates (needs the daemon in a deployment; tests evaluate the condition directly).
* ``daily_model_retrain`` schedule and ``model_retrain_sensor`` (failed check, or live MAPE over the last
  48 h > 1.5 x holdout MAPE).

TensorFlow is imported only inside the training/forecasting functions, never when this module loads.
"""


import logging
import warnings
from datetime import datetime, timezone

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from earnopt_assets.catalog import load_catalog
from earnopt_assets.forecasting.registry import DEFAULT_MAPE_TARGET_PCT, judge_mape, read_model_summary, record_mape_check
from earnopt_assets.forecasting.retrain import RetrainRequest, retrain_requests
from earnopt_assets.forecasting.store import ensure_forecasts_table, forecast_rows, read_planned_allocations, read_recent_telemetry, write_forecasts
from earnopt_assets.forecasting.training import TrainingSettings, forecast_protocol, holdout_plot_markdown, metrics_table, train_protocol
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL

log = logging.getLogger(__name__)

GROUP = "forecasting"
# Recent telemetry the forecast reads: window (24) + lag-168 history + slack for the EMA to settle.
FORECAST_HISTORY_HOURS = 24 * 10
DAILY_RETRAIN_EPOCHS = 60
FULL_TRAINING_EPOCHS = 100
FULL_TRAINING_RUN_CONFIG = {"ops": {"earnings_model": {"config": {"epochs": FULL_TRAINING_EPOCHS}}}}


def _protocol_names() -> list[str]:
    return load_catalog().names


protocol_partitions = dg.StaticPartitionsDefinition(_protocol_names())


class EarningsModelConfig(dg.Config):
    """Training run config. Defaults are the demo profile (all 12 protocols in a few minutes on 2 cores);
    the "full" profile is ``epochs: 100`` (early stopping usually ends it sooner)."""

    epochs: int = Field(30, ge=1, description="Max epochs (EarlyStopping patience 10 restores the best).")
    batch_size: int = Field(64, ge=1)
    sequence_length: int = Field(24, ge=2, description="Hours per input window.")
    lstm_units_1: int = Field(128, ge=1)
    lstm_units_2: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    validation_split: float = Field(0.2, gt=0, lt=0.5, description="Most recent share of training windows that validates.")
    patience: int = Field(10, ge=1)
    seed: int = 7
    holdout_fraction: float = Field(0.2, gt=0, lt=0.5)
    min_holdout_days: int = Field(7, ge=1)
    mape_target_pct: float = Field(DEFAULT_MAPE_TARGET_PCT, gt=0)

    def settings(self) -> TrainingSettings:
        return TrainingSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            sequence_length=self.sequence_length,
            lstm_units=(self.lstm_units_1, self.lstm_units_2),
            dropout=self.dropout,
            learning_rate=self.learning_rate,
            validation_split=self.validation_split,
            patience=self.patience,
            seed=self.seed,
            holdout_fraction=self.holdout_fraction,
            min_holdout_days=self.min_holdout_days,
            mape_target_pct=self.mape_target_pct,
        )


class MapeCheckConfig(dg.Config):
    mape_target_pct: float = Field(DEFAULT_MAPE_TARGET_PCT, gt=0, description="Holdout MAPE must be below this (percent).")


def _metric(evaluation: dict, name: str, key: str) -> float | None:
    value = (evaluation.get(name) or {}).get(key)
    return None if value is None else float(value)


@dg.asset(
    group_name=GROUP,
    partitions_def=protocol_partitions,
    deps=[dg.AssetKey("earnings_features")],
    kinds={"keras", "tensorflow"},
)
def earnings_model(context: dg.AssetExecutionContext, config: EarningsModelConfig, earnopt: EarnoptResource) -> dg.MaterializeResult:
    """Per-protocol LSTM (LSTM 128 -> Dropout -> LSTM 64 -> Dropout -> Dense) that forecasts hourly earnings.

    Learns the residual over a fitted seasonal base (blend of same hour yesterday, same hour last week and
    24 h mean x hour-of-week profile), on 24 h windows of the shared features. Trains on the protocol's
    feature snapshot minus the most recent 20 % (>= 7 days), which is the holdout: rolling-origin 24 h
    recursive forecasts every 24 h, scored with MSE/MAE/RMSE/MAPE/R² against the seasonal-naive baselines.
    Saved atomically under ``models/<protocol>/`` (``.keras`` + JSON). Details: docs/MODELS.md.
    """
    from earnopt_assets.ingestion.feature_store import read_feature_snapshot

    catalog = earnopt.catalog()
    protocol = catalog.require(context.partition_key).name
    paths = earnopt.paths
    features = read_feature_snapshot(paths.features_dir, protocol, catalog)
    features = features.loc[features["device"] == catalog.host.device].reset_index(drop=True)
    settings = config.settings()
    report = train_protocol(
        features,
        protocol,
        paths.models,
        settings,
        timezone=catalog.host.timezone,
        host_totals=catalog.host.totals(),
    )
    predictor, evaluation = report.predictor, report.evaluation
    context.log.info(
        "%s: model MAPE %.2f%% vs %s %.2f%%; check %s",
        protocol, evaluation["model"]["mape"] or float("nan"), report.check.baseline,
        report.check.baseline_mape or float("nan"), "passed" if report.check.passed else f"failed ({'; '.join(report.check.reasons)})",
    )
    metadata: dict[str, object] = {
        "protocol": protocol,
        "model_version": predictor.version,
        "model_dir": dg.MetadataValue.path(str(report.version_dir)),
        "epochs_run": predictor.epochs_run,
        "epochs_max": settings.epochs,
        "training_seconds": round(report.training_seconds, 2),
        "parameter_count": predictor.parameter_count(),
        "train_rows": report.train_rows,
        "holdout_rows": report.holdout_rows,
        "holdout_start": str(report.holdout_start),
        "forecast_origins": evaluation["origins"],
        "best_val_loss": float(min(predictor.history.get("val_loss", [float("nan")]))),
        "base_weights_lag24_lag168_profile": dg.MetadataValue.json(predictor.config.base_weights),
        "better_baseline": evaluation["better_baseline"],
        "check_passed_at_training": report.check.passed,
        "metrics": dg.MetadataValue.md(metrics_table(evaluation)),
        "holdout_plot": dg.MetadataValue.md(holdout_plot_markdown(predictor.last_evaluation, protocol)),
    }
    for name, prefix in (("model", "model"), ("seasonal_naive_24", "naive24"), ("seasonal_naive_168", "naive168")):
        for key in ("mape", "mae", "rmse", "r2", "mse"):
            value = _metric(evaluation, name, key)
            if value is not None:
                metadata[f"{prefix}_{key}"] = value
    metadata["mape_skipped_zero_actuals"] = evaluation["model"]["mape_skipped"]
    return dg.MaterializeResult(metadata=metadata)


def _mape_within_target(context: dg.AssetCheckExecutionContext, config: MapeCheckConfig, earnopt: EarnoptResource) -> dg.AssetCheckResult:
    """Holdout MAPE below the target (default 15 %, the seed's "accuracy > 85 %") AND no worse than the
    better seasonal-naive baseline. A failure keeps this protocol's forecasts on the fallback."""
    catalog = earnopt.catalog()
    protocol = catalog.require(context.partition_key).name
    summary = read_model_summary(earnopt.paths.models, protocol)
    if summary is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{protocol}: no saved model to check",
            metadata={"protocol": protocol},
        )
    outcome = judge_mape(summary["metrics"], config.mape_target_pct)
    record_mape_check(earnopt.paths.models, protocol, summary["version"], outcome)
    description = (
        f"{protocol}: holdout MAPE {outcome.model_mape:.2f}% < {outcome.threshold:g}% and <= {outcome.baseline} "
        f"({outcome.baseline_mape:.2f}%)"
        if outcome.passed
        else f"{protocol}: " + "; ".join(outcome.reasons) + " -> forecasts use the seasonal-naive fallback"
    )
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "protocol": protocol,
            "model_version": summary["version"],
            "model_mape": outcome.model_mape,
            "target_mape": outcome.threshold,
            "better_baseline": outcome.baseline,
            "baseline_mape": outcome.baseline_mape,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in outcome.reasons) or "_all criteria met_"),
        },
    )


# Partitioned asset checks are a Dagster preview feature; without this its warning prints on every import
# of the code location (CLI, UI, each step process).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    mape_within_target = dg.asset_check(
        asset=earnings_model, blocking=True, partitions_def=protocol_partitions, name="mape_within_target"
    )(_mape_within_target)


# Refresh whenever telemetry or any model partition updates. Unlike plain eager(), missing model
# partitions do not block it: a protocol without a model simply gets the fallback forecast.
FORECAST_AUTOMATION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("earnings_model"))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("eager, tolerant of missing models")


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    deps=[dg.AssetKey("raw_earnings"), earnings_model],
    automation_condition=FORECAST_AUTOMATION,
    kinds={"duckdb", "keras"},
)
def earnings_forecast(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Next 24 hourly earnings of every enabled protocol, appended to the DuckDB table ``forecasts``.

    ``source = 'lstm'`` when the protocol's model exists, passed ``mape_within_target`` and the last
    ``24 + 168`` h of telemetry are complete; otherwise ``seasonal_naive_fallback`` (same hour on the most
    recent earlier day) with the reason. Reads the last 240 h of ``raw_earnings`` and the planned shares in
    ``allocation_state`` (if that table exists) in one short connection; models are loaded and run with the
    connection closed. LSTM forecasts are conditional on the allocation that will run: the protocol's
    ``allocation_state`` share for all 24 hours, else its last observed allocation held.
    """
    catalog = earnopt.catalog()
    device = catalog.host.device
    protocols = [catalog.require(name).name for name in catalog.enabled_names]
    with duckdb.get_connection() as conn:
        telemetry = read_recent_telemetry(conn, device, protocols, FORECAST_HISTORY_HOURS)
        planned = read_planned_allocations(conn, device, protocols)
    forecast_time = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    parts, summary_rows, skipped = [], [], []
    for protocol in protocols:
        series = telemetry.loc[telemetry["protocol"] == protocol]
        if series.empty:
            skipped.append(protocol)
            continue
        result = forecast_protocol(series, protocol, earnopt.paths.models, planned_allocation=planned.get(protocol))
        parts.append(
            forecast_rows(forecast_time, device, protocol, result.origin_ts, result.targets, result.values, result.source, result.model_version, result.reason)
        )
        summary_rows.append(
            {
                "protocol": protocol,
                "source": result.source,
                "next_24h_usd": round(float(result.values.sum()), 6),
                "allocation": "" if protocol not in planned else f"{planned[protocol]:.3f} (allocation_state)",
                "model_version": result.model_version or "",
                "reason": (result.reason or "")[:120],
            }
        )
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    with duckdb.get_connection() as conn:
        ensure_forecasts_table(conn)
        written = write_forecasts(conn, rows)
    summary = pd.DataFrame(summary_rows, columns=["protocol", "source", "next_24h_usd", "model_version", "reason"])
    lines = ["| protocol | source | next 24 h USD | model version | reason |", "|---|---|---|---|---|"]
    lines += [f"| {r.protocol} | {r.source} | {r.next_24h_usd:.4f} | {r.model_version} | {r.reason.replace('|', '/')} |" for r in summary.itertuples()]
    return dg.MaterializeResult(
        metadata={
            "forecast_time": str(forecast_time),
            "rows_written": written,
            "protocols_forecast": len(summary),
            "lstm_protocols": int((summary["source"] == "lstm").sum()),
            "fallback_protocols": int((summary["source"] != "lstm").sum()),
            "protocols_without_telemetry": dg.MetadataValue.json(skipped),
            "forecasts": dg.MetadataValue.md("\n".join(lines)),
        }
    )


retrain_job = dg.define_asset_job(
    "retrain_earnings_models",
    selection=dg.AssetSelection.assets(earnings_model),
    partitions_def=protocol_partitions,
    description="Retrain one protocol's LSTM (with its blocking MAPE check).",
)


def _run_config(epochs: int) -> dict:
    return {"ops": {"earnings_model": {"config": {"epochs": epochs}}}}


@dg.schedule(job=retrain_job, cron_schedule="30 2 * * *", execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
def daily_model_retrain(context: dg.ScheduleEvaluationContext, earnopt: EarnoptResource) -> list[dg.RunRequest]:
    """Every day at 02:30 UTC: retrain every enabled protocol that has a partition (60 max epochs)."""
    catalog = earnopt.catalog()
    known = set(protocol_partitions.get_partition_keys())
    day = (context.scheduled_execution_time or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"daily:{day}:{name}", partition_key=name, run_config=_run_config(DAILY_RETRAIN_EPOCHS), tags={"earnopt/retrain": "daily"})
        for name in catalog.enabled_names
        if name in known
    ]


@dg.sensor(job=retrain_job, minimum_interval_seconds=900, default_status=dg.DefaultSensorStatus.RUNNING)
def model_retrain_sensor(context: dg.SensorEvaluationContext, earnopt: EarnoptResource) -> dg.SensorResult | dg.SkipReason:
    """Retrain a protocol whose MAPE check failed (model at least 6 h old) or whose live MAPE over the last
    48 h exceeds 1.5 x its holdout MAPE. One request per model version and reason (run key)."""
    catalog = earnopt.catalog()
    known = set(protocol_partitions.get_partition_keys())
    requests: list[RetrainRequest] = retrain_requests(catalog, earnopt.paths, now=datetime.now(timezone.utc))
    runs = [
        dg.RunRequest(
            run_key=request.run_key,
            partition_key=request.protocol,
            run_config=_run_config(DAILY_RETRAIN_EPOCHS),
            tags={"earnopt/retrain": request.reason},
        )
        for request in requests
        if request.protocol in known
    ]
    if not runs:
        return dg.SkipReason("every model passed its check and no live error drifted")
    context.log.info("retrain requests: %s", [(r.protocol, r.reason, r.detail) for r in requests])
    return dg.SensorResult(run_requests=runs)


assets: list = [earnings_model, earnings_forecast]
asset_checks: list = [mape_within_target]
jobs: list = [retrain_job]
schedules: list = [daily_model_retrain]
sensors: list = [model_retrain_sensor]
