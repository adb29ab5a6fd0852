"""The client's methods against real servers: the earnopt service over uvicorn (sync and async), and a
small local HTTP server that answers with bodies the service would never send."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.api_schemas import TelemetryRow
from earnopt_assets.client import (
    AsyncMLClient,
    AuthenticationError,
    BadRequestError,
    MLClient,
    ModelUnavailableError,
    PayloadTooLargeError,
    ResponseParseError,
    telemetry_records,
)
from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import running_server, simulated


@pytest.fixture
def service(data_dir: Path, small_catalog_path: Path):
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, api_token="tok", train_job="no_such_job",
                               dagster_home=data_dir / "dagster_home", max_body_bytes=64 * 1024)
    with running_server(create_app(settings)) as url:
        yield url


@pytest.mark.slow
def test_train_and_wait_for_a_failing_launch(service):
    with MLClient(service, token="tok") as client:
        accepted = client.train("honeygain", options={"epochs": 1})
        assert accepted.status == "LAUNCHING" and accepted.launched_via == "instance"
        final = client.wait_for_run(accepted.run_id, timeout=180, poll_seconds=0.5)
    assert final.status == "FAILURE" and final.finished and "no_such_job" in final.detail


@pytest.mark.slow
def test_wait_for_run_times_out(service):
    with MLClient(service, token="tok") as client:
        accepted = client.train("honeygain")
        with pytest.raises(TimeoutError, match="still LAUNCHING"):
            client.wait_for_run(accepted.run_id, timeout=0, poll_seconds=0)


@pytest.mark.slow
def test_async_client_methods(service, small_catalog):
    telemetry = simulated(small_catalog, ["honeygain", "storj"], 9, end="2026-11-25T10:00:00")
    honeygain = telemetry[telemetry["protocol"] == "honeygain"]

    async def scenario():
        async with AsyncMLClient(service, token="tok") as client:
            plan = await client.optimize_allocation({"honeygain": 0.4}, {"honeygain": 0.003, "storj": 0.005, "akash": 0.04})
            models = await client.models()
            alerts = await client.alerts()
            with pytest.raises(ModelUnavailableError):
                await client.detect_anomalies(honeygain.head(5))
            with pytest.raises(ModelUnavailableError):
                await client.evaluate("honeygain", honeygain)
            with pytest.raises(ModelUnavailableError):
                await client.model_metrics("honeygain")
            baseline = await client.get_earnings_predictions("storj", telemetry[telemetry["protocol"] == "storj"], fallback=True)
            accepted = await client.train("storj", options={"epochs": 1})
            final = await client.wait_for_run(accepted.run_id, timeout=180, poll_seconds=0.5)
        async with AsyncMLClient(service, token="wrong") as bad:
            with pytest.raises(AuthenticationError):
                await bad.train("storj")
        return plan, models, alerts, baseline, final

    plan, models, alerts, baseline, final = asyncio.run(scenario())
    assert plan.solver_status == "optimal" and {p.protocol for p in plan.protocols} == {"honeygain", "storj", "akash"}
    assert [m.loaded for m in models.models] == [False, False, False] and alerts.available is False
    assert baseline.source == "seasonal_naive_fallback" and final.status == "FAILURE"


@pytest.mark.slow
def test_payload_too_large_is_typed(service, small_catalog):
    telemetry = simulated(small_catalog, ["honeygain"], 30)
    with MLClient(service) as client, pytest.raises(PayloadTooLargeError) as raised:
        client.get_earnings_predictions("honeygain", telemetry)
    assert raised.value.status_code == 413 and raised.value.attempts == 1


def test_telemetry_records_accepts_frames_models_and_dicts():
    frame = pd.DataFrame({
        "ts": pd.to_datetime(["2026-11-25 10:00", "2026-11-25 11:00"]),
        "earnings_usd": np.array([0.1, 0.2]), "connection_failures": np.array([0, 3], dtype="int64"),
        "latency_ms": [np.nan, 12.5], "protocol": ["honeygain", None],
    })
    records = telemetry_records(frame)
    assert records[0] == {"ts": "2026-11-25T10:00:00", "earnings_usd": 0.1, "connection_failures": 0, "protocol": "honeygain"}
    assert records[1]["latency_ms"] == 12.5 and "protocol" not in records[1]
    assert isinstance(records[1]["connection_failures"], int)
    row = TelemetryRow(ts=datetime(2026, 11, 25, 10, tzinfo=UTC), earnings_usd=0.1, cpu_cores=0.1, memory_gb=0.1,
                       bandwidth_mbps=1, storage_gb=0.1, allocation=0.5, connection_failures=0)
    assert telemetry_records([row])[0]["ts"] == "2026-11-25T10:00:00Z"
    assert telemetry_records([{"ts": datetime(2026, 11, 25, 10), "allocation": 1}])[0] == {"ts": "2026-11-25T10:00:00", "allocation": 1}


def test_client_argument_checks():
    with pytest.raises(ValueError, match="retries"):
        MLClient("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        MLClient("http://127.0.0.1:1", timeout=0)


class _OddServer:
    """A local server answering 200 with a body that is not a forecast, or 400 with plain text."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.startswith("/predict/earnings/"):
                    body, status, kind = json.dumps({"unexpected": True}).encode(), 200, "application/json"
                else:
                    body, status, kind = b"plain failure", 400, "text/plain"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unexpected_bodies_raise_typed_errors():
    odd = _OddServer()
    try:
        with MLClient(odd.url) as client:
            with pytest.raises(ResponseParseError, match="unexpected response body"):
                client.get_earnings_predictions("honeygain", [])
            with pytest.raises(BadRequestError) as raised:
                client.optimize_allocation({}, {})
        assert raised.value.detail == "plain failure" and raised.value.status_code == 400
    finally:
        odd.close()
