"""Ingestion + feature-building benchmark on ~1M telemetry rows.

Generates ``devices x protocols x hours`` rows with the simulator (one Parquet file per device; the
device column is rewritten so every device is its own series), then times, in a fresh tmp data dir per
run: (1) ``ingest_landing`` into a new DuckDB file and (2) feature building (load raw from DuckDB,
``build_feature_table``, ``validate_features``, replace the DuckDB table, write per-protocol Parquet).
Prints medians over ``--runs`` runs, rows/s and peak memory (the process max RSS from getrusage, which
includes DuckDB/Arrow native memory; tracemalloc is not used because it slows pandas down several-fold).
The first run pays one-off imports (scipy.signal); the median hides that.

    .venv/bin/python benchmarks/ingest.py            # 40 devices x 12 protocols x 90 days = 1,036,800 rows
    .venv/bin/python benchmarks/ingest.py --devices 4 --runs 1   # quick
Target: ingest + features <= 10 s for 1M rows on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from earnopt_assets.catalog import load_catalog
from earnopt_assets.ingestion.feature_store import (
    build_and_publish_features,
    load_raw_for_features,
    replace_feature_table,
)
from earnopt_assets.ingestion.run import ingest_landing
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate


def generate(landing_src: Path, devices: int, days: int, seed: int) -> int:
    catalog = load_catalog()
    result = simulate(catalog, days=days, seed=seed, end="2026-01-01T00:00:00")
    landing_src.mkdir(parents=True, exist_ok=True)
    rows = 0
    for d in range(devices):
        frame = result.telemetry.copy()
        frame["device"] = f"dev{d:03d}"
        # Decorrelate devices a little so series are not identical copies.
        frame["earnings_usd"] = frame["earnings_usd"] * (0.8 + 0.4 * ((d * 37) % 11) / 10)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        (landing_src / f"bench_dev{d:03d}.parquet").write_bytes(buffer.getvalue())
        rows += len(frame)
    return rows


def run_once(landing_src: Path, workdir: Path) -> tuple[float, float, float, float, int, int]:
    catalog = load_catalog()
    paths = EarnoptPaths(workdir).ensure()
    for f in landing_src.iterdir():
        shutil.copy(f, paths.landing / f.name)
    t0, c0 = time.perf_counter(), time.process_time()
    with duckdb.connect(str(paths.warehouse)) as conn:
        report = ingest_landing(conn, paths, catalog)
    t1, c1 = time.perf_counter(), time.process_time()
    with duckdb.connect(str(paths.warehouse)) as conn:
        raw = load_raw_for_features(conn)
    t_load = time.perf_counter()

    def replace_table(arrow) -> None:
        with duckdb.connect(str(paths.warehouse)) as conn:
            replace_feature_table(conn, arrow)

    table, _stats, _written = build_and_publish_features(raw, catalog, paths.features_dir, replace_table)  # as the asset does
    t2, c2 = time.perf_counter(), time.process_time()
    assert report.rows_stored + report.rows_superseded + report.rows_quarantined == report.rows_read
    print(f"  (of features: load raw_earnings through ingestion.store {t_load - t1:.2f} s)")
    return t1 - t0, t2 - t1, c1 - c0, c2 - c1, report.rows_stored, len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="earnopt-bench-"))
    try:
        src = root / "src"
        t = time.perf_counter()
        rows = generate(src, args.devices, args.days, args.seed)
        print(f"generated {rows:,} rows in {len(list(src.iterdir()))} Parquet files in {time.perf_counter() - t:.2f} s")
        ingest_times, feature_times, ingest_cpu, feature_cpu = [], [], [], []
        for i in range(args.runs):
            ingest_s, feature_s, ingest_c, feature_c, accepted, feature_rows = run_once(src, root / f"run{i}")
            ingest_times.append(ingest_s)
            feature_times.append(feature_s)
            ingest_cpu.append(ingest_c)
            feature_cpu.append(feature_c)
            print(
                f"run {i + 1}: ingest {ingest_s:.2f} s wall / {ingest_c:.2f} s cpu ({accepted:,} rows stored), "
                f"features {feature_s:.2f} s wall / {feature_c:.2f} s cpu ({feature_rows:,} rows)"
            )
            shutil.rmtree(root / f"run{i}", ignore_errors=True)
        ingest_med, feature_med = statistics.median(ingest_times), statistics.median(feature_times)
        total = ingest_med + feature_med
        max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        load = os.getloadavg()[0]
        print(f"rows                 : {rows:,}")
        print(f"ingest   (median)    : {ingest_med:.2f} s  = {rows / ingest_med:,.0f} rows/s")
        print(f"features (median)    : {feature_med:.2f} s  = {rows / feature_med:,.0f} rows/s")
        print(f"ingest+features      : {total:.2f} s  = {rows / total:,.0f} rows/s  (target <= 10 s for 1M rows: {'OK' if total <= 10 * rows / 1e6 else 'MISSED'})")
        print(f"cpu time (median)    : ingest {statistics.median(ingest_cpu):.2f} s, features {statistics.median(feature_cpu):.2f} s (all threads)")
        print(f"peak process RSS     : {max_rss_mb:,.0f} MiB (includes DuckDB/Arrow native memory)")
        print(f"machine load (1 min) : {load:.2f} on {os.cpu_count()} cores (wall times stretch when the box is shared)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
