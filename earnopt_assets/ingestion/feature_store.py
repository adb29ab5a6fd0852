"""Where the feature table lives: the DuckDB table ``earnings_features`` and per-protocol Parquet snapshots.

The forecasting area trains from ``<features_dir>/<protocol>.parquet`` (see
:func:`read_feature_snapshot`) so that model training never opens the warehouse. Snapshots are written
atomically: a crash leaves the previous snapshot in place.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from earnopt_assets.atomic import atomic_write_bytes
from earnopt_assets.catalog import Catalog
from earnopt_assets.ingestion.features import (
    FEATURE_COLUMNS,
    IMPUTED_COLUMN,
    KEY_COLUMNS,
    FeatureBuildStats,
    build_feature_table,
    validate_features,
)
from earnopt_assets.ingestion.store import read_telemetry
from earnopt_assets.warehouse import TELEMETRY_COLUMNS, table_exists

# The telemetry contract minus the optional latency, which no feature uses, plus the imputed-hour flag
# (carried to the snapshots so training can leave those hours out of its targets; features unchanged).
RAW_FEATURE_INPUT_COLUMNS: tuple[str, ...] = (*(c for c in TELEMETRY_COLUMNS if c != "latency_ms"), IMPUTED_COLUMN)


def load_raw_for_features(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every ``raw_earnings`` row the feature builder needs, ordered by series and hour."""
    return read_telemetry(conn, columns=RAW_FEATURE_INPUT_COLUMNS)


def to_arrow(table: pd.DataFrame | pa.Table) -> pa.Table:
    """The feature table as Arrow with exactly the key and feature columns, plus ``imputed`` when the
    table carries it (convert once, reuse)."""
    names = table.column_names if isinstance(table, pa.Table) else list(table.columns)
    columns = [*KEY_COLUMNS, *FEATURE_COLUMNS, *([IMPUTED_COLUMN] if IMPUTED_COLUMN in names else [])]
    if isinstance(table, pa.Table):
        return table.select(columns)
    return pa.Table.from_pandas(table[columns].reset_index(drop=True), preserve_index=False)


def feature_key_duplicates(conn: duckdb.DuckDBPyConnection, limit: int = 10) -> tuple[int, pd.DataFrame]:
    """Keys (device, protocol, ts) stored more than once in ``earnings_features``: (count, worst examples)."""
    if not table_exists(conn, "earnings_features"):
        return 0, pd.DataFrame(columns=["device", "protocol", "ts", "copies"])
    grouped = "SELECT device, protocol, ts, count(*) AS copies FROM earnings_features GROUP BY device, protocol, ts HAVING count(*) > 1"
    total = int(conn.execute(f"SELECT count(*) FROM ({grouped})").fetchone()[0])
    examples = conn.execute(f"{grouped} ORDER BY copies DESC, device, protocol, ts LIMIT ?", [limit]).df()
    return total, examples


def read_feature_keys(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame | None:
    """(device, protocol, ts) of every ``earnings_features`` row, or None before the table exists."""
    if not table_exists(conn, "earnings_features"):
        return None
    return conn.execute("SELECT device, protocol, ts FROM earnings_features").df()


def feature_non_finite_counts(conn: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, int], list[str]]:
    """(rows, non-finite values per feature column, missing feature columns) of ``earnings_features``."""
    if not table_exists(conn, "earnings_features"):
        return 0, {}, list(FEATURE_COLUMNS)
    present = {name for (name,) in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'earnings_features'").fetchall()}
    missing = [c for c in FEATURE_COLUMNS if c not in present]
    if missing:
        return 0, {}, missing
    # Identifiers come from the fixed FEATURE_COLUMNS list, never from input.
    counts = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL OR NOT isfinite({c}))" for c in FEATURE_COLUMNS)
    row = conn.execute(f"SELECT count(*), {counts} FROM earnings_features").fetchone()
    return int(row[0]), {c: int(n) for c, n in zip(FEATURE_COLUMNS, row[1:]) if int(n) > 0}, []


def replace_feature_table(conn: duckdb.DuckDBPyConnection, table: pd.DataFrame | pa.Table) -> None:
    """Replace the DuckDB table ``earnings_features`` with ``table`` in one statement."""
    conn.register("__features", to_arrow(table))
    try:
        conn.execute("CREATE OR REPLACE TABLE earnings_features AS SELECT * FROM __features")
    finally:
        conn.unregister("__features")


def snapshot_path(features_dir: Path, protocol: str, catalog: Catalog) -> Path:
    """``features_dir/<protocol>.parquet``; the name must pass ``catalog.require`` first."""
    spec = catalog.require(protocol)
    return Path(features_dir) / f"{spec.name}.parquet"


def write_feature_snapshots(table: pd.DataFrame | pa.Table, features_dir: Path, catalog: Catalog, protocols: Iterable[str] | None = None) -> dict[str, Path]:
    """Write one Parquet file per protocol present in ``table`` (all devices), atomically."""
    written: dict[str, Path] = {}
    arrow = to_arrow(table)
    names = sorted(pc.unique(arrow["protocol"]).to_pylist()) if protocols is None else list(protocols)
    for protocol in names:
        path = snapshot_path(features_dir, protocol, catalog)
        buffer = io.BytesIO()
        pq.write_table(arrow.filter(pc.equal(arrow["protocol"], protocol)), buffer)
        written[protocol] = atomic_write_bytes(path, buffer.getvalue())
    return written


def read_feature_snapshot(features_dir: Path, protocol: str, catalog: Catalog) -> pd.DataFrame:
    """The feature rows of one protocol, as written by the ``earnings_features`` asset.

    Raises ``FileNotFoundError`` (naming the path) if the asset has not produced it yet.
    """
    path = snapshot_path(features_dir, protocol, catalog)
    if not path.exists():
        raise FileNotFoundError(f"no feature snapshot {path}; materialize earnings_features first")
    return pd.read_parquet(path)


def build_and_publish_features(
    raw: pd.DataFrame, catalog: Catalog, features_dir: Path, replace_table: Callable[[pa.Table], None]
) -> tuple[pd.DataFrame, FeatureBuildStats, dict[str, Path]]:
    """Build the feature table from ``raw`` telemetry, validate it, and publish it twice at the same
    time: the per-protocol Parquet snapshots (atomic) and, through ``replace_table`` (which opens its own
    short warehouse connection), the DuckDB table. Returns (table, stats, snapshot paths). Raises
    ``FeatureValidationError`` before anything is written when a value is out of range."""
    table, stats = build_feature_table(raw, catalog.host.totals(), catalog.host.timezone)
    validate_features(table)
    arrow = to_arrow(table)
    # Every catalog protocol with telemetry gets a snapshot, empty during its first week (lag-168 warm-up):
    # training then reads "no rows yet" (warming up) instead of a missing file (#17).
    present = set(raw["protocol"].astype(str)) if "protocol" in raw else set()
    protocols = sorted(present & set(catalog.names) | set(pc.unique(arrow["protocol"]).to_pylist()))
    # Both writers release the GIL, so the snapshots are written while DuckDB ingests the table.
    with ThreadPoolExecutor(max_workers=1) as pool:
        snapshots = pool.submit(write_feature_snapshots, arrow, features_dir, catalog, protocols)
        replace_table(arrow)
        written = snapshots.result()
    write_history_spans(raw, features_dir, catalog)
    return table, stats, written


HISTORY_FILE = "history.json"


def write_history_spans(raw: pd.DataFrame, features_dir: Path, catalog: Catalog) -> Path:
    """``features_dir/history.json``: per device and catalog protocol, the telemetry span in hours (first to
    last observed hour, inclusive). Training reads it to say how far a young series is from its minimum
    history (#17) without opening the warehouse."""
    from earnopt_assets.atomic import atomic_write_json

    spans: dict[str, dict[str, dict[str, object]]] = {}
    if not raw.empty:
        known = raw.loc[raw["protocol"].isin(catalog.names)]
        for (device, protocol), part in known.groupby(["device", "protocol"], sort=True):
            ts = pd.to_datetime(part["ts"])
            hours = (ts.max() - ts.min()) / pd.Timedelta(hours=1) + 1
            spans.setdefault(str(device), {})[str(protocol)] = {
                "first_ts": ts.min().isoformat(), "last_ts": ts.max().isoformat(), "hours": float(hours)}
    return atomic_write_json(Path(features_dir) / HISTORY_FILE, spans)


def read_history_hours(features_dir: Path, device: str, protocol: str) -> float | None:
    """The telemetry span in hours ``earnings_features`` recorded for one series (None: not recorded)."""
    import json

    path = Path(features_dir) / HISTORY_FILE
    try:
        spans = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = spans.get(device, {}).get(protocol) if isinstance(spans, dict) else None
    hours = entry.get("hours") if isinstance(entry, dict) else None
    return float(hours) if isinstance(hours, (int, float)) else None
