"""Real hourly series for checking the forecasters on data nobody here generated.

Two sources:

* ``vega_datasets`` ships NOAA hourly temperatures for Seattle and San Francisco (2010, °F, 8759 rows
  each: one hour is missing at the spring DST change) inside its wheel, so no download is needed.
  Temperatures are positive in °F, so MAPE is meaningful.
* CSV files ``ts,y`` (hour, value >= 0) such as the shared folder ``/work/shared/data/real-hourly/``
  (:data:`SHARED_REAL_HOURLY`; ``bike_rentals.csv``, ``road_occupancy.csv``). The series name is the
  file stem.

Every series goes through the NORMAL landing path: :func:`write_landing_file` writes a contract CSV (the
value in the ``earnings_usd`` column, constant resource columns, allocation 1.0) that ``ingest_landing``
validates and loads into ``raw_earnings``; :func:`land_and_build_features` runs landing -> ingest ->
raw_earnings -> features in a scratch directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from earnopt_assets.catalog import Catalog, parse_catalog

REAL_SERIES: dict[str, str] = {"seattle_temps": "seattle_temps", "sf_temps": "sf_temps"}
# <repo>/../shared/data/real-hourly (override with EARNOPT_REAL_HOURLY_DIR)
SHARED_REAL_HOURLY = Path(os.environ.get("EARNOPT_REAL_HOURLY_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "real-hourly"))


def shared_series_paths(directory: str | Path | None = None) -> dict[str, Path]:
    """``{stem: path}`` of the ``*.csv`` series in the shared folder; empty when the folder is absent."""
    folder = Path(directory) if directory is not None else SHARED_REAL_HOURLY
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.csv"))}


def load_csv_series(path: str | Path) -> pd.DataFrame:
    """``ts`` and ``value`` of a ``ts,y`` CSV; a clear ``ValueError`` naming the file when malformed."""
    path = Path(path)
    raw = pd.read_csv(path)
    missing = {"ts", "y"} - set(raw.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need ts,y)")
    ts = pd.to_datetime(raw["ts"], errors="coerce")
    value = pd.to_numeric(raw["y"], errors="coerce")
    bad = ts.isna() | value.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ValueError(f"{path}: row {row + 2} has an unreadable ts or y ({raw.iloc[row].to_dict()})")
    return pd.DataFrame({"ts": ts, "value": value.astype(float)}).sort_values("ts", ignore_index=True)


def load_series(name: str) -> pd.DataFrame:
    """``ts`` (naive local clock hours) and ``value`` of a shipped vega_datasets series or a shared CSV."""
    if name in REAL_SERIES:
        from vega_datasets import local_data

        raw = getattr(local_data, REAL_SERIES[name])()
        return pd.DataFrame({"ts": pd.to_datetime(raw["date"]), "value": raw["temp"].astype(float)}).sort_values("ts", ignore_index=True)
    shared = shared_series_paths()
    if name in shared:
        return load_csv_series(shared[name])
    known = [*REAL_SERIES, *shared]
    raise KeyError(f"unknown real series {name!r}; known: {', '.join(known)}")


def real_series_catalog(base_catalog: str | Path, source: str | Path, names: list[str] | tuple[str, ...] | None = None) -> Catalog:
    """The base catalog's host (timezone UTC: the stamps are kept as given) with one protocol per series."""
    raw = yaml.safe_load(Path(base_catalog).read_text(encoding="utf-8"))
    raw["host"]["timezone"] = "UTC"
    raw["protocols"] = [
        {"name": name, "kind": "bandwidth", "cpu_cores": 0.1, "memory_gb": 0.1, "bandwidth_mbps": 1, "storage_gb": 0.1}
        for name in (names if names is not None else REAL_SERIES)
    ]
    return parse_catalog(raw, source)


def write_landing_file(
    name: str, landing: Path, device: str, start: str | None = None, end: str | None = None, series: pd.DataFrame | None = None
) -> Path:
    """Write ``<landing>/<name>.csv`` in the telemetry contract for the series between ``start`` and
    ``end`` (``series``: a ``ts``/``value`` frame; default :func:`load_series`)."""
    series = load_series(name) if series is None else series
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


def land_and_build_features(
    names: list[str], workdir: Path, base_catalog: str | Path, *, days: int | None = None, start: str | None = None, end: str | None = None
):
    """Land ``names`` (the most recent ``days`` of each, or ``start``..``end``), ingest them into a scratch
    warehouse under ``workdir`` and build the shared feature table.

    Returns ``(catalog, telemetry, features, ingest_report, feature_stats)``.
    """
    from earnopt_assets.ingestion.feature_store import load_raw_for_features
    from earnopt_assets.ingestion.features import build_feature_table
    from earnopt_assets.settings import EarnoptPaths
    from earnopt_assets.warehouse import connect

    try:
        from earnopt_assets.ingestion.run import ingest_landing
    except ImportError:  # before the ingestion split
        from earnopt_assets.ingestion.pipeline import ingest_landing

    catalog = real_series_catalog(base_catalog, workdir / "catalog.yaml", names)
    paths = EarnoptPaths(workdir / "data").ensure()
    for name in names:
        series = load_series(name)
        first = start
        if days is not None and start is None:
            first = str(series["ts"].max() - pd.Timedelta(days=days) + pd.Timedelta(hours=1))
        write_landing_file(name, paths.landing, catalog.host.device, start=first, end=end, series=series)
    with connect(paths.warehouse) as conn:
        report = ingest_landing(conn, paths, catalog)
        telemetry = load_raw_for_features(conn)
    features, stats = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    return catalog, telemetry, features, report, stats
