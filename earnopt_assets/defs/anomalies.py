"""Asset group: anomalies — the IsolationForest model, per-hour anomaly scores, and alerts.

Thin Dagster wiring: each asset reads through the stores (``ingestion.store`` for telemetry,
``anomaly.store`` for scores and alert history), calls one domain function of
:mod:`earnopt_assets.anomaly.cycle` and returns the metadata rendered by :mod:`earnopt_assets.defs.render`.
Every asset opens the warehouse in the ``DUCKDB_POOL`` pool and keeps the connection around the reads and
writes only; the alerts cycle delivers notifications with the connection closed.

Triggers (no job needed): the default automation-condition sensor materializes the three assets.
``anomaly_model`` and ``anomalies`` are ``eager()`` — they run after ``earnings_features``/``raw_earnings``
update (new telemetry landed); ``alerts`` is ``eager()`` after ``raw_earnings`` (the rules need no model, so
a warming-up or failed detector never holds them back) and also runs on an hourly cron
tick (once its upstream exists), so the wall-clock ``silent`` rule sees a protocol that stopped reporting
even when no telemetry arrives.
"""

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from duckdb import DuckDBPyConnection

from earnopt_assets.anomaly import store as anomaly_store
from earnopt_assets.anomaly.cycle import (
    HISTORY_HOURS,
    DetectorWarmingUp,
    DetectorWarmup,
    cycle_window_hours,
    run_anomaly_cycle,
    score_recent,
    scores_since,
    train_detector,
)
from earnopt_assets.anomaly.detector import AnomalyDetector
from earnopt_assets.defs.render import anomaly_cycle_metadata, anomaly_model_metadata, anomaly_scores_metadata
from earnopt_assets.ingestion import store as ingestion_store
from earnopt_assets.ingestion.feature_store import read_feature_keys
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL, TELEMETRY_COLUMNS

GROUP = "anomalies"
# The alerts cycle also runs every hour at :20 (after the hourly landing), so silence is noticed.
ALERTS_CRON = "20 * * * *"
NO_TELEMETRY = "table raw_earnings does not exist yet: materialize raw_earnings (ingestion) first"
ANOMALY_MODEL = dg.AssetKey("anomaly_model")
DETECTOR_TRAINED_CHECK = "detector_trained"


@contextlib.contextmanager
def _warehouse(duckdb: DuckDBResource) -> Iterator[DuckDBPyConnection]:
    """``duckdb.get_connection()`` that also closes the connection when the block raises (the resource's
    own context manager only closes on success, leaving the file locked until garbage collection)."""
    with duckdb.get_connection() as conn:
        try:
            yield conn
        finally:
            conn.close()


class _NoTelemetry(Exception):
    """Raised inside a connection block, turned into dg.Failure outside it (so no connection outlives it)."""


def _require_telemetry(conn: DuckDBPyConnection) -> None:
    if not ingestion_store.has_telemetry(conn):
        raise _NoTelemetry(NO_TELEMETRY)


def _recent_telemetry(conn: DuckDBPyConnection, hours: int) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """Telemetry of the ``hours`` hours up to the newest stored hour (inclusive)."""
    _require_telemetry(conn)
    newest = ingestion_store.latest_ts(conn)
    columns = [*TELEMETRY_COLUMNS, "imputed"]  # imputed hours never fire the earnings rules
    if newest is None:
        return ingestion_store.read_telemetry(conn, columns=columns), None
    start = pd.Timestamp(newest) - pd.Timedelta(hours=hours)
    return ingestion_store.read_telemetry(conn, start=start, columns=columns), pd.Timestamp(newest)


_TELEMETRY_UPDATED = dg.AutomationCondition.eager()


def warmup_metadata(warmup: DetectorWarmup) -> dict[str, object]:
    """What a warming-up anomaly_model shows: progress in days and the rule behind the number."""
    return {
        "status": "warming up",
        "warming_up": warmup.summary,
        "rule": dg.MetadataValue.md(warmup.rule),
        "history_days": dg.MetadataValue.float(warmup.history_days),
        "needed_days": dg.MetadataValue.float(round(warmup.needed_days, 1)),
        "complete_rows": warmup.complete_rows,
        "meanwhile": dg.MetadataValue.md(
            "The rules (earnings drop, resource usage, connection failures, silence) alert without a model; "
            "the IsolationForest joins them once it has trained."
        ),
    }


def detector_check(warmup: DetectorWarmup | None, version: str | None = None) -> dg.AssetCheckResult:
    """WARN (not ERROR) while the detector warms up: short history is not a failure."""
    if warmup is None:
        return dg.AssetCheckResult(asset_key=ANOMALY_MODEL, check_name=DETECTOR_TRAINED_CHECK, passed=True,
                                   description=f"detector {version} trained and saved")
    return dg.AssetCheckResult(
        asset_key=ANOMALY_MODEL, check_name=DETECTOR_TRAINED_CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN,
        description=f"{warmup.summary}; {warmup.rule}",
        metadata={"history_days": dg.MetadataValue.float(warmup.history_days), "needed_days": dg.MetadataValue.float(round(warmup.needed_days, 1))},
    )


@dg.asset(
    key=ANOMALY_MODEL,
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"sklearn", "duckdb"},
    deps=[dg.AssetKey("earnings_features")],
    automation_condition=_TELEMETRY_UPDATED,
    check_specs=[dg.AssetCheckSpec(
        DETECTOR_TRAINED_CHECK, asset=ANOMALY_MODEL,
        description="The IsolationForest trained; WARN (not ERROR) while history is too short for it (warming up).",
    )],
)
def anomaly_model(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """IsolationForest over per-series detection features (relative deviation from the 24 h MA,
    resource z-score vs the trailing 7 days, connection failures, earnings vs the same hour last week).

    Fits on the rows of the ``earnings_features`` table (hours with a full week of history), excluding
    hours already recorded in ``alerts``; persisted (skops + JSON metadata, atomic) under ``models/anomaly``.
    Trigger: automation, ``eager()`` — refits whenever ``earnings_features`` is rematerialized.
    Young history (#17): until the minimum is met the run completes WITHOUT training; its metadata says
    "warming up: X of Y days" with the rule, and the ``detector_trained`` check reports WARN.
    """
    catalog = earnopt.catalog()
    try:
        with _warehouse(duckdb) as conn:
            _require_telemetry(conn)
            raw = ingestion_store.read_telemetry(conn)
            feature_keys = read_feature_keys(conn)
            alerted = anomaly_store.alert_hours(conn)
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    try:
        training = train_detector(raw, feature_keys, alerted, catalog, earnopt.paths.models / "anomaly")
    except DetectorWarmingUp as warming:
        context.log.info(f"anomaly model not trained yet: {warming}")
        return dg.MaterializeResult(metadata=warmup_metadata(warming.warmup), check_results=[detector_check(warming.warmup)])
    except ValueError as exc:
        raise dg.Failure(description=f"cannot fit the anomaly detector: {exc}") from None
    context.log.info(
        f"anomaly model {training.detector.version}: {training.training_rows} rows, "
        f"{training.flagged_training_rows} flagged at contamination {catalog.alerts.contamination}"
    )
    return dg.MaterializeResult(metadata=anomaly_model_metadata(training, catalog.alerts.contamination),
                                check_results=[detector_check(None, str(training.detector.version))])


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=[anomaly_model, dg.AssetKey("raw_earnings")],
    automation_condition=_TELEMETRY_UPDATED,
)
def anomalies(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """IsolationForest scores and flags for the last ``alerts.score_hours`` hours of every series
    (DuckDB table ``anomalies``, upserted on (device, protocol, ts)). Score < 0 = anomalous.
    Trigger: automation, ``eager()`` — after a new model or new telemetry in ``raw_earnings``.
    No detector saved yet (anomaly_model still warming up): completes without scoring and says so."""
    catalog = earnopt.catalog()
    try:
        detector = AnomalyDetector.load(earnopt.paths.models / "anomaly")
    except FileNotFoundError:
        context.log.info("no anomaly detector yet (anomaly_model is warming up): nothing scored")
        return dg.MaterializeResult(metadata={
            "status": "no detector yet",
            "rows_scored": 0,
            "reason": dg.MetadataValue.md(
                "anomaly_model has not trained yet (warming up: see its metadata). The alert rules run without it; "
                "IsolationForest scores start with its first version."
            ),
        })
    try:
        with _warehouse(duckdb) as conn:
            telemetry, newest = _recent_telemetry(conn, catalog.alerts.score_hours + HISTORY_HOURS)
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    scored = score_recent(detector, telemetry, newest, catalog)
    with _warehouse(duckdb) as conn:
        written = anomaly_store.write_scores(conn, scored, str(detector.version))
    context.log.info(f"scored {written} rows with model {detector.version}; {int(scored['is_anomaly'].sum()) if written else 0} flagged")
    return dg.MaterializeResult(metadata=anomaly_scores_metadata(scored, written, str(detector.version), newest))


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    # The rules need no model (#17): alerts hang off raw_earnings, never off the IsolationForest assets; the
    # isolation_forest rule reads whatever scores `anomalies` has stored (this tick's or the previous one's).
    deps=[dg.AssetKey("raw_earnings")],
    automation_condition=_TELEMETRY_UPDATED | (
        dg.AutomationCondition.cron_tick_passed(ALERTS_CRON) & ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.any_deps_missing()
    ),
)
def alerts(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Runs the alert rules over the last ``alerts.evaluation_hours`` hours and records every alert in DuckDB
    ``alerts`` (deduped per device/protocol/rule/hour; status open/acknowledged/resolved; auto-resolved after
    ``resolve_after_hours`` quiet hours). In the same transaction updates ``protocol_state``: a protocol with an
    open critical alert of a degrading rule (earnings_drop, connection_failures, silent) is degraded; ``silent``
    fires when a series has no row for more than ``alerts.silent_lag_hours`` (3 h) behind the wall clock. New alerts outside their cooldown are delivered to the
    configured channels after the warehouse connection is closed; attempts go to ``alert_deliveries``
    (URLs redacted). The metadata says plainly where the alerts went (or that no channel is configured).
    Trigger: automation — ``eager()`` after ``anomalies``, and an hourly cron tick (``20 * * * *``).
    """
    catalog = earnopt.catalog()
    try:
        with _warehouse(duckdb) as conn:
            first_run = not anomaly_store.has_alert_history(conn)
            telemetry, newest = _recent_telemetry(conn, cycle_window_hours(catalog, first_run))
            scores = anomaly_store.read_scores(conn, scores_since(catalog, newest))
            last_seen = ingestion_store.telemetry_summary(conn)
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    result = run_anomaly_cycle(
        lambda: _warehouse(duckdb), catalog, telemetry, scores, first_run=first_run, last_seen=last_seen,
        log=context.log.info, warn=context.log.warning,
    )
    return dg.MaterializeResult(metadata=anomaly_cycle_metadata(result))


assets: list = [anomaly_model, anomalies, alerts]
asset_checks: list = []
jobs: list = []
schedules: list = []
sensors: list = []
