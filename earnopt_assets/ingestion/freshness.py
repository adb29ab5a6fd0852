"""Telemetry freshness against the wall clock, per (device, protocol) series. Plain pandas.

    lag_h = (now - latest_hour_utc) / 1 h          stale  <=>  lag_h > max_lag_h

A series expected from the catalog (enabled protocol on the host device) without any row is stale too
(``latest_hour_utc`` empty). The newest hour of telemetry is the START of that hour, so a collector that
delivers each hour right after it ends shows a lag of a little over 1 h.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd

DEFAULT_MAX_LAG_HOURS = 3.0


def series_lag(summary: pd.DataFrame, now: datetime, expected: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """Per series: ``device``, ``protocol``, ``latest_hour_utc`` (text), ``lag_h`` (float, NaN when no row).

    ``summary`` has device, protocol, latest_ts (naive UTC) as from
    :func:`earnopt_assets.ingestion.store.telemetry_summary`; ``expected`` adds series that must exist.
    """
    now_ts = pd.Timestamp(now)
    now_ts = now_ts.tz_convert("UTC").tz_localize(None) if now_ts.tzinfo is not None else now_ts
    frame = summary[["device", "protocol", "latest_ts"]]
    have = set(zip(frame["device"], frame["protocol"]))
    missing = [(d, p) for d, p in expected if (d, p) not in have]
    devices = [*frame["device"], *(d for d, _ in missing)]
    protocols = [*frame["protocol"], *(p for _, p in missing)]
    latest = pd.Series([*pd.to_datetime(frame["latest_ts"]), *([pd.NaT] * len(missing))], dtype="datetime64[ns]")
    return pd.DataFrame(
        {
            "device": pd.Series(devices, dtype=object).astype(str),
            "protocol": pd.Series(protocols, dtype=object).astype(str),
            "latest_hour_utc": [("" if pd.isna(t) else f"{t:%Y-%m-%d %H:%M}") for t in latest],
            "lag_h": ((now_ts - latest).dt.total_seconds() / 3600.0).round(2).astype(float),
        }
    ).sort_values(["device", "protocol"], ignore_index=True)


def stale_series(lags: pd.DataFrame, max_lag_hours: float = DEFAULT_MAX_LAG_HOURS) -> pd.DataFrame:
    """The rows of :func:`series_lag` that are stale: lag above ``max_lag_hours`` or no telemetry at all."""
    return lags.loc[lags["lag_h"].isna() | (lags["lag_h"] > max_lag_hours)].reset_index(drop=True)
