"""Helpers of the service and client tests (not a test module): tiny trained models, telemetry payloads,
a warehouse with forecasts/alerts, and a real uvicorn server on a free port."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.catalog import Catalog

SIM_END = "2026-11-20T23:00:00"
TINY_MODEL = {"epochs": 2, "batch_size": 64, "sequence_length": 12, "lstm_units": (8, 4), "patience": 2, "min_validation_hours": 48, "train_threads": 2}


def simulated(catalog: Catalog, protocols: list[str], days: int, *, end: str = SIM_END, seed: int = 5, anomalies: bool = False) -> pd.DataFrame:
    from earnopt_assets.simulator import simulate

    return simulate(catalog, days=days, seed=seed, end=end, protocols=protocols, inject_anomalies=anomalies).telemetry


def train_tiny_model(catalog: Catalog, models_dir: Path, protocol: str = "honeygain", days: int = 24) -> str:
    """A tiny LSTM champion for ``protocol`` and a serving decision naming it (the API's serving path; the
    champion/challenger governance that normally decides this is tested in the forecasting tests)."""
    from earnopt_assets.forecasting.intervals import ConformalIntervals
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor
    from earnopt_assets.forecasting.registry import ServingDecision, write_serving_decision
    from earnopt_assets.ingestion.features import build_feature_table

    telemetry = simulated(catalog, [protocol], days, seed=3)
    features, _ = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    model = EarningsPredictor(protocol, timezone=catalog.host.timezone, **TINY_MODEL)
    model.fit(features)
    check = {"passed": True, "model_mape": 9.0, "baseline": "mstl", "baseline_mape": 10.0, "threshold": 15.0, "reasons": []}
    scores = {name: {"mape_pct": mape, "mase": mape / 10, "mae_usd": 0.0001, "rmse_usd": 0.0002, "n_origins": 7}
              for name, mape in (("lstm", 9.0), ("mstl", 10.0), ("ets", 11.0), ("seasonal_naive_24", 12.0), ("seasonal_naive_168", 13.0))}
    version = model.save(models_dir, {"mape_check": check, "scores": scores}, promote=True).name
    # interval quantiles as a training run calibrates them: relative residuals of about +-10 %
    residuals = np.random.default_rng(0).normal(0.0, 0.1, (28, 24))
    intervals = ConformalIntervals.fit(residuals, np.ones_like(residuals)).to_json()
    write_serving_decision(
        models_dir,
        ServingDecision(protocol, "lstm", "lstm holdout MAPE 9.00% < 15% target, best of 5 candidates; next mstl 10.00%", False, 9.0, 15.0,
                        version, version, intervals=intervals),
    )
    return str(version)


def train_tiny_detector(catalog: Catalog, models_dir: Path) -> str:
    from earnopt_assets.anomaly.detector import AnomalyDetector, detection_features

    telemetry = simulated(catalog, ["honeygain", "storj"], 14, seed=11, anomalies=True)
    features = detection_features(telemetry, {s.name: s for s in catalog.protocols})
    detector = AnomalyDetector(contamination=0.05, n_estimators=25, max_samples=128).fit(features)
    detector.save(models_dir / "anomaly")
    return str(detector.version)


def rows_payload(telemetry: pd.DataFrame, *, keep_protocol: bool = False) -> list[dict[str, Any]]:
    """Telemetry frame → JSON rows as a collector would post them."""
    frame = telemetry.copy()
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    drop = ["device"] if keep_protocol else ["device", "protocol"]
    return json.loads(frame.drop(columns=drop).to_json(orient="records"))


def copy_models(source: Path, data_dir: Path) -> Path:
    target = data_dir / "models"
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def seed_warehouse(db_path: Path, catalog: Catalog, telemetry: pd.DataFrame, *, forecast_time: datetime, alerts: int = 2) -> None:
    """A warehouse as the pipeline leaves it: raw_earnings, a forecast per protocol and some alerts."""
    import duckdb

    from earnopt_assets.anomaly.store import ensure_alert_tables
    from earnopt_assets.forecasting.store import ensure_forecasts_table, write_forecasts
    from earnopt_assets.ingestion.store import ensure_raw_earnings

    conn = duckdb.connect(str(db_path))
    try:
        ensure_raw_earnings(conn)
        raw = telemetry.copy()
        raw["source_file"] = "test"
        raw["ingested_at"] = pd.Timestamp(forecast_time)
        conn.register("raw_frame", raw)
        conn.execute("INSERT INTO raw_earnings SELECT device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms, source_file, ingested_at FROM raw_frame")
        conn.unregister("raw_frame")
        ensure_forecasts_table(conn)
        origin = pd.Timestamp(telemetry["ts"].max())
        rows = []
        for index, protocol in enumerate(sorted(telemetry["protocol"].unique())):
            for h in range(1, 25):
                rows.append({
                    "forecast_time": pd.Timestamp(forecast_time), "device": catalog.host.device, "protocol": protocol,
                    "origin_ts": origin, "target_ts": origin + pd.Timedelta(hours=h), "horizon_hours": h,
                    "value": 0.001 * (index + 1) + 0.0001 * h, "model_version": "v-test", "source": "lstm", "reason": None,
                })
        write_forecasts(conn, pd.DataFrame(rows))
        ensure_alert_tables(conn)
        for i in range(alerts + 1):
            status = "resolved" if i == alerts else ("open" if i % 2 == 0 else "acknowledged")
            conn.execute(
                """INSERT INTO alerts (id, dedupe_key, device, protocol, rule, severity, hour, message, evidence, status,
                   notify_status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [f"a{i}", f"k{i}", catalog.host.device, "honeygain", "earnings_drop", "warning", origin, f"alert {i}",
                 json.dumps({"drop": 0.4 + i}), status, "sent", pd.Timestamp(forecast_time) + pd.Timedelta(minutes=i),
                 pd.Timestamp(forecast_time)],
            )
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free loopback port, in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
