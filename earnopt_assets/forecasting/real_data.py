"""Real hourly series for checking the forecaster on data nobody here generated.

``vega_datasets`` ships NOAA hourly temperatures for Seattle and San Francisco (2010, °F, 8759 rows
each: one hour is missing at the spring DST change) inside its wheel, so no download is needed. They go
through the NORMAL landing path: :func:`write_landing_file` writes a contract CSV (the temperature in the
``earnings_usd`` column, constant resource columns) that :func:`earnopt_assets.ingestion.pipeline.ingest_landing`
validates and loads into ``raw_earnings``. Temperatures are positive in °F, so MAPE is meaningful.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from earnopt_assets.catalog import Catalog, parse_catalog

REAL_SERIES: dict[str, str] = {"seattle_temps": "seattle_temps", "sf_temps": "sf_temps"}


def load_series(name: str) -> pd.DataFrame:
    """``ts`` (naive local clock hours) and ``value`` of one shipped series."""
    if name not in REAL_SERIES:
        raise KeyError(f"unknown real series {name!r}; known: {', '.join(REAL_SERIES)}")
    from vega_datasets import local_data

    raw = getattr(local_data, REAL_SERIES[name])()
    return pd.DataFrame({"ts": pd.to_datetime(raw["date"]), "value": raw["temp"].astype(float)}).sort_values("ts", ignore_index=True)


def real_series_catalog(base_catalog: str | Path, source: str | Path) -> Catalog:
    """The base catalog's host (timezone UTC: the stamps are kept as given) with one protocol per series."""
    raw = yaml.safe_load(Path(base_catalog).read_text(encoding="utf-8"))
    raw["host"]["timezone"] = "UTC"
    raw["protocols"] = [
        {"name": name, "kind": "bandwidth", "cpu_cores": 0.1, "memory_gb": 0.1, "bandwidth_mbps": 1, "storage_gb": 0.1}
        for name in REAL_SERIES
    ]
    return parse_catalog(raw, source)


def write_landing_file(name: str, landing: Path, device: str, start: str | None = None, end: str | None = None) -> Path:
    """Write ``<landing>/<name>.csv`` in the telemetry contract for the series between ``start`` and ``end``."""
    series = load_series(name)
    if start is not None:
        series = series[series["ts"] >= pd.Timestamp(start)]
    if end is not None:
        series = series[series["ts"] <= pd.Timestamp(end)]
    frame = pd.DataFrame(
        {
            "device": device,
            "protocol": name,
            "ts": series["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S"),
            "earnings_usd": series["value"].to_numpy(),
            "cpu_cores": 0.1,
            "memory_gb": 0.1,
            "bandwidth_mbps": 1.0,
            "storage_gb": 0.1,
            "allocation": 1.0,
            "connection_failures": 0,
        }
    )
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path
