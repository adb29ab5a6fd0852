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

    .venv/bin/python benchmarks/ingest.py --prometheus   # the Prometheus source against a real local server
With ``--prometheus``: the simulator's telemetry (``--days`` x 20 protocols: the catalog's 12 plus 8
renamed copies) is rendered as CashPilot OpenMetrics, backfilled with promtool into a Debian
``prometheus`` on a free loopback port, then :func:`ingest_prometheus` (cursor, query_range pages, the
landing path, cursor write) is timed: the first backfill of 12 protocols (rows/s), hourly increments
of 12 and of 20 protocols (median of ``--increments``). Target: hourly increment for 20 protocols <= 2 s.
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


def _prometheus_catalog(base, names: list[str], url: str, days: int):
    from earnopt_assets.catalog import parse_catalog

    raw = base.model_dump(exclude={"source"})
    raw["sources"] = {"prometheus": {"url": url, "preset": "cashpilot", "cashpilot": {n: n for n in names}, "backfill_days": days}}
    return parse_catalog(raw)


def prometheus_benchmark(days: int, increments: int, seed: int) -> None:
    import pandas as pd

    from earnopt_assets.catalog import parse_catalog
    from earnopt_assets.ingestion.cashpilot_sim import LocalPrometheus, binaries_available, render_openmetrics
    from earnopt_assets.ingestion.prometheus import ingest_prometheus

    if not binaries_available():
        raise SystemExit("prometheus/promtool not found: run scripts/install_system_deps.sh")
    base = load_catalog()
    raw = base.model_dump(exclude={"source"})
    copies = [{**p, "name": f"{p['name']}-b"} for p in raw["protocols"][:8]]
    wide = parse_catalog({**raw, "protocols": raw["protocols"] + copies})
    names = wide.enabled_names
    last_boundary = pd.Timestamp.now("UTC").tz_localize(None).floor("h") - pd.Timedelta(hours=1)
    t = time.perf_counter()
    telemetry = simulate(wide, days=days, seed=seed, end=last_boundary - pd.Timedelta(hours=1)).telemetry
    text = render_openmetrics(telemetry, {n: n for n in names})
    print(f"rendered {len(telemetry):,} hours x 3 CashPilot gauges ({len(text) / 1e6:.1f} MB OpenMetrics) in {time.perf_counter() - t:.2f} s")
    root = Path(tempfile.mkdtemp(prefix="earnopt-bench-prom-"))
    try:
        with LocalPrometheus(text, workdir=root / "prom") as server:
            print(f"promtool create-blocks-from openmetrics: {server.backfill_seconds:.2f} s; prometheus on {server.url}")
            # The first run pulls up to ``increments`` hours before the newest boundary; each increment then
            # pulls one new hour (``now`` = 2 min past the boundary, as the :05 schedule would).
            results = {}
            for count in (12, 20):
                catalog = _prometheus_catalog(wide, names[:count], server.url, days)
                paths = EarnoptPaths(root / f"p{count}").ensure()
                first_now = (last_boundary - pd.Timedelta(hours=increments) + pd.Timedelta(minutes=2)).to_pydatetime()
                with duckdb.connect(str(paths.warehouse)) as conn:
                    t0 = time.perf_counter()
                    run = ingest_prometheus(conn, paths, catalog, now=first_now)
                    backfill_s = time.perf_counter() - t0
                    steps = []
                    for k in range(increments - 1, -1, -1):
                        now = (last_boundary - pd.Timedelta(hours=k) + pd.Timedelta(minutes=2)).to_pydatetime()
                        t1 = time.perf_counter()
                        step = ingest_prometheus(conn, paths, catalog, now=now)
                        steps.append((time.perf_counter() - t1, step))
                    pull_s = [step.pull.seconds for _, step in steps]
                pulled = sum(p.rows for p in run.pull.protocols)
                results[count] = (backfill_s, pulled, run, steps)
                print(f"{count} protocols: of each increment, the HTTP pull took {', '.join(f'{p:.3f}' for p in pull_s)} s")
                print(f"{count} protocols: first backfill {backfill_s:.2f} s for {pulled:,} polls "
                      f"({run.report.rows_inserted:,} hours stored, {run.pull.requests} requests) = {pulled / backfill_s:,.0f} rows/s")
                print(f"{count} protocols: hourly increments {', '.join(f'{s:.3f}' for s, _ in steps)} s "
                      f"(each: {steps[-1][1].report.rows_inserted} new hours, {steps[-1][1].pull.requests} requests)")
        inc12 = statistics.median(s for s, _ in results[12][3])
        inc20 = statistics.median(s for s, _ in results[20][3])
        print(f"days x protocols     : {days} x 12 (backfill), increments over 12 and 20")
        print(f"first backfill (12)  : {results[12][0]:.2f} s wall = {results[12][1] / results[12][0]:,.0f} rows/s")
        print(f"hourly increment (12): {inc12:.3f} s (median of {increments})")
        print(f"hourly increment (20): {inc20:.3f} s (median of {increments}; target <= 2 s end to end: {'OK' if inc20 <= 2 else 'MISSED'})")
        print(f"machine load (1 min) : {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (wall times stretch when the box is shared)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prometheus", action="store_true", help="benchmark the Prometheus source against a real local server")
    parser.add_argument("--increments", type=int, default=3, help="hourly increments timed with --prometheus")
    args = parser.parse_args()
    if args.prometheus:
        prometheus_benchmark(args.days, args.increments, args.seed)
        return

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
