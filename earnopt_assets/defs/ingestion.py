"""Asset group: ingestion. Thin Dagster wiring around :mod:`earnopt_assets.ingestion.pipeline`,
:mod:`earnopt_assets.ingestion.features` and :mod:`earnopt_assets.ingestion.feature_store`.

Every asset and check here opens the warehouse, so each declares ``pool=DUCKDB_POOL``: with the pool
limit of 1 (``deploy/dagster.yaml``) steps queue instead of failing on DuckDB's file lock.
"""


import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from earnopt_assets.defs.render import figure_markdown, markdown_table, pyplot
from earnopt_assets.ingestion.feature_store import load_raw_for_features, replace_feature_table, to_arrow, write_feature_snapshots
from earnopt_assets.ingestion.features import FEATURE_COLUMNS, build_feature_table, validate_features
from earnopt_assets.ingestion.pipeline import ensure_ingestion_tables, ingest_landing, landing_files
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL, table_exists

GROUP = "ingestion"
FRESHNESS_MAX_LAG_HOURS = 2.0


def _earnings_plot(raw: pd.DataFrame, days: int = 14) -> str | None:
    """Daily earnings per protocol over the last ``days`` days as an embedded PNG (markdown)."""
    if raw.empty:
        return None
    plt = pyplot()
    recent = raw.loc[raw["ts"] >= raw["ts"].max() - pd.Timedelta(days=days)]
    daily = recent.assign(day=recent["ts"].dt.floor("D")).pivot_table(index="day", columns="protocol", values="earnings_usd", aggfunc="sum")
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=80)
    daily.plot(ax=ax, legend=True, linewidth=1.2)
    ax.set_ylabel("USD / day")
    ax.set_xlabel("")
    ax.set_title(f"Daily earnings, last {days} days")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    return figure_markdown(fig, "daily earnings")


@dg.asset(group_name=GROUP, pool=DUCKDB_POOL, kinds={"duckdb"})
def raw_earnings(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Hourly earnings telemetry loaded from ``data/landing`` into the DuckDB table ``raw_earnings``.

    CSV, Parquet and JSON Lines files (earnings or cumulative ``balance_usd`` polls, differenced per
    series) are validated row by row: bad rows go to ``quarantine`` with the file, row number and reason;
    good rows are upserted on (device, protocol, ts), so a reload adds nothing and a later file updates a
    key. Unreadable files go to ``landing/rejected/``; every processed file is moved to ``archive/``.
    Invariant: accepted + quarantined = read, per file and in total. Contract: docs/DATA.md.
    """
    paths = earnopt.paths
    catalog = earnopt.catalog()
    with duckdb.get_connection() as conn:
        report = ingest_landing(conn, paths, catalog)
        rows, series, latest = conn.execute(
            "SELECT count(*), count(DISTINCT (device, protocol)), max(ts) FROM raw_earnings"
        ).fetchone()
        quarantine_total = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    for file in report.files:
        if file.status == "rejected":
            context.log.warning(f"rejected {file.source_file} -> {file.stored_as}: {file.reason}")
    if report.rows_accepted + report.rows_quarantined != report.rows_read:  # pragma: no cover - invariant
        raise RuntimeError(f"ingestion invariant broken: {report.rows_accepted} + {report.rows_quarantined} != {report.rows_read}")
    reasons = pd.DataFrame(list(report.quarantine_reasons.items()), columns=["reason", "rows"])
    return dg.MaterializeResult(
        metadata={
            "files": len(report.files),
            "files_ingested": report.files_ingested,
            "files_rejected": report.files_rejected,
            "rows_read": report.rows_read,
            "rows_accepted": report.rows_accepted,
            "rows_quarantined": report.rows_quarantined,
            "rows_inserted": report.rows_inserted,
            "rows_updated": report.rows_updated,
            "balance_baselines": report.balance_baselines,
            "per_file": dg.MetadataValue.md(report.markdown_table() if report.files else "_no new files in landing_"),
            "quarantine_reasons": dg.MetadataValue.md(markdown_table(reasons)),
            "table_rows": int(rows),
            "table_series": int(series),
            "quarantine_rows_total": int(quarantine_total),
            "latest_ts": str(latest) if latest is not None else "none",
            "dagster/row_count": int(rows),
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
    paths = earnopt.paths
    catalog = earnopt.catalog()
    with duckdb.get_connection() as conn:
        raw = load_raw_for_features(conn)
    # Feature building is CPU work: no warehouse connection is held meanwhile.
    table, stats = build_feature_table(raw, catalog.host.totals(), catalog.host.timezone)
    validate_features(table)
    arrow = to_arrow(table)
    # Parquet snapshots and the DuckDB table are written at the same time (both release the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        snapshots = pool.submit(write_feature_snapshots, arrow, paths.features_dir, catalog)
        with duckdb.get_connection() as conn:
            replace_feature_table(conn, arrow)
        written = snapshots.result()
    per_protocol = (
        table.groupby("protocol").agg(rows=("ts", "size"), first=("ts", "min"), last=("ts", "max"), mean_earnings=("earnings_usd", "mean")).reset_index()
        if len(table)
        else pd.DataFrame(columns=["protocol", "rows", "first", "last", "mean_earnings"])
    )
    preview_columns = ["device", "protocol", "ts", "earnings_usd", "lag_24", "ma_24h", "ema_12", "volatility_24h", "hour", "allocation", "failure_rate_24h"]
    metadata: dict[str, object] = {
        "rows": stats.output_rows,
        "series": stats.series,
        "input_rows": stats.input_rows,
        "dropped_warmup_or_gap_rows": stats.warmup_or_gap_rows,
        "missing_hours": stats.missing_hours,
        "feature_columns": len(FEATURE_COLUMNS),
        "snapshots": dg.MetadataValue.md("\n".join(f"- `{p}` -> `{path}`" for p, path in written.items()) or "_none_"),
        "per_protocol": dg.MetadataValue.md(markdown_table(per_protocol)),
        "preview": dg.MetadataValue.md(markdown_table(table[preview_columns].tail(8))),
        "dagster/row_count": stats.output_rows,
    }
    plot = _earnings_plot(raw)
    if plot:
        metadata["daily_earnings_plot"] = dg.MetadataValue.md(plot)
    context.log.info(f"built {stats.output_rows} feature rows for {stats.series} series")
    return dg.MaterializeResult(metadata=metadata)


# ----------------------------------------------------------------------------- checks


def _no_duplicate_keys(duckdb: DuckDBResource, table: str) -> dg.AssetCheckResult:
    """Pass when no (device, protocol, ts) appears twice in ``table``; show the worst offenders."""
    with duckdb.get_connection() as conn:
        if not table_exists(conn, table):
            return dg.AssetCheckResult(passed=False, description=f"table {table} does not exist")
        # ``table`` is one of two literals below, never outside input.
        dupes = conn.execute(
            f"SELECT device, protocol, ts, count(*) AS copies FROM {table} GROUP BY device, protocol, ts "
            "HAVING count(*) > 1 ORDER BY copies DESC LIMIT 10"
        ).df()
        total = int(
            conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY device, protocol, ts HAVING count(*) > 1)"
            ).fetchone()[0]
        )
    return dg.AssetCheckResult(passed=total == 0, metadata={"duplicate_keys": total, "examples": dg.MetadataValue.md(markdown_table(dupes))})


@dg.asset_check(asset=raw_earnings, pool=DUCKDB_POOL, blocking=True)
def raw_earnings_no_duplicate_keys(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """No (device, protocol, ts) appears twice in ``raw_earnings``."""
    return _no_duplicate_keys(duckdb, "raw_earnings")


@dg.asset_check(asset=earnings_features, pool=DUCKDB_POOL, blocking=True)
def earnings_features_no_duplicate_keys(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """No (device, protocol, ts) appears twice in ``earnings_features``."""
    return _no_duplicate_keys(duckdb, "earnings_features")


@dg.asset_check(asset=earnings_features, pool=DUCKDB_POOL, blocking=True)
def earnings_features_finite(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Every feature value is finite (no NULL, NaN or Inf) in ``earnings_features``."""
    with duckdb.get_connection() as conn:
        if not table_exists(conn, "earnings_features"):
            return dg.AssetCheckResult(passed=False, description="table earnings_features does not exist")
        present = {name for (name,) in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'earnings_features'").fetchall()}
        missing = [c for c in FEATURE_COLUMNS if c not in present]
        if missing:
            return dg.AssetCheckResult(passed=False, description=f"missing feature columns: {', '.join(missing)}")
        counts = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL OR NOT isfinite({c})) AS {c}" for c in FEATURE_COLUMNS)
        row = conn.execute(f"SELECT count(*) AS rows, {counts} FROM earnings_features").df().iloc[0]
    bad = {c: int(row[c]) for c in FEATURE_COLUMNS if int(row[c]) > 0}
    table = pd.DataFrame(sorted(bad.items()), columns=["feature", "non_finite_rows"])
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"rows": int(row["rows"]), "non_finite_values": sum(bad.values()), "bad_columns": dg.MetadataValue.md(markdown_table(table))},
    )


def freshness_lag_hours(latest_telemetry: datetime | None, newest_landing: datetime | None) -> float | None:
    """Hours by which the newest stored telemetry trails the newest landed data (None if either is missing)."""
    if latest_telemetry is None or newest_landing is None:
        return None
    return max((pd.Timestamp(newest_landing) - pd.Timestamp(latest_telemetry)).total_seconds() / 3600.0, 0.0)


@dg.asset_check(asset=raw_earnings, pool=DUCKDB_POOL)
def raw_earnings_freshness(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """The latest telemetry in ``raw_earnings`` is no more than 2 h behind the newest landing data,
    i.e. the max ts seen in any ingested file (``ingested_files.max_ts``, including rows that were
    quarantined). Fails if the newest landed hours were all rejected, or nothing was ingested."""
    with duckdb.get_connection() as conn:
        ensure_ingestion_tables(conn)
        latest = conn.execute("SELECT max(ts) FROM raw_earnings").fetchone()[0]
        newest = conn.execute("SELECT max(max_ts) FROM ingested_files WHERE status = 'ingested'").fetchone()[0]
        per_protocol = conn.execute(
            "SELECT protocol, max(ts) AS latest_ts FROM raw_earnings GROUP BY protocol ORDER BY protocol"
        ).df()
    lag = freshness_lag_hours(latest, newest)
    metadata = {
        "latest_telemetry_ts": str(latest),
        "newest_landing_ts": str(newest),
        "max_lag_hours": FRESHNESS_MAX_LAG_HOURS,
        "per_protocol_latest": dg.MetadataValue.md(markdown_table(per_protocol)),
    }
    if lag is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="no telemetry ingested yet", metadata=metadata)
    return dg.AssetCheckResult(
        passed=lag <= FRESHNESS_MAX_LAG_HOURS,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"latest telemetry is {lag:.1f} h behind the newest landing data",
        metadata={**metadata, "lag_hours": float(lag)},
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


@dg.sensor(job=ingestion_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_sensor(context: dg.SensorEvaluationContext, earnopt: EarnoptResource) -> dg.SensorResult | dg.SkipReason:
    """Requests ``ingestion_job`` when files appear in ``data/landing`` (hidden temp files are ignored).
    The run key hashes the file names and mtimes, so a file is never ingested twice; the run moves
    every file it loads to ``archive/``."""
    files = landing_files(earnopt.paths.landing)
    if not files:
        return dg.SkipReason("no files in landing")
    run_key = landing_run_key(files)
    names = sorted(p.name for p in files)
    context.log.info(f"{len(names)} landing files: {', '.join(names[:5])}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else ""))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags={"earnopt/landing_files": str(len(files))})],
        cursor=run_key,
    )

assets: list = [raw_earnings, earnings_features]
asset_checks: list = [raw_earnings_no_duplicate_keys, earnings_features_no_duplicate_keys, earnings_features_finite, raw_earnings_freshness]
jobs: list = [ingestion_job]
schedules: list = []
sensors: list = [landing_sensor]
