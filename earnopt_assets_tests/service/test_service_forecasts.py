"""GET /forecasts/{protocol}: the newest stored forecast with its intervals, straight from the table."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from earnopt_assets.forecasting.store import write_forecasts
from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import seed_warehouse, simulated

FIRST = datetime(2026, 11, 20, 23, 30)
NEWER = datetime(2026, 11, 21, 0, 30)


def test_the_newest_forecast_is_served_with_its_intervals(data_dir, small_catalog_path, small_catalog) -> None:
    telemetry = simulated(small_catalog, ["honeygain", "storj"], 3)
    db = data_dir / "earnopt.duckdb"
    seed_warehouse(db, small_catalog, telemetry, forecast_time=FIRST)
    origin = pd.Timestamp(telemetry["ts"].max()) + pd.Timedelta(hours=1)
    newer = pd.DataFrame([{
        "forecast_time": pd.Timestamp(NEWER), "device": small_catalog.host.device, "protocol": "honeygain", "origin_ts": origin,
        "target_ts": origin + pd.Timedelta(hours=h), "horizon_hours": h, "value": 0.002, "lower_80": 0.0015, "upper_80": 0.0025,
        "lower_95": 0.001, "upper_95": 0.003, "model_version": None, "source": "mstl", "reason": "mstl best of 5", "below_target": True,
    } for h in range(1, 25)])
    with duckdb.connect(str(db)) as conn:
        write_forecasts(conn, newer)
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, model_reload_seconds=0)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/forecasts/honeygain")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["forecast_time"].startswith("2026-11-21T00:30") and body["source"] == "mstl" and body["below_target"]
        assert len(body["predictions"]) == 24 and body["predictions"][0]["lower_80"] == 0.0015 and body["predictions"][0]["upper_95"] == 0.003
        assert abs(body["total_usd"] - 0.048) < 1e-9 and body["model_version"] is None
        older = client.get("/forecasts/storj").json()  # only the seeded forecast, without intervals
        assert older["source"] == "lstm" and older["model_version"] == "v-test" and older["predictions"][0]["lower_80"] is None
        # a newer forecast written while the service runs is served at the next poll (no stale answer)
        with duckdb.connect(str(db)) as conn:
            write_forecasts(conn, newer.assign(forecast_time=pd.Timestamp(NEWER) + pd.Timedelta(hours=1), value=0.003))
        assert client.get("/forecasts/honeygain").json()["total_usd"] == pytest.approx(0.072)
        for path, status in (("/forecasts/akash", 404), ("/forecasts/nope", 404)):
            problem = client.get(path)
            assert problem.status_code == status and problem.headers["content-type"] == "application/problem+json"
