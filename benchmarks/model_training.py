"""Earnings model cost figures: training seconds (90 / 365 days of history, window cap vs warm start),
24 h forecast latency (NumPy, with intervals), NumPy-vs-Keras max abs difference, and the holdout MAPE of
each training variant next to the seasonal-naive candidates on the same rolling origins (allocation held).

    .venv/bin/python benchmarks/model_training.py [--protocols storj,honeygain] [--days 90,365] [--variants cap,full,warm]

Variants at each history length: ``cap`` (default config: the network trains on the last
``max_train_hours``), ``full`` (no cap: every training origin) and ``warm`` (capped, initialised from the
``cap`` model trained on the history one week shorter, as a weekly retrain from the champion would be).
Prints medians over protocols. Training runs at the config's thread cap (default 1 TensorFlow thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from earnopt_assets.catalog import load_catalog
from earnopt_assets.forecasting.model.predictor import EarningsPredictor, series_from_frame
from earnopt_assets.simulator import simulate

CATALOG = Path(__file__).resolve().parents[1] / "data" / "catalog.yaml"
HOLDOUT_FRACTION = 0.2


def holdout_mape(model: EarningsPredictor, frame) -> tuple[float, float, float]:
    """(model, seasonal naive 24, seasonal naive 168) MAPE % over 24 h-step origins of the last 20 %."""
    from earnopt_assets.forecasting.candidates import OriginContext

    series = series_from_frame(frame, model.protocol)
    n = len(series.ts)
    start = int(n * (1 - HOLDOUT_FRACTION))
    origins = list(range(start - 1, n - 24, 24))
    contexts = [OriginContext(series.ts[: o + 1], series.earnings[: o + 1], series.allocation[: o + 1]) for o in origins]
    predicted = model.batch_forecaster()(contexts)
    actual = np.stack([series.earnings[o + 1 : o + 25] for o in origins])
    naive24 = np.stack([series.earnings[o + 1 - 24 : o + 25 - 24] for o in origins])
    naive168 = np.stack([series.earnings[o + 1 - 168 : o + 25 - 168] for o in origins])

    def mape(p):
        ok = np.isfinite(actual) & (actual != 0) & np.isfinite(p)
        return float(np.mean(np.abs(actual[ok] - p[ok]) / np.abs(actual[ok])) * 100)

    return mape(predicted), mape(naive24), mape(naive168)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="storj,honeygain,akash")
    parser.add_argument("--days", default="90,365")
    parser.add_argument("--variants", default="cap,full,warm")
    args = parser.parse_args()
    catalog = load_catalog(CATALOG)
    from earnopt_assets.forecasting.model.config import ModelConfig
    from earnopt_assets.forecasting.model.network import configure_tensorflow

    configure_tensorflow(ModelConfig(protocol="storj").train_threads)  # import TensorFlow before timing any fit
    variants = args.variants.split(",")
    rows: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    latencies, differences = [], []
    for protocol in args.protocols.split(","):
        for days in (int(d) for d in args.days.split(",")):
            telemetry = simulate(catalog, days=days, seed=7, end="2026-06-30T23:00", protocols=[protocol]).telemetry
            frame = telemetry[["ts", "earnings_usd", "allocation"]].reset_index(drop=True)
            train = frame.iloc[: int(len(frame) * (1 - HOLDOUT_FRACTION))]
            champion = None
            for variant in variants:
                settings = {"timezone": catalog.host.timezone}
                if variant == "full":
                    settings["max_train_hours"] = len(train)
                model = EarningsPredictor(protocol, **settings)
                if variant == "warm":
                    if champion is None:
                        champion = EarningsPredictor(protocol, **settings)
                        champion.fit(train.iloc[:-168])
                    started = time.perf_counter()
                    model.fit(train, warm_start=champion)
                else:
                    started = time.perf_counter()
                    model.fit(train)
                seconds = time.perf_counter() - started
                if variant == "cap" and champion is None:
                    champion = model
                scores = holdout_mape(model, frame)
                rows.setdefault((days, variant), []).append((seconds, *scores))
                print(f"{protocol:10s} {days:4d} d {variant:5s}: fit {seconds:6.1f} s (network {model.training.network_seconds:5.1f} s, "
                      f"epochs {model.training.epochs_run}, blend {model.blend:.2f}) holdout MAPE {scores[0]:.2f} % "
                      f"(naive24 {scores[1]:.2f} %, naive168 {scores[2]:.2f} %)", flush=True)
                if variant == "cap":
                    x = np.random.default_rng(0).normal(size=(16, model.sequence_length, len(model.state.channel_mean))).astype(np.float32)
                    keras_out = np.asarray(model.keras_models[0](x, training=False), dtype=float)
                    differences.append(float(np.max(np.abs(model.network.members[0](x) - keras_out))))
                    recent = frame.iloc[-model.tail_hours :]
                    model.predict_next_24h(recent)
                    timings = []
                    for _ in range(50):
                        t0 = time.perf_counter()
                        model.predict_next_24h(recent)
                        timings.append((time.perf_counter() - t0) * 1000)
                    latencies.append(statistics.median(timings))
    print("\nmedian over protocols:")
    for (days, variant), values in sorted(rows.items()):
        seconds, model_mape, n24, n168 = (statistics.median(v) for v in zip(*values))
        print(f"  {days:4d} days {variant:5s}: training {seconds:6.1f} s, holdout MAPE {model_mape:.2f} % (naive24 {n24:.2f} %, naive168 {n168:.2f} %)")
    if latencies:
        print(f"  24 h forecast from a telemetry frame (NumPy): median {statistics.median(latencies):.2f} ms")
    if differences:
        print(f"  max |NumPy - Keras| on random windows: {max(differences):.2e}")


if __name__ == "__main__":
    main()
