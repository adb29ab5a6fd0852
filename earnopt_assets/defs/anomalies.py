"""Asset group: anomalies — the IsolationForest model, per-hour anomaly scores, and alerts.

Thin Dagster wiring around :mod:`earnopt_assets.anomaly`. All three assets refresh eagerly when new
telemetry lands (``AutomationCondition.eager()`` downstream of ``earnings_features``) and can be run
together with ``anomaly_job``. Every asset opens the warehouse in the ``DUCKDB_POOL`` pool, keeps the
connection around the SQL only, and the alerts asset delivers notifications after closing it.
"""


import contextlib
from collections.abc import Iterator
from collections import Counter

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource
from duckdb import DuckDBPyConnection

from earnopt_assets.defs.render import figure_markdown, markdown_table, pyplot
from earnopt_assets.anomaly.detector import DETECTION_FEATURES, AnomalyDetector, detection_features
from earnopt_assets.anomaly.notify import Notifier
from earnopt_assets.anomaly.rules import evaluate_rules, evaluated_until
from earnopt_assets.anomaly.state import update_protocol_state
from earnopt_assets.anomaly.store import alert_hours, record_alerts, record_deliveries, write_scores
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL, TELEMETRY_COLUMNS, table_exists

GROUP = "anomalies"
# History the rules and features need before the first evaluated hour: 7 days + a day + slack.
HISTORY_HOURS = 168 + 24 + 8
# How far back the first alerts run records history (not notified).
BACKFILL_HOURS = 24 * 400
_TELEMETRY_SELECT = ", ".join(TELEMETRY_COLUMNS)


def _alert_table(frame: pd.DataFrame) -> str:
    """Alert and score tables: 4 significant digits, at most 20 rows."""
    return markdown_table(frame, float_format="{:.4g}", empty="_none_", max_rows=20)


def _score_histogram(scores: np.ndarray) -> str | None:
    """A PNG histogram of decision scores, embedded as base64 markdown."""
    if len(scores) == 0:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
    ax.hist(scores, bins=60, color="#4477aa")
    ax.axvline(0.0, color="#cc3311", linestyle="--", label="threshold (0)")
    ax.set_xlabel("decision_function (lower = more anomalous)")
    ax.set_ylabel("rows")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return figure_markdown(fig, "score distribution")


@contextlib.contextmanager
def _warehouse(duckdb: DuckDBResource) -> Iterator[DuckDBPyConnection]:
    """``duckdb.get_connection()`` that also closes the connection when the block raises (the resource's
    own context manager only closes on success, leaving the file locked until garbage collection)."""
    with duckdb.get_connection() as conn:
        try:
            yield conn
        finally:
            conn.close()


NO_TELEMETRY = "table raw_earnings does not exist yet: materialize raw_earnings (ingestion) first"


class _NoTelemetry(Exception):
    """Raised inside a connection block, turned into dg.Failure outside it (so no connection outlives it)."""


def _require_telemetry(conn) -> None:
    if not table_exists(conn, "raw_earnings"):
        raise _NoTelemetry(NO_TELEMETRY)


def _recent_telemetry(conn, hours: int) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """Telemetry of the last ``hours`` + HISTORY_HOURS hours before the newest hour in raw_earnings."""
    _require_telemetry(conn)
    newest = conn.execute("SELECT max(ts) FROM raw_earnings").fetchone()[0]
    if newest is None:
        return pd.DataFrame(columns=list(TELEMETRY_COLUMNS)), None
    cutoff = pd.Timestamp(newest) - pd.Timedelta(hours=hours + HISTORY_HOURS)
    frame = conn.execute(f"SELECT {_TELEMETRY_SELECT} FROM raw_earnings WHERE ts >= ? ORDER BY device, protocol, ts", [cutoff.to_pydatetime()]).df()
    return frame, pd.Timestamp(newest)


def _known(frame: pd.DataFrame, catalog) -> pd.DataFrame:
    """Rows of catalog protocols only: every protocol name passes the catalog gate."""
    return frame.loc[frame["protocol"].isin(catalog.names)]


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"sklearn", "duckdb"},
    deps=[dg.AssetKey("earnings_features")],
    automation_condition=dg.AutomationCondition.eager(),
)
def anomaly_model(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """IsolationForest over per-series detection features (relative deviation from the 24 h MA,
    resource z-score vs the trailing 7 days, connection failures, earnings vs the same hour last week).

    Fits on the rows of the ``earnings_features`` table (hours with a full week of history), excluding
    hours already recorded in ``alerts``; persisted (skops + JSON metadata, atomic) under
    ``models/anomaly``.
    """
    catalog = earnopt.catalog()
    settings = catalog.alerts
    try:
        with _warehouse(duckdb) as conn:
            _require_telemetry(conn)
            raw = conn.execute(f"SELECT {_TELEMETRY_SELECT} FROM raw_earnings ORDER BY device, protocol, ts").df()
            feature_keys = (
                conn.execute("SELECT device, protocol, ts FROM earnings_features").df()
                if table_exists(conn, "earnings_features") else None
            )
            excluded = alert_hours(conn)
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    raw = _known(raw, catalog)
    specs = {p.name: p for p in catalog.protocols}
    features = detection_features(raw, specs, settings.allocation_elasticity)
    keys = pd.MultiIndex.from_frame(features[["device", "protocol", "ts"]].assign(ts=lambda f: pd.to_datetime(f["ts"]).astype("datetime64[us]")))
    in_feature_table = (
        keys.isin(pd.MultiIndex.from_frame(feature_keys.assign(ts=pd.to_datetime(feature_keys["ts"]).astype("datetime64[us]"))))
        if feature_keys is not None and not feature_keys.empty else np.ones(len(features), dtype=bool)
    )
    alerted = (
        keys.isin(pd.MultiIndex.from_frame(excluded.assign(ts=pd.to_datetime(excluded["ts"]).astype("datetime64[us]"))))
        if not excluded.empty else np.zeros(len(features), dtype=bool)
    )
    train = features.loc[in_feature_table & ~alerted]
    try:
        detector = AnomalyDetector(contamination=settings.contamination).fit(train)
    except ValueError as exc:
        raise dg.Failure(description=f"cannot fit the anomaly detector: {exc}") from None
    target = earnopt.paths.models / "anomaly"
    version_dir = detector.save(target)
    scores = detector.decision_function(train.loc[AnomalyDetector.complete_rows(train)])
    quantiles = pd.DataFrame(
        {"quantile": ["min", "1%", "5%", "25%", "50%", "75%", "max"],
         "score": np.quantile(scores, [0, 0.01, 0.05, 0.25, 0.5, 0.75, 1.0]) if len(scores) else [np.nan] * 7}
    )
    flagged = int((scores < 0).sum())
    context.log.info(f"anomaly model {detector.version}: {detector.training_window.rows} rows, {flagged} flagged at contamination {settings.contamination}")
    histogram = _score_histogram(scores)
    return dg.MaterializeResult(
        metadata={
            "version": detector.version,
            "contamination": settings.contamination,
            "training_rows": detector.training_window.rows,
            "excluded_alert_rows": int((in_feature_table & alerted).sum()),
            "training_window": f"{detector.training_window.start} .. {detector.training_window.end}",
            "features": ", ".join(DETECTION_FEATURES),
            "flagged_training_rows": flagged,
            "path": dg.MetadataValue.path(str(version_dir)),
            "score_distribution": dg.MetadataValue.md(_alert_table(quantiles) + ("\n\n" + histogram if histogram else "")),
        }
    )


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=[anomaly_model],
    automation_condition=dg.AutomationCondition.eager(),
)
def anomalies(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """IsolationForest scores and flags for the last ``alerts.score_hours`` hours of every series
    (DuckDB table ``anomalies``, upserted on (device, protocol, ts)). Score < 0 = anomalous."""
    catalog = earnopt.catalog()
    settings = catalog.alerts
    try:
        detector = AnomalyDetector.load(earnopt.paths.models / "anomaly")
    except FileNotFoundError as exc:
        raise dg.Failure(description=f"{exc}; materialize anomaly_model first") from None
    try:
        with _warehouse(duckdb) as conn:
            telemetry, newest = _recent_telemetry(conn, settings.score_hours)
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    telemetry = _known(telemetry, catalog)
    specs = {p.name: p for p in catalog.protocols}
    features = detection_features(telemetry, specs, settings.allocation_elasticity)
    if newest is not None and not features.empty:
        features = features.loc[pd.to_datetime(features["ts"]) > newest - pd.Timedelta(hours=settings.score_hours)]
    scores = detector.decision_function(features)
    scored = features.assign(score=scores, is_anomaly=scores < 0)
    with _warehouse(duckdb) as conn:
        written = write_scores(conn, scored, str(detector.version))
    flagged = scored.loc[scored["is_anomaly"]].sort_values("score")
    context.log.info(f"scored {written} rows with model {detector.version}; {len(flagged)} flagged")
    return dg.MaterializeResult(
        metadata={
            "rows_scored": written,
            "rows_flagged": len(flagged),
            "model_version": str(detector.version),
            "newest_hour": str(newest) if newest is not None else "none",
            "flagged": dg.MetadataValue.md(_alert_table(flagged[["protocol", "ts", "score", *DETECTION_FEATURES]])),
        }
    )


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=[anomalies],
    automation_condition=dg.AutomationCondition.eager(),
)
def alerts(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Runs the five alert rules over the last ``alerts.evaluation_hours`` hours and records every alert in
    DuckDB ``alerts`` (deduped per device/protocol/rule/hour; status open/acknowledged/resolved; auto-resolved
    after ``resolve_after_hours`` quiet hours). Updates ``protocol_state`` (critical earnings-drop or
    connection-failure alert = degraded). New alerts are logged and, outside their cooldown, delivered to
    the configured channels after the warehouse connection is closed; attempts go to ``alert_deliveries``."""
    catalog = earnopt.catalog()
    settings = catalog.alerts
    try:
        with _warehouse(duckdb) as conn:
            # First run: evaluate the whole history so the table (and the detector's exclusions) start
            # complete; only the last evaluation_hours may be sent.
            first_run = not table_exists(conn, "alerts") or conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
            telemetry, newest = _recent_telemetry(conn, BACKFILL_HOURS if first_run else settings.evaluation_hours)
            scores = (
                conn.execute("SELECT * FROM anomalies WHERE ts > ?", [(newest - pd.Timedelta(hours=settings.evaluation_hours)).to_pydatetime()]).df()
                if newest is not None and table_exists(conn, "anomalies") else None
            )
    except _NoTelemetry:
        raise dg.Failure(description=NO_TELEMETRY) from None
    telemetry = _known(telemetry, catalog)
    if scores is not None:
        scores = scores.drop(columns=["model_version", "scored_at"])
    notify_since = newest - pd.Timedelta(hours=settings.evaluation_hours - 1) if newest is not None else None
    candidates = evaluate_rules(telemetry, catalog, settings, scores=scores, start=None if first_run else notify_since)
    evaluated = evaluated_until(telemetry)
    device = catalog.host.device
    devices = sorted(set(telemetry["device"].astype(str))) or [device]
    with _warehouse(duckdb) as conn:
        conn.execute("BEGIN TRANSACTION")
        try:
            result = record_alerts(conn, candidates, evaluated, settings,
                                   notify_since=notify_since.to_pydatetime() if notify_since is not None else None)
            changes = [c for d in devices for c in update_protocol_state(conn, d, catalog.names)]
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise

    for decision in result.decisions:
        alert = decision.alert
        if decision.reason == "backfill":
            continue  # history of a first run: counted in the metadata, not logged one by one
        note = "notify" if decision.notify else "recorded only (cooldown)"
        log = context.log.warning if alert.severity == "critical" else context.log.info
        log(f"alert {alert.id} [{alert.severity}] {alert.protocol}/{alert.rule} at {alert.hour:%Y-%m-%d %H:00}: {alert.message} -> {note}")
    for change in changes:
        context.log.info(f"{change.device}/{change.protocol}: {change.from_state} -> {change.to_state} ({change.reason})")

    # Delivery happens with the warehouse closed; it is bounded and never raises.
    to_notify = result.to_notify
    config_error = ""
    try:
        notifier = Notifier.from_settings(settings, log=context.log.info)
    except ValueError as exc:
        # A broken channel variable must not lose the alerts: they are recorded; say so loudly.
        config_error = str(exc)
        context.log.error(f"alert channels misconfigured, nothing sent this run: {exc}")
        notifier = Notifier([])
    with notifier:
        attempts = notifier.deliver_all(to_notify)
        channel_names = [c.target for c in notifier.channels]
    with _warehouse(duckdb) as conn:
        delivery_counts = record_deliveries(conn, to_notify, attempts)

    new_table = pd.DataFrame(
        [
            {"hour": f"{d.alert.hour:%Y-%m-%d %H:00}", "protocol": d.alert.protocol, "rule": d.alert.rule,
             "severity": d.alert.severity, "notify": d.reason if d.notify else "cooldown", "message": d.alert.message}
            for d in result.decisions
            if d.reason != "backfill"
        ]
    )
    by_rule = Counter((a.rule, a.severity) for a in result.new)
    return dg.MaterializeResult(
        metadata={
            "candidates": len(candidates),
            "new_alerts": len(result.new),
            "duplicates_skipped": result.duplicates,
            "first_run_backfill": first_run,
            "backfilled_history": sum(1 for d in result.decisions if d.reason == "backfill"),
            "suppressed_by_cooldown": sum(1 for d in result.decisions if d.reason == "cooldown"),
            "notified": len(to_notify),
            "resolved_keys": len(result.resolved),
            "resolved_rows": result.resolved_rows,
            "deliveries_sent": delivery_counts["sent"],
            "deliveries_failed": delivery_counts["failed"],
            "deliveries_no_channel": delivery_counts["no_channel"],
            "delivery_attempts": len(attempts),
            "channels": ", ".join(channel_names) or "none",
            "channel_config_error": config_error or "none",
            "state_changes": dg.MetadataValue.md(
                _alert_table(pd.DataFrame([c.__dict__ for c in changes])) if changes else "_no change_"
            ),
            "new_by_rule": dg.MetadataValue.json({f"{r}/{s}": n for (r, s), n in sorted(by_rule.items())}),
            "new_alert_list": dg.MetadataValue.md(_alert_table(new_table)),
        }
    )


anomaly_job = dg.define_asset_job(
    "anomaly_job",
    selection=dg.AssetSelection.assets(anomaly_model, anomalies, alerts),
    description="Refit the anomaly detector, score recent hours, evaluate rules and deliver alerts.",
)

assets: list = [anomaly_model, anomalies, alerts]
asset_checks: list = []
jobs: list = [anomaly_job]
schedules: list = []
sensors: list = []
