"""Forecast quality and speed benchmark: every candidate through ONE rolling-origin harness (prints; asserts nothing).

Series:
* simulated (default): the default catalog simulated for ``--days`` (default 90) days, through the shared
  feature builder;
* ``--real``: the real hourly series of the shared folder ``../shared/data/real-hourly`` (bike rentals,
  road occupancy; skipped with a note when the folder is absent) and the NOAA temperatures shipped in
  ``vega_datasets`` (Seattle, San Francisco), each through the NORMAL landing path (landing CSV ->
  ingest_landing -> raw_earnings -> features; value as earnings_usd, constant resources, allocation 1.0),
  the most recent ``--days`` (default 120) days of each.

Per series (hourly grid ``n`` hours): holdout = the last max(20 %, 7 days); calibration = the ``--calibration-days``
(default 28) before it. Rolling origins every 24 h, 24-step forecasts (:mod:`earnopt_assets.forecasting.harness`).

* HEADLINE: unconditional (allocation held at the origin) for every candidate: seasonal naive 24 / 168,
  the allocation-scaled ones (when the model fitted an allocation beta), MSTL(24,168), AutoETS(24) and the
  LSTM model (trained on the hours before the holdout, its validation = the calibration window; scored via
  its batch forecaster).
* Intervals: split-conformal per horizon (:class:`~earnopt_assets.forecasting.intervals.ConformalIntervals`)
  calibrated on the calibration origins, coverage reported on the holdout (out-of-sample).
* DIAGNOSTIC (labelled): the LSTM's MAPE conditional on the holdout's actual allocation path.
* ratio = LSTM MAPE / MAPE of the best statistical candidate (same origins, same information).
* training seconds (wall, fit); forecast latency = median ms of one 24 h forecast WITH its intervals
  (model in memory, NumPy inference, ``--calls`` calls).

Targets (issue 11): ratio <= 0.9 on the real series and the simulator; median training <= 30 s per
protocol also with 365 days; 24 h forecast with intervals <= 20 ms.

    nice .venv/bin/python benchmarks/forecast.py                 # simulated catalog, 90 days
    nice .venv/bin/python benchmarks/forecast.py --real          # shared + NOAA real series, 120 days
    nice .venv/bin/python benchmarks/forecast.py --days 365      # training time at 365 days of history
    nice .venv/bin/python benchmarks/forecast.py --days 365 --candidates seasonal_naive_24,seasonal_naive_168  # the same, fast
    nice .venv/bin/python benchmarks/forecast.py --quick         # smoke run: 2 protocols, 60 days, 3 epochs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates
from earnopt_assets.forecasting.harness import fit_intervals, score_candidates
from earnopt_assets.settings import default_catalog_path

STATISTICAL = ("seasonal_naive_24", "seasonal_naive_168", "seasonal_naive_24_alloc", "seasonal_naive_168_alloc", "mstl", "ets")
LSTM = "lstm"


@dataclass
class SeriesRow:
    series: str
    kind: str
    hours: int
    holdout_origins: int
    calibration_origins: int
    table: pd.DataFrame
    best_statistical: str
    lstm_status: str
    train_s: float | None = None
    latency_ms: float | None = None
    conditional_mape: float | None = None
    beta: float | None = None
    extra: dict = field(default_factory=dict)

    def metric(self, name: str, column: str):
        rows = self.table.loc[self.table["candidate"] == name, column]
        if rows.empty or pd.isna(rows.iloc[0]):
            return None
        return float(rows.iloc[0])

    @property
    def ratio(self) -> float | None:
        lstm, best = self.metric(LSTM, "mape_%"), self.metric(self.best_statistical, "mape_%")
        return None if lstm is None or not best else lstm / best

    @property
    def mase_ratio(self) -> float | None:
        lstm, best = self.metric(LSTM, "mase"), self.metric(self.best_statistical, "mase")
        return None if lstm is None or not best else lstm / best


def fmt(value, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else pattern.format(value)


# ----------------------------------------------------------------------------- data


def simulated_frames(protocols: list[str] | None, days: int, seed: int):
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.ingestion.features import build_feature_table
    from earnopt_assets.simulator import simulate

    catalog = load_catalog(default_catalog_path())
    names = protocols or catalog.enabled_names
    sim = simulate(catalog, days=days, seed=seed, end="2026-06-30T23:00", protocols=names)
    features, _ = build_feature_table(sim.telemetry, catalog.host.totals(), catalog.host.timezone)
    return catalog, [(name, "simulated", features.loc[features["protocol"] == name].reset_index(drop=True)) for name in names]


def real_frames(days: int, workdir: Path, names: list[str] | None):
    from earnopt_assets.forecasting.real_data import (
        REAL_SERIES,
        SHARED_REAL_HOURLY,
        land_and_build_features,
        shared_series_paths,
    )

    shared = list(shared_series_paths())
    if not shared:
        print(f"note: {SHARED_REAL_HOURLY} is absent: the shared real series are skipped (NOAA series only)")
    wanted = [*shared, *REAL_SERIES]
    if names:
        wanted = [n for n in wanted if n in names]
    catalog, _, features, report, stats = land_and_build_features(wanted, workdir, default_catalog_path(), days=days)
    print(f"landed {len(wanted)} real series: {report.rows_inserted} rows stored, {sum(f.rows_quarantined for f in report.files)} quarantined; features: {stats}")
    kinds = {n: ("real (shared)" if n in shared else "real (NOAA)") for n in wanted}
    return catalog, [(n, kinds[n], features.loc[features["protocol"] == n].reset_index(drop=True)) for n in wanted]


# ----------------------------------------------------------------------------- LSTM hook


def lstm_model_class():
    """MODEL's EarningsModel, imported lazily (None when its API is not importable yet)."""
    try:
        from earnopt_assets.forecasting.model.predictor import EarningsModel
    except ImportError as exc:  # HOOK: MODEL's package not ready -> statistical part only
        print(f"note: LSTM model API not importable ({exc}); statistical candidates only")
        return None
    return EarningsModel


def train_lstm(model_class, name: str, train_frame: pd.DataFrame, calibration_hours: int, catalog, epochs: int | None):
    settings = {"timezone": catalog.host.timezone, "host_totals": catalog.host.totals()}
    if epochs is not None:
        settings["epochs"] = epochs
    model = model_class(name, **settings)
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(train_frame, validation_hours=calibration_hours)
    return model, time.perf_counter() - started, time.process_time() - cpu_started


def latency_ms(forecaster, interval, ctx: OriginContext, calls: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one 24 h forecast with its intervals."""
    interval.apply(forecaster(ctx))  # warm
    wall, cpu = [], []
    for _ in range(calls):
        started, cpu_started = time.perf_counter(), time.process_time()
        interval.apply(forecaster(ctx))
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return 1000.0 * statistics.median(wall), 1000.0 * statistics.median(cpu)


# ----------------------------------------------------------------------------- one series


def benchmark_series(name: str, kind: str, frame: pd.DataFrame, catalog, model_class, args) -> SeriesRow:
    full = OriginContext.from_frame(frame)
    ts, y, alloc = full.ts, full.earnings, full.allocation
    n = len(y)
    holdout_hours = max(7 * 24, round(0.2 * n))
    holdout_start = n - holdout_hours
    calibration_hours = args.calibration_days * 24
    calibration_start = holdout_start - calibration_hours
    if calibration_start < 2 * 168 + 24:
        raise SystemExit(f"{name}: {n} hours are too few for a {calibration_hours} h calibration window and a {holdout_hours} h holdout")
    holdout_ts = pd.Timestamp(ts[holdout_start])

    model, train_s, status, beta = None, None, "not available", None
    row_extra: dict = {}
    if model_class is not None:
        try:
            model, train_s, row_extra["train_cpu_s"] = train_lstm(model_class, name, frame[frame["ts"] < holdout_ts], calibration_hours, catalog, args.epochs)
            beta = model.allocation_beta
            status = "trained"
        except Exception as exc:  # report, keep benchmarking the statistical candidates
            status = f"failed: {type(exc).__name__}: {exc}"
    if beta is None and kind == "simulated":
        from earnopt_assets.numerics.response import fit_response_curve

        ok = np.isfinite(y[:holdout_start]) & np.isfinite(alloc[:holdout_start])
        beta = float(fit_response_curve(alloc[:holdout_start][ok], y[:holdout_start][ok]).beta)
    if kind != "simulated":
        beta = None  # allocation is constant 1.0: the scaled candidates equal the plain ones

    candidates = statistical_candidates(allocation_beta=beta)
    if args.candidates:
        keep = set(args.candidates.split(","))
        candidates = {k: v for k, v in candidates.items() if k in keep or k.removesuffix("_alloc") in keep}
    batch = {LSTM: model.batch_forecaster()} if model is not None else {}
    calibration = score_candidates(ts, y, alloc, calibration_start, candidates, batch_forecasters=batch, holdout_end=holdout_start)
    intervals = fit_intervals(calibration, mode=args.interval_mode)
    result = score_candidates(ts, y, alloc, holdout_start, candidates, batch_forecasters=batch, intervals=intervals)
    best_stat = result.best([c for c in STATISTICAL if c in result.scores])

    row = SeriesRow(name, kind, n, len(result.origins), len(calibration.origins), result.table(), best_stat, status, train_s, beta=beta, extra=row_extra)
    if model is not None:
        conditional_names = {k: v for k, v in candidates.items() if k.endswith("_alloc")}
        diagnostic = score_candidates(ts, y, alloc, holdout_start, conditional_names, conditional=True, batch_forecasters=batch)
        row.conditional_mape = diagnostic.scores[LSTM].mape_pct
        ctx = OriginContext(ts=ts, earnings=y, allocation=alloc)
        row.latency_ms, row.extra["latency_cpu_ms"] = latency_ms(model.forecaster(), intervals[LSTM], ctx, args.calls)
    return row


def print_series(row: SeriesRow) -> None:
    print(f"\n== {row.series} ({row.kind}, {row.hours} h; holdout {row.holdout_origins} origins, calibration {row.calibration_origins} origins; LSTM {row.lstm_status}) ==")
    print("| candidate | MAPE % | MASE | MAE | coverage 80 % | coverage 95 % | origins | ms per origin |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in row.table.iterrows():
        print(
            f"| {r['candidate']} | {fmt(r['mape_%'])} | {fmt(r['mase'], '{:.3f}')} | {fmt(r['mae_usd'], '{:.4g}')} | {fmt(r['coverage_80_%'], '{:.1f}')} "
            f"| {fmt(r['coverage_95_%'], '{:.1f}')} | {r['origins']} | {fmt(r['ms_per_origin'], '{:.1f}')} |"
        )
    print(
        f"best statistical: {row.best_statistical}; LSTM/best MAPE ratio {fmt(row.ratio, '{:.3f}')}, MASE ratio {fmt(row.mase_ratio, '{:.3f}')}; "
        f"train {fmt(row.train_s, '{:.1f}')} s wall / {fmt(row.extra.get('train_cpu_s'), '{:.1f}')} s CPU; 24 h forecast + intervals {fmt(row.latency_ms, '{:.2f}')} ms wall / {fmt(row.extra.get('latency_cpu_ms'), '{:.2f}')} ms CPU; "
        f"allocation beta {fmt(row.beta, '{:.3f}')}; DIAGNOSTIC allocation-conditional LSTM MAPE {fmt(row.conditional_mape)} %",
        flush=True,
    )


def print_summary(rows: list[SeriesRow], warmup_s: float) -> None:
    print("\nHEADLINE (unconditional: allocation held at the origin), one row per series:")
    print("| series | kind | LSTM MAPE % | best statistical | its MAPE % | ratio (target <= 0.9) | LSTM MASE | best stat. MASE | LSTM coverage 80 / 95 % | best stat. coverage 80 / 95 % | train s (wall / CPU) | forecast + intervals ms | conditional LSTM MAPE % (diagnostic) |")
    print("|" + "---|" * 13)
    for r in rows:
        b = r.best_statistical
        print(
            f"| {r.series} | {r.kind} | {fmt(r.metric(LSTM, 'mape_%'))} | {b} | {fmt(r.metric(b, 'mape_%'))} | {fmt(r.ratio, '{:.3f}')} "
            f"| {fmt(r.metric(LSTM, 'mase'), '{:.3f}')} | {fmt(r.metric(b, 'mase'), '{:.3f}')} "
            f"| {fmt(r.metric(LSTM, 'coverage_80_%'), '{:.1f}')} / {fmt(r.metric(LSTM, 'coverage_95_%'), '{:.1f}')} "
            f"| {fmt(r.metric(b, 'coverage_80_%'), '{:.1f}')} / {fmt(r.metric(b, 'coverage_95_%'), '{:.1f}')} "
            f"| {fmt(r.train_s, '{:.1f}')} / {fmt(r.extra.get('train_cpu_s'), '{:.1f}')} | {fmt(r.latency_ms, '{:.2f}')} | {fmt(r.conditional_mape)} |"
        )
    ratios = [r.ratio for r in rows if r.ratio is not None]
    trains = [r.train_s for r in rows if r.train_s is not None]
    train_cpu = [r.extra["train_cpu_s"] for r in rows if r.extra.get("train_cpu_s") is not None]
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    latency_cpu = [r.extra["latency_cpu_ms"] for r in rows if r.extra.get("latency_cpu_ms") is not None]
    def coverage(r: SeriesRow, column: str):
        value = r.metric(LSTM, column)
        return value if value is not None else r.metric(r.best_statistical, column)

    cov80 = [c for c in (coverage(r, "coverage_80_%") for r in rows) if c is not None]
    cov95 = [c for c in (coverage(r, "coverage_95_%") for r in rows) if c is not None]
    stat_ms = [r.metric(c, "ms_per_origin") for r in rows for c in ("mstl", "ets")]
    stat_ms = [m for m in stat_ms if m is not None]
    print()
    if ratios:
        print(f"LSTM / best statistical MAPE ratio: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}; <= 0.9 on {sum(x <= 0.9 for x in ratios)}/{len(ratios)} series")
    else:
        print("LSTM / best statistical MAPE ratio: n/a (no LSTM scored)")
    if trains:
        print(
            f"LSTM training seconds: median {statistics.median(trains):.1f} wall (target <= 30), max {max(trains):.1f}; "
            f"CPU median {statistics.median(train_cpu):.1f} s (wall stretches when other processes compete for the 2 cores)"
        )
    if latencies:
        print(
            f"24 h forecast with intervals: median {statistics.median(latencies):.2f} ms wall (target <= 20), max {max(latencies):.2f} ms; "
            f"CPU median {statistics.median(latency_cpu):.2f} ms"
        )
    if cov80:
        print(f"holdout interval coverage (LSTM, else best statistical): 80 % -> median {statistics.median(cov80):.1f} %, 95 % -> median {statistics.median(cov95):.1f} % (target within 5 points)")
    if stat_ms:
        print(f"MSTL/ETS cost per origin: median {statistics.median(stat_ms):.0f} ms; statsforecast import + first fit (warm-up) {warmup_s:.2f} s")


def statsforecast_warmup() -> float:
    started = time.perf_counter()
    t = np.arange(24 * 21)
    y = 5 + np.sin(2 * np.pi * t / 24)
    ctx = OriginContext(ts=pd.date_range("2026-01-01", periods=len(t), freq="h").to_numpy(), earnings=y, allocation=np.ones(len(t)))
    c = statistical_candidates()
    c["mstl"](ctx), c["ets"](ctx)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default=None, help="comma-separated subset of protocols / real series")
    parser.add_argument("--days", type=int, default=None, help="days of history per series (default 90 simulated, 120 real)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default: the model config's)")
    parser.add_argument("--calls", type=int, default=100, help="forecast calls for the latency median")
    parser.add_argument("--calibration-days", type=int, default=28)
    parser.add_argument("--interval-mode", default="relative", choices=("relative", "additive"))
    parser.add_argument("--real", action="store_true", help="real hourly series through the landing path")
    parser.add_argument("--no-lstm", action="store_true", help="statistical candidates only")
    parser.add_argument(
        "--candidates", default=None, help="comma-separated statistical candidates to score (default all; e.g. seasonal_naive_24,seasonal_naive_168 for a fast --days 365 training-time run)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 protocols (or real series), 60 days, 3 epochs, 14 calibration days")
    args = parser.parse_args(argv)
    names = args.protocols.split(",") if args.protocols else None
    if args.quick:
        args.days = args.days or 60
        args.epochs = args.epochs or 3
        args.calibration_days = min(args.calibration_days, 14)
        args.calls = min(args.calls, 20)
    days = args.days or (120 if args.real else 90)

    warmup = statsforecast_warmup()
    model_class = None if args.no_lstm else lstm_model_class()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="earnopt-bench-") as scratch:
        if args.real:
            catalog, frames = real_frames(days, Path(scratch), names)
        else:
            catalog, frames = simulated_frames(names, days, args.seed)
        if args.quick and names is None:
            frames = frames[:2]
        print(f"{len(frames)} series, {days} days each, calibration {args.calibration_days} days, interval mode {args.interval_mode}; statsforecast warm-up {warmup:.2f} s")
        rows = []
        for name, kind, frame in frames:
            row = benchmark_series(name, kind, frame, catalog, model_class, args)
            print_series(row)
            rows.append(row)
    print_summary(rows, warmup)
    print(f"total {time.perf_counter() - started:.0f} s; load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
