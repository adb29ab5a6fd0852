"""Where the feature table lives: the DuckDB table ``earnings_features`` and per-protocol Parquet snapshots.

The forecasting area trains from ``<features_dir>/<protocol>.parquet`` (see
:func:`read_feature_snapshot`) so that model training never opens the warehouse. Snapshots are written
atomically: a crash leaves the previous snapshot in place.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pandas as pd

from earnopt_assets.atomic import atomic_write_bytes
from earnopt_assets.catalog import Catalog
from earnopt_assets.features import FEATURE_COLUMNS, KEY_COLUMNS
from earnopt_assets.warehouse import table_exists

RAW_FEATURE_INPUT_COLUMNS: tuple[str, ...] = (
    "device",
    "protocol",
    "ts",
    "earnings_usd",
    "cpu_cores",
    "memory_gb",
    "bandwidth_mbps",
    "storage_gb",
    "allocation",
    "connection_failures",
)


def load_raw_for_features(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every ``raw_earnings`` row the feature builder needs, ordered by series and hour."""
    if not table_exists(conn, "raw_earnings"):
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in RAW_FEATURE_INPUT_COLUMNS})
    columns = ", ".join(RAW_FEATURE_INPUT_COLUMNS)
    return conn.execute(f"SELECT {columns} FROM raw_earnings ORDER BY device, protocol, ts").df()


def replace_feature_table(conn: duckdb.DuckDBPyConnection, table: pd.DataFrame) -> None:
    """Replace the DuckDB table ``earnings_features`` with ``table`` in one statement."""
    conn.register("__features", table[[*KEY_COLUMNS, *FEATURE_COLUMNS]])
    try:
        conn.execute("CREATE OR REPLACE TABLE earnings_features AS SELECT * FROM __features")
    finally:
        conn.unregister("__features")


def snapshot_path(features_dir: Path, protocol: str, catalog: Catalog) -> Path:
    """``features_dir/<protocol>.parquet``; the name must pass ``catalog.require`` first."""
    spec = catalog.require(protocol)
    return Path(features_dir) / f"{spec.name}.parquet"


def write_feature_snapshots(table: pd.DataFrame, features_dir: Path, catalog: Catalog, protocols: Iterable[str] | None = None) -> dict[str, Path]:
    """Write one Parquet file per protocol present in ``table`` (all devices), atomically."""
    written: dict[str, Path] = {}
    names = sorted(set(table["protocol"].astype(str))) if protocols is None else list(protocols)
    for protocol in names:
        path = snapshot_path(features_dir, protocol, catalog)
        part = table.loc[table["protocol"] == protocol].reset_index(drop=True)
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
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
