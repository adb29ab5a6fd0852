"""Asset group: ingestion. Thin Dagster wiring around :mod:`earnopt_assets.ingestion`: each asset reads
its inputs through :mod:`earnopt_assets.ingestion.store` (or the feature store), calls one domain
function and returns a ``dg.MaterializeResult``; tables and plots come from :mod:`earnopt_assets.defs.render`.

Every asset and check here opens the warehouse, so each declares ``pool=DUCKDB_POOL``: with the pool
limit of 1 (``deploy/dagster.yaml``) steps queue instead of failing on DuckDB's file lock.
"""


import hashlib
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from earnopt_assets.defs.render import (
    ingestion_daily_earnings_plot,
    ingestion_features_per_protocol,
    ingestion_features_preview,
    ingestion_latest_frame,
    ingestion_snapshots_frame,
    table_metadata,
)
from earnopt_assets.ingestion import store
from earnopt_assets.ingestion.feature_store import (
    build_and_publish_features,
    feature_key_duplicates,
    feature_non_finite_counts,
    load_raw_for_features,
    replace_feature_table,
)
from earnopt_assets.ingestion.features import FEATURE_COLUMNS
from earnopt_assets.ingestion.freshness import DEFAULT_MAX_LAG_HOURS, series_lag, stale_series
from earnopt_assets.ingestion.landing import landing_files
from earnopt_assets.ingestion.prometheus import pull_source, read_cursors, write_pull
from earnopt_assets.ingestion.run import ingest_landing
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL

GROUP = "ingestion"
# Telemetry later than now + this many hours is a clock or collector error.
FUTURE_SLACK_HOURS = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _hour_text(ts: datetime | None) -> str:
    return "no telemetry yet" if ts is None else f"{pd.Timestamp(ts):%Y-%m-%d %H:%M}"


PROMETHEUS_OFF = (
    "skipped: no Prometheus source configured (add sources.prometheus to the catalog, see the README section "
    "'Feeding real telemetry from Prometheus / CashPilot')"
)


def prometheus_frame(pulls) -> pd.DataFrame:
    """Per protocol: rows pulled, the newest sample, hour boundaries without a sample, the value's sparkline."""
    return pd.DataFrame(
        {
            "protocol": [p.protocol for p in pulls],
            "rows_pulled": pd.Series([p.rows for p in pulls], dtype="int64"),
            "from_utc": [_hour_text(p.start) if p.start else "up to date" for p in pulls],
            "last_sample_utc": [f"{pd.Timestamp(p.last_ts):%Y-%m-%d %H:%M}" if p.last_ts else "no sample" for p in pulls],
            "gap_h": pd.Series([p.gap_hours for p in pulls], dtype="int64"),
            "value_sparkline": [p.sparkline or "-" for p in pulls],
        }
    )


@dg.asset(group_name=GROUP, pool=DUCKDB_POOL, kinds={"prometheus", "duckdb"})
def prometheus_telemetry(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Telemetry pulled from the Prometheus server configured in the catalog (``sources.prometheus``; a
    CashPilot preset maps its ``cashpilot_*`` gauges) into ``raw_earnings``.

    ``query_range`` at a 1 h step from each protocol's cursor (DuckDB ``source_cursors``; the first run
    backfills ``backfill_days``), in bounded pages. The balance gauge is pulled as raw samples and goes
    through the same validation, quarantine, balance resampling (payout = reset, gaps imputed) and upsert
    as landing files; the cursors move in the same transaction. Prometheus down, slow or answering an
    error fails the run naming the query and status, and nothing moves. Does nothing (and says so) when
    no source is configured. Mapping and unit conversions: docs/DATA.md.
    """
    catalog = earnopt.catalog()
    if catalog.sources.prometheus is None:
        context.log.info(PROMETHEUS_OFF)
        return dg.MaterializeResult(metadata={"status": PROMETHEUS_OFF, "rows_pulled": 0})
    with duckdb.get_connection() as conn:
        cursors = read_cursors(conn)
    pulled = pull_source(catalog, cursors)  # HTTP only: no warehouse connection held meanwhile
    with duckdb.get_connection() as conn:
        report = write_pull(conn, earnopt.paths, catalog, pulled)
        rows, _, latest = store.telemetry_totals(conn)
    context.log.info(f"pulled {sum(p.rows for p in pulled.protocols)} rows for {len(pulled.protocols)} protocols in {pulled.requests} requests")
    return dg.MaterializeResult(
        metadata={
            "status": f"pulled {len(pulled.protocols)} protocols from {catalog.sources.prometheus.url}",
            "rows_pulled": sum(p.rows for p in pulled.protocols),
            "rows_quarantined": report.rows_quarantined,
            "rows_inserted": report.rows_inserted,
            "rows_updated": report.rows_updated,
            "rows_imputed": report.rows_imputed,
            "requests": pulled.requests,
            "pull_seconds": round(pulled.seconds, 3),
            "per_protocol": table_metadata(prometheus_frame(pulled.protocols)),
            "quarantine_reasons": table_metadata(report.quarantine_reasons_frame()),
            "table_rows": rows,
            "latest_hour_utc": _hour_text(latest),
        }
    )


@dg.asset(group_name=GROUP, pool=DUCKDB_POOL, kinds={"duckdb"}, deps=[prometheus_telemetry])
def raw_earnings(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Hourly earnings telemetry loaded from ``data/landing`` into the DuckDB table ``raw_earnings``.

    CSV, Parquet and JSON Lines files (earnings or cumulative ``balance_usd`` polls, differenced per
    series) are validated row by row: bad rows go to ``quarantine`` with the file, row number and reason;
    good rows are upserted on (device, protocol, ts), so a reload adds nothing and a later file updates a
    key (the earlier file's row is counted as superseded). Unreadable files go to ``landing/rejected/``;
    every processed file is moved to ``archive/``. Invariant, counted and verified per file before the
    commit (the run fails naming the file otherwise): read = stored + superseded + quarantined.
    Contract: docs/DATA.md.
    """
    with duckdb.get_connection() as conn:
        report = ingest_landing(conn, earnopt.paths, earnopt.catalog())
        rows, series, latest = store.telemetry_totals(conn)
        summary = store.telemetry_summary(conn)
        quarantine_rows = store.quarantine_total(conn)
    for file in report.files:
        if file.status == "rejected":
            context.log.warning(f"rejected {file.source_file} -> {file.stored_as}: {file.reason}")
    return dg.MaterializeResult(
        metadata={
            "files": len(report.files),
            "files_ingested": report.files_ingested,
            "files_rejected": report.files_rejected,
            "rows_read": report.rows_read,
            "rows_accepted": report.rows_accepted,
            "rows_stored": report.rows_stored,
            "rows_superseded": report.rows_superseded,
            "rows_quarantined": report.rows_quarantined,
            "rows_inserted": report.rows_inserted,
            "rows_updated": report.rows_updated,
            "balance_baselines": report.balance_baselines,
            "per_file": table_metadata(report.per_file_frame(), max_rows=100),
            "quarantine_reasons": table_metadata(report.quarantine_reasons_frame()),
            "table_rows": rows,
            "table_series": series,
            "quarantine_rows_total": quarantine_rows,
            "latest_hour_utc": _hour_text(latest),
            "per_series_latest": table_metadata(ingestion_latest_frame(series_lag(summary, _utc_now()))),
            "dagster/row_count": rows,
        }
    )


@dg.asset(group_name=GROUP, pool=DUCKDB_POOL, kinds={"duckdb", "parquet"}, deps=[raw_earnings])
def earnings_features(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Model features per (device, protocol, ts) built from ``raw_earnings`` by
    :func:`earnopt_assets.ingestion.features.build_feature_table` (formulas: docs/MODELS.md):
    lags 1/2/24/168, moving averages 1/6/24 h, EMA(12), rate of change, 24 h volatility, local
    calendar with sin/cos encodings, resource utilisation vs host totals, allocation, failure rate.

    Validated (finite, in range, float dtypes), then written to the DuckDB table ``earnings_features``
    and atomically to ``data/features/<protocol>.parquet`` (training reads those, never the warehouse).
    Rows without full history (first 168 h of a series, hours near gaps) are dropped and counted.
    """
    with duckdb.get_connection() as conn:
        raw = load_raw_for_features(conn)

    def replace_table(arrow) -> None:
        with duckdb.get_connection() as conn:
            replace_feature_table(conn, arrow)

    # Feature building is CPU work: no warehouse connection is held meanwhile.
    table, stats, written = build_and_publish_features(raw, earnopt.catalog(), earnopt.paths.features_dir, replace_table)
    metadata: dict[str, object] = {
        "rows": stats.output_rows,
        "series": stats.series,
        "input_rows": stats.input_rows,
        "dropped_warmup_or_gap_rows": stats.warmup_or_gap_rows,
        "missing_hours": stats.missing_hours,
        "feature_columns": len(FEATURE_COLUMNS),
        "snapshots": table_metadata(ingestion_snapshots_frame(written)),
        "per_protocol": table_metadata(ingestion_features_per_protocol(table)),
        "preview": table_metadata(ingestion_features_preview(table)),
        "dagster/row_count": stats.output_rows,
    }
    plot = ingestion_daily_earnings_plot(raw)
    if plot:
        metadata["daily_earnings_plot"] = dg.MetadataValue.md(plot)
    context.log.info(f"built {stats.output_rows} feature rows for {stats.series} series")
    return dg.MaterializeResult(metadata=metadata)


# ----------------------------------------------------------------------------- checks


@dg.asset_check(asset=raw_earnings, pool=DUCKDB_POOL, blocking=True)
def raw_earnings_hour_grid(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Every stored row sits on the hour grid: ``ts`` exactly on the hour, not later than now + 1 h
    (wall clock, UTC), and earnings finite and non-negative. Fails naming the first offending rows."""
    with duckdb.get_connection() as conn:
        counts, examples = store.hour_grid_violations(conn, _utc_now(), future_slack_hours=FUTURE_SLACK_HOURS)
    bad = sum(counts.values())
    if not examples.empty:
        examples = examples.assign(ts=pd.to_datetime(examples["ts"]).dt.strftime("%Y-%m-%d %H:%M:%S")).rename(
            columns={"ts": "ts_utc", "earnings_usd": "earnings_usd_per_h"})
    return dg.AssetCheckResult(
        passed=bad == 0,
        description="every row on the hour grid" if bad == 0 else f"{bad} rows off the hour grid",
        metadata={
            "off_hour_rows": counts["off_hour"],
            "future_rows": counts["future"],
            "negative_or_non_finite_rows": counts["negative_or_non_finite"],
            "future_slack_h": FUTURE_SLACK_HOURS,
            "examples": table_metadata(examples),
        },
    )


@dg.asset_check(asset=raw_earnings, pool=DUCKDB_POOL, blocking=True)
def raw_earnings_rows_accounted(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Every logged landing file accounts for each row it carried: read = stored + superseded + quarantined
    (``ingested_files``). Fails naming the files that do not add up."""
    with duckdb.get_connection() as conn:
        broken = store.row_accounting_violations(conn)
    return dg.AssetCheckResult(
        passed=broken.empty,
        description="every file accounts for its rows" if broken.empty else "rows unaccounted for in: " + ", ".join(broken["file"]),
        metadata={"files_not_adding_up": len(broken), "files": table_metadata(broken)},
    )


@dg.asset_check(asset=earnings_features, pool=DUCKDB_POOL, blocking=True)
def earnings_features_no_duplicate_keys(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """No (device, protocol, ts) appears twice in ``earnings_features`` (a plain table, no primary key)."""
    with duckdb.get_connection() as conn:
        total, examples = feature_key_duplicates(conn)
    if not examples.empty:
        examples = examples.assign(ts=pd.to_datetime(examples["ts"]).dt.strftime("%Y-%m-%d %H:%M")).rename(columns={"ts": "hour_utc"})
    return dg.AssetCheckResult(passed=total == 0, metadata={"duplicate_keys": total, "examples": table_metadata(examples)})


@dg.asset_check(asset=earnings_features, pool=DUCKDB_POOL, blocking=True)
def earnings_features_finite(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Every feature value is finite (no NULL, NaN or Inf) in ``earnings_features``. An empty table is a
    failed check with WARN severity (nothing to train on yet: not an error, but never a silent pass)."""
    with duckdb.get_connection() as conn:
        rows, bad, missing = feature_non_finite_counts(conn)
    if missing:
        return dg.AssetCheckResult(passed=False, description=f"missing feature columns: {', '.join(missing)}")
    table = pd.DataFrame({"feature": list(bad), "non_finite_rows": pd.Series(list(bad.values()), dtype="int64")})
    metadata = {"rows": rows, "non_finite_values": sum(bad.values()), "bad_columns": table_metadata(table)}
    if rows == 0:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description="earnings_features has no rows", metadata=metadata
        )
    return dg.AssetCheckResult(passed=not bad, metadata=metadata)


class FreshnessConfig(dg.Config):
    """How far (hours) a series' newest hour may trail the wall clock before it counts as stale."""

    max_lag_hours: float = DEFAULT_MAX_LAG_HOURS


@dg.asset_check(asset=raw_earnings, pool=DUCKDB_POOL)
def raw_earnings_freshness(config: FreshnessConfig, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Each (device, protocol) series has telemetry no more than ``max_lag_hours`` (default 3 h) behind
    the wall clock (UTC); every enabled catalog protocol of the host device must have some. Warns naming
    the stale series."""
    catalog = earnopt.catalog()
    with duckdb.get_connection() as conn:
        summary = store.telemetry_summary(conn)
    lags = series_lag(summary, _utc_now(), expected=[(catalog.host.device, name) for name in catalog.enabled_names])
    stale = stale_series(lags, config.max_lag_hours)
    description = (
        f"all {len(lags)} series within {config.max_lag_hours:g} h of now"
        if stale.empty
        else f"{len(stale)} of {len(lags)} series stale: " + ", ".join(f"{d}/{p}" for d, p in zip(stale["device"], stale["protocol"]))
    )
    return dg.AssetCheckResult(
        passed=stale.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=description[:500],
        metadata={
            "max_lag_h": float(config.max_lag_hours),
            "series": len(lags),
            "stale_series": len(stale),
            "worst_lag_h": float(lags["lag_h"].max()) if lags["lag_h"].notna().any() else 0.0,
            "stale": table_metadata(ingestion_latest_frame(stale)),
            "per_series_latest": table_metadata(ingestion_latest_frame(lags)),
        },
    )


# ----------------------------------------------------------------------------- job and sensor

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.assets(raw_earnings, earnings_features),
    description="Load new landing files into raw_earnings and rebuild earnings_features.",
)


def landing_run_key(files: list[Path]) -> str:
    """Run key from the names and modification times (ns) of the landing files: the same set of files
    never yields a second run, and a rewritten file (new mtime) yields a new one."""
    parts = sorted(f"{p.name}\t{p.stat().st_mtime_ns}" for p in files)
    return "landing-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


LANDING_MAX_ATTEMPTS = 3  # one run and two retries of the same landing files, then an alert
LANDING_KEY_TAG = "earnopt/landing_key"
INGESTION_FAILED_RULE = "ingestion_failed"
_RETRYABLE = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def landing_attempts(instance: dg.DagsterInstance | None, landing_key: str) -> list[dg.DagsterRun]:
    """Runs already launched for these landing files, newest first (empty without an instance)."""
    if instance is None:
        return []
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=ingestion_job.name, tags={LANDING_KEY_TAG: landing_key})))


def _instance_or_none(context: dg.SensorEvaluationContext) -> dg.DagsterInstance | None:
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:  # a bare test context has no instance
        return None


def raise_ingestion_failed_alert(earnopt: EarnoptResource, landing_key: str, names: list[str], runs: list[dg.DagsterRun],
                                 now: datetime) -> str:
    """Record a critical ``ingestion_failed`` alert through the anomaly store (same dedupe, cooldown and
    delivery bookkeeping as every rule) and deliver it to the configured channels. Returns its id."""
    from earnopt_assets.anomaly import store as alert_store
    from earnopt_assets.anomaly.notify import Notifier
    from earnopt_assets.anomaly.rules import make_alert
    from earnopt_assets.warehouse import connect

    catalog = earnopt.catalog()
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    alert = make_alert(
        catalog.host.device, "host", INGESTION_FAILED_RULE, "critical", pd.Timestamp(now).floor("h").to_pydatetime(),
        f"Ingesting {len(names)} landing files failed {len(runs)} times; they stay in landing until fixed: {shown}.",
        {"landing_key": landing_key, "attempts": len(runs), "last_run_id": runs[0].run_id if runs else ""},
    )
    with connect(earnopt.paths.warehouse) as conn:
        notified = alert_store.record_alerts(conn, [alert], {}, catalog.alerts, now=now).to_notify
    try:
        notifier = Notifier.from_settings(catalog.alerts)
    except ValueError:
        notifier = Notifier([])
    with notifier:
        attempts = notifier.deliver_all(notified)
    with connect(earnopt.paths.warehouse) as conn:
        alert_store.record_deliveries(conn, notified, attempts, now=now)
    return alert.id


@dg.sensor(job=ingestion_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_sensor(context: dg.SensorEvaluationContext, earnopt: EarnoptResource) -> dg.SensorResult | dg.SkipReason:
    """Requests ``ingestion_job`` when files appear in ``data/landing`` (hidden temp files are ignored).
    The landing key hashes the file names and mtimes, so a file is never ingested twice; the run moves
    every file it loads to ``archive/``. A failed (or canceled) run of the same files is retried under a
    new run key, up to ``LANDING_MAX_ATTEMPTS`` runs in all; after that a critical ``ingestion_failed``
    alert is raised once (the cursor remembers it) and the files wait for an operator."""
    files = landing_files(earnopt.paths.landing)
    if not files:
        return dg.SkipReason("no files in landing")
    landing_key = landing_run_key(files)
    names = sorted(p.name for p in files)
    runs = landing_attempts(_instance_or_none(context), landing_key)
    run_key = landing_key
    if runs and runs[0].status in _RETRYABLE:
        if len(runs) >= LANDING_MAX_ATTEMPTS:
            alerted = f"alerted:{landing_key}"
            if context.cursor != alerted:
                raise_ingestion_failed_alert(earnopt, landing_key, names, runs, datetime.now(UTC).replace(tzinfo=None))
                context.update_cursor(alerted)
            return dg.SkipReason(f"ingestion of {len(names)} landing files failed {len(runs)} times; alert raised, not retrying")
        run_key = f"{landing_key}-attempt{len(runs) + 1}"
        context.log.warning(f"run {runs[0].run_id} for {len(names)} landing files ended {runs[0].status.value}: retry {len(runs) + 1}/{LANDING_MAX_ATTEMPTS}")
    elif runs:
        run_key = runs[0].tags.get("dagster/run_key", landing_key)  # in flight or done: the same key, a no-op
    context.log.info(f"{len(names)} landing files: {', '.join(names[:5])}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else ""))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags={"earnopt/landing_files": str(len(files)), LANDING_KEY_TAG: landing_key})],
        cursor=run_key,
    )


assets: list = [prometheus_telemetry, raw_earnings, earnings_features]
asset_checks: list = [
    raw_earnings_hour_grid,
    raw_earnings_rows_accounted,
    earnings_features_no_duplicate_keys,
    earnings_features_finite,
    raw_earnings_freshness,
]
prometheus_job = dg.define_asset_job(
    "prometheus_job",
    selection=dg.AssetSelection.assets(prometheus_telemetry, raw_earnings, earnings_features),
    description="Pull the last hours from Prometheus into raw_earnings (plus any landing files) and rebuild earnings_features.",
)


@dg.schedule(job=prometheus_job, cron_schedule="5 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
def prometheus_schedule(context: dg.ScheduleEvaluationContext, earnopt: EarnoptResource) -> dg.RunRequest | dg.SkipReason:
    """Hourly at :05 (the hour's boundary sample is scraped by then): requests ``prometheus_job`` when a
    Prometheus source is configured, otherwise skips saying how to configure one."""
    source = earnopt.catalog().sources.prometheus
    if source is None:
        return dg.SkipReason(PROMETHEUS_OFF.removeprefix("skipped: "))
    return dg.RunRequest(run_key=f"prometheus-{context.scheduled_execution_time:%Y%m%dT%H%M}")


jobs: list = [ingestion_job, prometheus_job]
schedules: list = [prometheus_schedule]
sensors: list = [landing_sensor]
