"""Asset group: forecasting. Thin Dagster wiring around :mod:`earnopt_assets.forecasting`.

* ``earnings_model`` — one training run per protocol (static partitions = the catalog's protocol names,
  read when the definitions are built, not when this module is imported; reload the code location after
  editing the catalog). Trains a challenger LSTM on the protocol's Parquet feature snapshot (never the
  warehouse, so training holds no DuckDB lock), scores it with every statistical candidate and the current
  champion on the same rolling origins, moves CURRENT only when the challenger wins, and records which
  source serves the protocol and why (:func:`earnopt_assets.forecasting.training.train_protocol`).
* ``mape_within_target`` — blocking check per partition: the challenger's holdout MAPE < target (default
  15 %) AND no worse than the best statistical candidate. A failed challenger never becomes champion.
* ``earnings_forecast`` — next 24 h of every enabled protocol into the DuckDB ``forecasts`` table from the
  decided source, with 80/95 % intervals; its check ``all_protocols_meet_target`` (WARN) fails naming every
  protocol served below target. Refreshes by declarative automation when ``raw_earnings`` or a model updates.
* ``daily_model_retrain`` schedule and ``model_retrain_sensor`` (failed check once the run is >= 6 h old,
  or live MAPE over the last 48 h > 1.5 x holdout MAPE); every skip reason names each protocol's state.

TensorFlow is imported only inside the training/forecasting functions, never when this module loads.
"""

import functools
import logging
import warnings
from datetime import UTC, datetime
from types import SimpleNamespace

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from earnopt_assets.defs import render
from earnopt_assets.forecasting.registry import DEFAULT_MAPE_TARGET_PCT, judge_challenger, read_serving_decision
from earnopt_assets.forecasting.retrain import retrain_plan
from earnopt_assets.forecasting.store import (
    ensure_forecasts_table,
    read_planned_allocations,
    read_recent_telemetry,
    write_forecasts,
)
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL

log = logging.getLogger(__name__)

GROUP = "forecasting"
# Recent telemetry the forecast reads: window (24) + lag-168 history + slack for the EMA to settle.
FORECAST_HISTORY_HOURS = 24 * 10
DAILY_RETRAIN_EPOCHS = 60
FULL_TRAINING_EPOCHS = 100
FULL_TRAINING_RUN_CONFIG = {"ops": {"earnings_model": {"config": {"epochs": FULL_TRAINING_EPOCHS}}}}
ALL_PROTOCOLS_MEET_TARGET = "all_protocols_meet_target"


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
    calibration_days: int = Field(14, ge=1, description="Days of origins before the holdout that calibrate the 80/95 % intervals (kept inside the challenger's validation period, never trained on).")
    mape_target_pct: float = Field(DEFAULT_MAPE_TARGET_PCT, gt=0)

    def settings(self):
        from earnopt_assets.forecasting.training import TrainingSettings

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
            calibration_days=self.calibration_days,
            mape_target_pct=self.mape_target_pct,
        )


class MapeCheckConfig(dg.Config):
    mape_target_pct: float | None = Field(
        None, gt=0, description="Judge the recorded challenger scores against this target (percent); unset = the training run's target."
    )


def _decisions(earnopt: EarnoptResource) -> dict:
    catalog = earnopt.catalog()
    return {name: read_serving_decision(earnopt.paths.models, catalog.require(name).name) for name in catalog.enabled_names}


def _model_metadata(report, decisions: dict) -> dict[str, object]:
    """earnings_model metadata, the one-line summary of every protocol's check first."""
    verdict, decision = report.verdict, report.decision
    return {
        "summary": render.forecast_check_summary(decisions),
        "decision": dg.MetadataValue.md(
            f"**{report.protocol}**: {verdict.summary}.\n\n**Serves:** `{decision.source}` — {decision.reason}."
            + ("".join(f"\n\n_Note:_ {note}" for note in report.notes))
        ),
        "serves": decision.source,
        "below_target": bool(decision.below_target),
        "check_passed": bool(verdict.check.passed),
        "promoted": bool(verdict.promote),
        "challenger_version": report.challenger_version,
        "champion_version": decision.champion_version or "none",
        "metrics": render.table_metadata(
            render.forecast_scores_frame(report.scores),
            descriptions={"mape_%": "holdout MAPE, zero actuals skipped", "mase": "MAE / in-sample MAE of same-hour-yesterday",
                          "coverage_80_%": "share of holdout actuals inside the 80 % interval (calibrated before the holdout)"},
        ),
        "holdout_plot": dg.MetadataValue.md(render.forecast_holdout_plot(report.holdout, report.protocol, decision.source, report.served_column)),
        "protocols": render.table_metadata(render.forecast_decisions_frame(decisions)),
        "training_seconds": round(report.training_seconds, 2),
        "scoring_seconds": round(report.scoring_seconds, 2),
        "train_rows": report.train_rows,
        "holdout_rows": report.holdout_rows,
        "holdout_start": str(report.holdout_start),
        **{k: v for k, v in report.model_facts.items() if v is not None and v == v},
    }


def _readiness(paths, device: str, protocol: str, features=None):
    """How far a protocol is from the LSTM's minimum history (forecasting.warmup, #17)."""
    import pandas as pd

    from earnopt_assets.forecasting.warmup import training_readiness
    from earnopt_assets.ingestion.feature_store import read_history_hours

    return training_readiness(features if features is not None else pd.DataFrame(), read_history_hours(paths.features_dir, device, protocol))


def _warmup_metadata(readiness, decisions: dict) -> dict[str, object]:
    """earnings_model metadata of a partition that is still warming up (no training this run)."""
    return {
        "status": "warming up",
        "warming_up": readiness.summary,
        "rule": dg.MetadataValue.md(readiness.rule),
        "history_days": dg.MetadataValue.float(round(readiness.history_hours / 24, 1)),
        "needed_days": dg.MetadataValue.float(readiness.needed_hours / 24),
        "serving_now": readiness.serving_now,
        "next": dg.MetadataValue.md("The daily retrain (02:30 UTC) trains it on the first day the rule is met; until then "
                                    "earnings_forecast serves the warm-up step named in each row's `source`."),
        "protocols": render.table_metadata(render.forecast_decisions_frame(decisions)),
    }


def _mape_within_target(context: dg.AssetCheckExecutionContext, config: MapeCheckConfig, earnopt: EarnoptResource) -> dg.AssetCheckResult:
    """The latest challenger's holdout MAPE is below the target (default 15 %, the seed's "accuracy > 85 %")
    AND no worse than the best statistical candidate. A failing challenger is never promoted: the champion
    (or the best statistical candidate) keeps serving, as the metadata says."""
    catalog = earnopt.catalog()
    protocol = catalog.require(context.partition_key).name
    decision = read_serving_decision(earnopt.paths.models, protocol)
    training = (decision.training or {}) if decision is not None else {}
    if not training:
        readiness = _readiness(earnopt.paths, catalog.host.device, protocol)
        if not readiness.ready:  # not yet, not wrong (#17): WARN with the progress and the rule
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description=f"{protocol}: {readiness.summary}; {readiness.rule}",
                                       metadata={"protocol": protocol, "warming_up": readiness.summary})
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=f"{protocol}: no training run recorded", metadata={"protocol": protocol})
    check = training.get("check") or {}
    if config.mape_target_pct is not None and config.mape_target_pct != check.get("threshold"):
        # the same recorded scores, judged against the asked target (promotion was decided at training time)
        check = judge_challenger(decision.scores, target_pct=config.mape_target_pct, champion_version=decision.champion_version).check.to_json()
    passed = check.get("passed") is True
    reasons = check.get("reasons") or []
    serves = f"{decision.source} serves" + (" (below target)" if decision.below_target else "")
    if passed:
        description = f"{protocol}: challenger MAPE {check.get('model_mape'):.2f}% < {check.get('threshold'):g}% and <= {check.get('baseline')}; {serves}"
    else:
        outcome = "promoted anyway: no candidate meets the target and it is the best" if training.get("promoted") else "not promoted"
        champion = f"champion {decision.champion_version} kept" if decision.champion_version and not training.get("promoted") else ""
        description = f"{protocol}: " + "; ".join(reasons) + f"; {outcome}" + (f"; {champion}" if champion else "") + f"; {serves}"
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "protocol": protocol,
            "challenger_version": str(training.get("challenger_version") or ""),
            "challenger_mape_%": check.get("model_mape"),
            "target_mape_%": check.get("threshold"),
            "best_statistical": str(check.get("baseline") or ""),
            "best_statistical_mape_%": check.get("baseline_mape"),
            "promoted": bool(training.get("promoted")),
            "serves": decision.source,
            "why": dg.MetadataValue.md("\n".join(f"- {r}" for r in [*reasons, *(training.get("reasons") or [])]) or "all criteria met"),
        },
    )


# Refresh whenever telemetry or any model partition updates. Unlike plain eager(), missing model
# partitions do not block it: a protocol without a model simply gets its statistical forecast.
FORECAST_AUTOMATION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("earnings_model"))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("eager, tolerant of missing models")


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    deps=[dg.AssetKey("raw_earnings"), dg.AssetKey("earnings_model")],
    automation_condition=FORECAST_AUTOMATION,
    check_specs=[
        dg.AssetCheckSpec(
            ALL_PROTOCOLS_MEET_TARGET,
            asset="earnings_forecast",
            description="Every enabled protocol is served by a source whose holdout MAPE meets the target (WARN: names the ones below it).",
        )
    ],
    kinds={"duckdb", "keras"},
)
def earnings_forecast(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Next 24 hourly earnings of every enabled protocol, with 80/95 % intervals, appended to ``forecasts``.

    Each protocol's rows come from the source its latest training run decided (the LSTM champion, or the best
    statistical candidate when it forecasts better) and name it in ``source`` with the ``reason``; when that
    source cannot run on the recent telemetry (or no run has decided yet) ``seasonal_naive_fallback`` serves
    and says why. Reads the last 240 h of telemetry and the planned shares in one short connection; models
    run with the connection closed. LSTM forecasts are conditional on the planned allocation.
    """
    from earnopt_assets.forecasting.training import forecast_all

    catalog = earnopt.catalog()
    device = catalog.host.device
    protocols = [catalog.require(name).name for name in catalog.enabled_names]
    with duckdb.get_connection() as conn:
        telemetry = read_recent_telemetry(conn, device, protocols, FORECAST_HISTORY_HOURS)
        planned = read_planned_allocations(conn, device, protocols)
    forecast_time = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    priors = {name: catalog.require(name).prior_expected_usd_per_hour for name in protocols}
    run = forecast_all(telemetry, protocols, earnopt.paths.models, planned, forecast_time, device, priors=priors)
    with duckdb.get_connection() as conn:
        ensure_forecasts_table(conn)
        written = write_forecasts(conn, run.rows)
    served, skipped, below, rows = run.served, run.without_telemetry, run.below_target, run.rows
    serving = render.forecast_serving_frame(served)
    detail = "; ".join(f"{r['protocol']} ({r['source']}: {r['reason']})" for r in served if r["below_target"])
    check = dg.AssetCheckResult(
        check_name=ALL_PROTOCOLS_MEET_TARGET,
        passed=not below,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"all {len(served)} protocols are served by a source that meets its MAPE target"
            if not below
            else f"{len(below)} of {len(protocols)} protocols below target: {', '.join(below)}"
            + (f" (without telemetry: {', '.join(skipped)})" if skipped else "")
        ),
        metadata={"below_target": ", ".join(below) or "none", "details": dg.MetadataValue.md(detail or "none")},
    )
    sources = serving["source"].value_counts().to_dict() if not serving.empty else {}
    return dg.MaterializeResult(
        metadata={
            "summary": (
                f"{len(served)} protocols forecast: " + ", ".join(f"{n} by {s}" for s, n in sorted(sources.items()))
                + (f"; below target: {', '.join(below)}" if below else "; all meet the target")
            ),
            "serving": render.table_metadata(serving, descriptions={"reason": "why this source serves the protocol"}),
            "forecasts": render.table_metadata(render.forecast_rows_frame(rows)),
            "forecast_time": str(forecast_time),
            "rows_written": written,
            "protocols_forecast": len(served),
            "protocols_without_telemetry": ", ".join(skipped) or "none",
        },
        check_results=[check],
    )


def _run_config(epochs: int) -> dict:
    return {"ops": {"earnings_model": {"config": {"epochs": epochs}}}}


@functools.lru_cache(maxsize=8)
def _partitioned(protocol_names: tuple[str, ...]) -> SimpleNamespace:
    """The definitions that need the catalog's protocol names, built for one catalog (see the module doc)."""
    protocol_partitions = dg.StaticPartitionsDefinition(list(protocol_names))

    @dg.asset(
        group_name=GROUP,
        partitions_def=protocol_partitions,
        deps=[dg.AssetKey("earnings_features")],
        kinds={"keras", "tensorflow"},
    )
    def earnings_model(context: dg.AssetExecutionContext, config: EarningsModelConfig, earnopt: EarnoptResource) -> dg.MaterializeResult:
        """One protocol's champion/challenger training run.

        Trains a challenger LSTM (LSTM 128 -> Dropout -> LSTM 64 -> Dropout -> Dense, residual over a seasonal
        base) on the feature snapshot minus the most recent 20 % (>= 7 days), the holdout. The rolling-origin
        harness scores it, every statistical candidate (seasonal naive 24/168, MSTL, ETS) and the current
        champion on the same 24 h origins; CURRENT moves to the challenger only when it is no worse than the
        best statistical candidate and the champion. The source that serves (lowest holdout MAPE, flagged
        below target when none meets it), its scores and 80/95 % interval quantiles are saved as
        ``models/serving/<protocol>.json``. Details: docs/MODELS.md.
        """
        from earnopt_assets.forecasting.training import train_protocol
        from earnopt_assets.ingestion.feature_store import read_feature_snapshot

        catalog = earnopt.catalog()
        protocol = catalog.require(context.partition_key).name
        paths = earnopt.paths
        features = read_feature_snapshot(paths.features_dir, protocol, catalog)
        features = features.loc[features["device"] == catalog.host.device].reset_index(drop=True)
        readiness = _readiness(paths, catalog.host.device, protocol, features)
        if not readiness.ready:  # short history is not a failure (#17): complete without training
            context.log.info("%s: %s (%s)", protocol, readiness.summary, readiness.rule)
            return dg.MaterializeResult(metadata=_warmup_metadata(readiness, _decisions(earnopt)))
        from dataclasses import replace

        from earnopt_assets.forecasting.model.network import lower_training_priority

        # this step's worker yields the CPU to the earning apps and the 15-minute tick (catalog `training`)
        settings = config.settings()
        limits = {"train_threads": catalog.training.threads, "train_nice": catalog.training.nice}
        settings = replace(settings, model_options={**settings.model_options, **limits})
        lower_training_priority(catalog.training.nice)
        report = train_protocol(features, protocol, paths.models, settings, timezone=catalog.host.timezone, host_totals=catalog.host.totals())
        context.log.info("%s: %s; serves %s (%s)", protocol, report.verdict.summary, report.decision.source, report.decision.reason)
        return dg.MaterializeResult(metadata=_model_metadata(report, _decisions(earnopt)))

    # Partitioned asset checks are a Dagster preview feature; without this its warning prints on every
    # build of the code location (CLI, UI, each step process).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        mape_within_target = dg.asset_check(
            asset=earnings_model, blocking=True, partitions_def=protocol_partitions, name="mape_within_target"
        )(_mape_within_target)

    retrain_job = dg.define_asset_job(
        "retrain_earnings_models",
        selection=dg.AssetSelection.assets(earnings_model),
        partitions_def=protocol_partitions,
        description="Retrain one protocol's model (challenger vs champion, with its blocking MAPE check).",
    )

    @dg.schedule(job=retrain_job, cron_schedule="30 2 * * *", execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
    def daily_model_retrain(context: dg.ScheduleEvaluationContext, earnopt: EarnoptResource) -> list[dg.RunRequest]:
        """Every day at 02:30 UTC: retrain every enabled protocol that has a partition (60 max epochs)."""
        catalog = earnopt.catalog()
        known = set(protocol_names)
        day = (context.scheduled_execution_time or datetime.now(UTC)).strftime("%Y-%m-%d")
        return [
            dg.RunRequest(run_key=f"daily:{day}:{name}", partition_key=name, run_config=_run_config(DAILY_RETRAIN_EPOCHS), tags={"earnopt/retrain": "daily"})
            for name in catalog.enabled_names
            if name in known
        ]

    @dg.sensor(job=retrain_job, minimum_interval_seconds=900, default_status=dg.DefaultSensorStatus.RUNNING)
    def model_retrain_sensor(context: dg.SensorEvaluationContext, earnopt: EarnoptResource) -> dg.SensorResult | dg.SkipReason:
        """Retrain a protocol whose latest challenger failed its MAPE check (run at least 6 h old) or whose
        LSTM champion's live MAPE over the last 48 h exceeds 1.5 x its holdout MAPE. One request per model
        version and reason (run key); the skip reason says, per protocol, why it is not retrained."""
        plan = retrain_plan(earnopt.catalog(), earnopt.paths, now=datetime.now(UTC))
        known = set(protocol_names)
        for request in plan.requests:
            if request.protocol not in known:
                plan.waiting[request.protocol] = f"{request.protocol} needs a retrain but has no partition; reload the code location"
        runs = [
            dg.RunRequest(run_key=r.run_key, partition_key=r.protocol, run_config=_run_config(DAILY_RETRAIN_EPOCHS), tags={"earnopt/retrain": r.reason})
            for r in plan.requests
            if r.protocol in known
        ]
        if not runs:
            return dg.SkipReason(plan.skip_reason())
        context.log.info("retrain requests: %s", [(r.protocol, r.reason, r.detail) for r in plan.requests])
        return dg.SensorResult(run_requests=runs)

    return SimpleNamespace(
        protocol_partitions=protocol_partitions,
        earnings_model=earnings_model,
        mape_within_target=mape_within_target,
        retrain_job=retrain_job,
        daily_model_retrain=daily_model_retrain,
        model_retrain_sensor=model_retrain_sensor,
        assets=[earnings_model, earnings_forecast],
        asset_checks=[mape_within_target],
        jobs=[retrain_job],
        schedules=[daily_model_retrain],
        sensors=[model_retrain_sensor],
    )


_PARTITIONED = ("protocol_partitions", "earnings_model", "mape_within_target", "retrain_job", "daily_model_retrain",
                "model_retrain_sensor", "assets", "asset_checks", "jobs", "schedules", "sensors")


def __getattr__(name: str):
    """Definitions that need the catalog are built on first use (``definitions.build_definitions`` or a test),
    from the catalog in force then ($EARNOPT_CATALOG or data/catalog.yaml); importing this module reads nothing."""
    if name in _PARTITIONED:
        from earnopt_assets.catalog import load_catalog

        return getattr(_partitioned(tuple(load_catalog().names)), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
