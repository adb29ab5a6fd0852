"""The ``forecasts`` table: every 24-hour forecast the pipeline made, and the ONE place that reads or writes it.

One row per (forecast_time, device, protocol, target_ts). ``source`` names the forecaster that produced
the row truthfully (``lstm``, ``mstl``, ``ets``, ``seasonal_naive_24``, ``seasonal_naive_168``, ...,
``seasonal_naive_fallback`` when no decision applies); ``reason`` says why that source serves (from the
serving decision, :mod:`earnopt_assets.forecasting.registry`); ``below_target`` flags a source whose holdout
MAPE misses the target (served because no candidate meets it). ``lower_80 .. upper_95`` are the conformal
prediction intervals of the row (NULL when the source has no scored residuals yet). History is kept: the
retrain sensor compares past LSTM forecasts with the realised earnings.

Readers that must stay light (the 15-minute allocation tick, the API) call :func:`latest_forecasts` and
never import TensorFlow; nobody else writes SQL against this table.
"""

from __future__ import annotations

import re
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from earnopt_assets.warehouse import table_exists

# A source is a forecaster name: lower-case words joined by underscores (validated before every write).
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
INTERVAL_COLUMNS: tuple[str, ...] = ("lower_80", "upper_80", "lower_95", "upper_95")

FORECASTS_DDL = """
CREATE TABLE IF NOT EXISTS forecasts (
    forecast_time  TIMESTAMP NOT NULL,  -- UTC wall clock when the forecast was made
    device         VARCHAR   NOT NULL,
    protocol       VARCHAR   NOT NULL,
    origin_ts      TIMESTAMP NOT NULL,  -- last observed hour the forecast starts from
    target_ts      TIMESTAMP NOT NULL,  -- forecast hour (UTC)
    horizon_hours  INTEGER   NOT NULL,
    value          DOUBLE    NOT NULL,  -- forecast earnings_usd for target_ts, >= 0
    lower_80       DOUBLE,              -- 80 % prediction interval (USD/h), NULL when not scored
    upper_80       DOUBLE,
    lower_95       DOUBLE,              -- 95 % prediction interval (USD/h)
    upper_95       DOUBLE,
    model_version  VARCHAR,             -- the LSTM champion version when source = 'lstm'
    source         VARCHAR   NOT NULL,  -- forecaster that produced the row (lstm, mstl, ets, seasonal_naive_168, ...)
    reason         VARCHAR,             -- why this source serves
    below_target   BOOLEAN   NOT NULL DEFAULT FALSE,
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
    *INTERVAL_COLUMNS,
    "model_version",
    "source",
    "reason",
    "below_target",
)
# Columns a writer may leave out: no interval (NULL) and not flagged below target.
OPTIONAL_COLUMNS: tuple[str, ...] = (*INTERVAL_COLUMNS, "below_target")


def ensure_forecasts_table(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the table; a table of the earlier layout (no intervals, a CHECK on two source names) is
    copied into the new layout in one transaction, keeping every row."""
    if table_exists(conn, "forecasts"):
        existing = {row[0] for row in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'forecasts'").fetchall()}
        if set(FORECAST_COLUMNS) <= existing:
            return
        shared = [c for c in FORECAST_COLUMNS if c in existing]
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute("ALTER TABLE forecasts RENAME TO forecasts_previous_layout")
            conn.execute(FORECASTS_DDL)
            conn.execute(f"INSERT INTO forecasts ({', '.join(shared)}) SELECT {', '.join(shared)} FROM forecasts_previous_layout")
            conn.execute("DROP TABLE forecasts_previous_layout")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return
    conn.execute(FORECASTS_DDL)


def write_forecasts(conn: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> int:
    """Insert (or replace on the same key) forecast rows; returns the count written. Intervals and
    ``below_target`` may be left out (NULL / false)."""
    if rows.empty:
        return 0
    missing = [c for c in FORECAST_COLUMNS if c not in rows.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"forecast rows lack columns: {', '.join(missing)}")
    rows = rows.assign(**{c: (False if c == "below_target" else np.nan) for c in OPTIONAL_COLUMNS if c not in rows.columns})
    bad_source = sorted({str(s) for s in rows["source"] if not SOURCE_NAME.fullmatch(str(s))})
    if bad_source:
        raise ValueError(f"invalid forecast source name(s): {bad_source}")
    values = rows["value"].to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("forecast values must be finite and non-negative")
    bounds = rows[list(INTERVAL_COLUMNS)].to_numpy(dtype=float)
    known = np.isfinite(bounds).all(axis=1)
    if known.any():
        b = bounds[known] + np.array([0.0, 0.0, -1e-9, 1e-9])  # tolerance for float round-off
        if (bounds[known] < 0).any() or not ((b[:, 2] <= b[:, 0]) & (b[:, 0] <= b[:, 1]) & (b[:, 1] <= b[:, 3])).all():
            raise ValueError("forecast intervals must be non-negative and nested: lower_95 <= lower_80 <= upper_80 <= upper_95")
    ensure_forecasts_table(conn)
    frame = rows[list(FORECAST_COLUMNS)].copy()
    frame["below_target"] = frame["below_target"].fillna(False).astype(bool)
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
    """Rows of the newest forecast of each (device, protocol), ordered by device, protocol and target hour.

    ``device=None`` reads every device. The one read of "the latest forecast" (allocation and service use it).
    """
    if not table_exists(conn, "forecasts"):
        return pd.DataFrame(columns=list(FORECAST_COLUMNS))
    present = {row[0] for row in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'forecasts'").fetchall()}
    select = ", ".join(f"f.{c}" if c in present else f"NULL AS {c}" for c in FORECAST_COLUMNS)
    return conn.execute(
        f"""
        SELECT {select} FROM forecasts f
        JOIN (SELECT device, protocol, max(forecast_time) AS forecast_time FROM forecasts
              WHERE ? IS NULL OR device = ? GROUP BY device, protocol) n
          USING (device, protocol, forecast_time)
        ORDER BY f.device, f.protocol, f.target_ts
        """,
        [device, device],
    ).df()


def latest_forecast_of(conn: duckdb.DuckDBPyConnection, protocol: str, device: str) -> pd.DataFrame:
    """Rows of the newest forecast of one (device, protocol), by target hour (empty without a forecast).
    The read behind ``GET /forecasts/{protocol}``: one protocol, so the poll reads only its rows."""
    if not table_exists(conn, "forecasts"):
        return pd.DataFrame(columns=list(FORECAST_COLUMNS))
    present = {row[0] for row in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'forecasts'").fetchall()}
    select = ", ".join(c if c in present else f"NULL AS {c}" for c in FORECAST_COLUMNS)
    return conn.execute(
        f"""
        SELECT {select} FROM forecasts
        WHERE device = ? AND protocol = ?
          AND forecast_time = (SELECT max(forecast_time) FROM forecasts WHERE device = ? AND protocol = ?)
        ORDER BY target_ts
        """,
        [device, protocol, device, protocol],
    ).df()


def forecasts_of_version(
    conn: duckdb.DuckDBPyConnection, device: str, protocol: str, model_version: str, since: datetime | None = None
) -> pd.DataFrame:
    """``(target_ts, value)`` of every LSTM forecast row of one model version (target hour >= ``since``)."""
    if not table_exists(conn, "forecasts"):
        return pd.DataFrame(columns=["target_ts", "value"])
    return conn.execute(
        """
        SELECT target_ts, value FROM forecasts
        WHERE device = ? AND protocol = ? AND model_version = ? AND source = 'lstm' AND (? IS NULL OR target_ts >= ?)
        ORDER BY target_ts
        """,
        [device, protocol, model_version, since, since],
    ).df()


def read_recent_telemetry(conn: duckdb.DuckDBPyConnection, device: str, protocols: list[str], hours: int) -> pd.DataFrame:
    """The last ``hours`` hours (relative to each protocol's newest row) of raw telemetry, through the
    ingestion store (the table's one owner)."""
    from earnopt_assets.ingestion.store import read_telemetry_tail

    if not protocols:
        return pd.DataFrame(columns=["protocol", "ts"])
    columns = ["protocol", "ts", "earnings_usd", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb", "allocation", "connection_failures"]
    return read_telemetry_tail(conn, hours=hours, device=device, protocols=protocols, columns=columns)


def read_planned_allocations(conn: duckdb.DuckDBPyConnection, device: str, protocols: list[str]) -> dict[str, float]:
    """The allocation share each protocol will run at (the allocation area's ``allocation_state``, read
    through its store); empty before any allocation cycle has run."""
    from earnopt_assets.allocation.store import planned_allocations

    if not protocols:
        return {}
    return planned_allocations(conn, device, protocols)


def realised_mape(
    conn: duckdb.DuckDBPyConnection,
    device: str,
    protocol: str,
    model_version: str,
    window_hours: int = 48,
) -> tuple[float | None, int]:
    """Live MAPE (percent) of this model version's LSTM forecasts over the last ``window_hours`` of telemetry.

    MAPE = 100/m * sum |a - f| / |a| over the m (forecast, actual) pairs whose target hour lies in the window
    (all horizons 1-24 h weigh in, as in the holdout MAPE; zero actuals skipped). Actuals are read through
    the ingestion store. Returns (MAPE or None, pairs).
    """
    from earnopt_assets.ingestion.store import latest_ts, read_telemetry

    last = latest_ts(conn, device=device, protocol=protocol)
    if last is None:
        return None, 0
    start = pd.Timestamp(last) - pd.Timedelta(hours=window_hours - 1)
    forecasts = forecasts_of_version(conn, device, protocol, model_version, since=start.to_pydatetime())
    if forecasts.empty:
        return None, 0
    actual = read_telemetry(conn, device=device, protocols=[protocol], start=start.to_pydatetime(), columns=["ts", "earnings_usd"])
    pairs = forecasts.merge(actual.rename(columns={"ts": "target_ts"}), on="target_ts")
    pairs = pairs.loc[pairs["earnings_usd"] != 0]
    if pairs.empty:
        return None, 0
    a, f = pairs["earnings_usd"].to_numpy(float), pairs["value"].to_numpy(float)
    return float(100.0 * np.mean(np.abs(a - f) / np.abs(a))), len(pairs)


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
    intervals: dict[str, np.ndarray] | None = None,
    below_target: bool = False,
) -> pd.DataFrame:
    """Assemble the rows of one protocol's forecast in the table's column order (intervals optional)."""
    n = len(targets)
    frame = pd.DataFrame(
        {
            "forecast_time": [pd.Timestamp(forecast_time)] * n,
            "device": [device] * n,
            "protocol": [protocol] * n,
            "origin_ts": [pd.Timestamp(origin_ts)] * n,
            "target_ts": pd.DatetimeIndex(targets),
            "horizon_hours": np.arange(1, n + 1, dtype=np.int32),
            "value": np.clip(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0), 0.0, None),
        }
    )
    for column in INTERVAL_COLUMNS:
        bound = None if intervals is None else intervals.get(column)
        frame[column] = np.full(n, np.nan) if bound is None else np.clip(np.asarray(bound, dtype=float), 0.0, None)
    frame["model_version"] = [model_version] * n
    frame["source"] = [source] * n
    frame["reason"] = [reason] * n
    frame["below_target"] = [bool(below_target)] * n
    return frame
