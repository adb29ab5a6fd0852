"""The ``forecasts`` table: every 24-hour forecast the pipeline made, LSTM or fallback.

One row per (forecast_time, device, protocol, target_ts). ``source`` is ``lstm`` or
``seasonal_naive_fallback``; ``reason`` says why the fallback was used (no model, failed check, short
data, prediction error). History is kept: the retrain sensor compares past LSTM forecasts with the
realised earnings in ``raw_earnings``.

Readers that must stay light (the 15-minute allocation tick, the API) query this table only and never
import TensorFlow. :func:`latest_forecasts` returns the newest forecast per protocol.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from earnopt_assets.warehouse import table_exists

SOURCES: tuple[str, ...] = ("lstm", "seasonal_naive_fallback")

FORECASTS_DDL = """
CREATE TABLE IF NOT EXISTS forecasts (
    forecast_time  TIMESTAMP NOT NULL,  -- UTC wall clock when the forecast was made
    device         VARCHAR   NOT NULL,
    protocol       VARCHAR   NOT NULL,
    origin_ts      TIMESTAMP NOT NULL,  -- last observed hour the forecast starts from
    target_ts      TIMESTAMP NOT NULL,  -- forecast hour (UTC)
    horizon_hours  INTEGER   NOT NULL,
    value          DOUBLE    NOT NULL,  -- forecast earnings_usd for target_ts, >= 0
    model_version  VARCHAR,
    source         VARCHAR   NOT NULL CHECK (source IN ('lstm', 'seasonal_naive_fallback')),
    reason         VARCHAR,
    PRIMARY KEY (forecast_time, device, protocol, target_ts)
)
"""

FORECAST_COLUMNS: tuple[str, ...] = (
    "forecast_time",
    "device",
    "protocol",
    "origin_ts",
    "target_ts",
    "horizon_hours",
    "value",
    "model_version",
    "source",
    "reason",
)


def ensure_forecasts_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(FORECASTS_DDL)


def write_forecasts(conn: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> int:
    """Insert (or replace on the same key) forecast rows; returns the count written."""
    if rows.empty:
        return 0
    missing = [c for c in FORECAST_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"forecast rows lack columns: {', '.join(missing)}")
    bad_source = set(rows["source"]) - set(SOURCES)
    if bad_source:
        raise ValueError(f"unknown forecast source(s): {sorted(bad_source)}")
    values = rows["value"].to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("forecast values must be finite and non-negative")
    ensure_forecasts_table(conn)
    frame = rows[list(FORECAST_COLUMNS)].copy()
    conn.register("__new_forecasts", frame)
    try:
        conn.execute(
            f"INSERT OR REPLACE INTO forecasts ({', '.join(FORECAST_COLUMNS)}) "
            f"SELECT {', '.join(FORECAST_COLUMNS)} FROM __new_forecasts"
        )
    finally:
        conn.unregister("__new_forecasts")
    return len(frame)


def latest_forecasts(conn: duckdb.DuckDBPyConnection, device: str | None = None) -> pd.DataFrame:
    """Rows of the newest forecast of each (device, protocol), ordered by protocol and target hour."""
    if not table_exists(conn, "forecasts"):
        return pd.DataFrame(columns=list(FORECAST_COLUMNS))
    return conn.execute(
        """
        SELECT f.* FROM forecasts f
        JOIN (SELECT device, protocol, max(forecast_time) AS forecast_time FROM forecasts
              WHERE ? IS NULL OR device = ? GROUP BY device, protocol) n
          USING (device, protocol, forecast_time)
        ORDER BY f.device, f.protocol, f.target_ts
        """,
        [device, device],
    ).df()


def read_recent_telemetry(conn: duckdb.DuckDBPyConnection, device: str, protocols: list[str], hours: int) -> pd.DataFrame:
    """The last ``hours`` hours (relative to each protocol's newest row) of raw telemetry."""
    if not protocols or not table_exists(conn, "raw_earnings"):
        return pd.DataFrame(columns=["protocol", "ts"])
    return conn.execute(
        """
        WITH latest AS (
            SELECT protocol, max(ts) AS last_ts FROM raw_earnings
            WHERE device = ? AND list_contains(?, protocol) GROUP BY protocol
        )
        SELECT r.protocol, r.ts, r.earnings_usd, r.cpu_cores, r.memory_gb, r.bandwidth_mbps, r.storage_gb,
               r.allocation, r.connection_failures
        FROM raw_earnings r JOIN latest l USING (protocol)
        WHERE r.device = ? AND r.ts > l.last_ts - to_hours(CAST(? AS BIGINT))
        ORDER BY r.protocol, r.ts
        """,
        [device, protocols, device, hours],
    ).df()


def read_planned_allocations(conn: duckdb.DuckDBPyConnection, device: str, protocols: list[str]) -> dict[str, float]:
    """The allocation share each protocol will run at: its ``allocation_state`` row (written by the
    allocation area's plan); empty when that table does not exist yet (no allocation cycle has run)."""
    if not protocols or not table_exists(conn, "allocation_state"):
        return {}
    rows = conn.execute(
        "SELECT protocol, allocation FROM allocation_state WHERE device = ? AND list_contains(?, protocol)",
        [device, protocols],
    ).fetchall()
    return {str(protocol): float(share) for protocol, share in rows if share is not None and 0.0 <= float(share) <= 1.0}


def realised_mape(
    conn: duckdb.DuckDBPyConnection,
    device: str,
    protocol: str,
    model_version: str,
    window_hours: int = 48,
) -> tuple[float | None, int]:
    """Live MAPE (percent) of this model version's LSTM forecasts over the last ``window_hours`` of telemetry.

    Every (forecast, actual) pair whose target hour lies in the window counts, so all horizons 1-24 h
    weigh in as they do in the holdout MAPE; zero actuals are skipped. Returns (MAPE or None, pairs).
    """
    if not (table_exists(conn, "forecasts") and table_exists(conn, "raw_earnings")):
        return None, 0
    row = conn.execute(
        """
        WITH last AS (SELECT max(ts) AS last_ts FROM raw_earnings WHERE device = ? AND protocol = ?)
        SELECT avg(abs(r.earnings_usd - f.value) / abs(r.earnings_usd)) * 100, count(*)
        FROM forecasts f
        JOIN raw_earnings r ON r.device = f.device AND r.protocol = f.protocol AND r.ts = f.target_ts
        CROSS JOIN last
        WHERE f.device = ? AND f.protocol = ? AND f.model_version = ? AND f.source = 'lstm'
          AND r.earnings_usd <> 0
          AND f.target_ts > last.last_ts - to_hours(CAST(? AS BIGINT))
        """,
        [device, protocol, device, protocol, model_version, window_hours],
    ).fetchone()
    if row is None or not row[1]:
        return None, 0
    return float(row[0]), int(row[1])


def forecast_rows(
    forecast_time: datetime,
    device: str,
    protocol: str,
    origin_ts: pd.Timestamp,
    targets: pd.DatetimeIndex,
    values: np.ndarray,
    source: str,
    model_version: str | None,
    reason: str | None,
) -> pd.DataFrame:
    """Assemble the rows of one protocol's forecast in the table's column order."""
    n = len(targets)
    return pd.DataFrame(
        {
            "forecast_time": [pd.Timestamp(forecast_time)] * n,
            "device": [device] * n,
            "protocol": [protocol] * n,
            "origin_ts": [pd.Timestamp(origin_ts)] * n,
            "target_ts": pd.DatetimeIndex(targets),
            "horizon_hours": np.arange(1, n + 1, dtype=np.int32),
            "value": np.clip(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0), 0.0, None),
            "model_version": [model_version] * n,
            "source": [source] * n,
            "reason": [reason] * n,
        }
    )
