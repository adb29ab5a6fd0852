"""The client against a real uvicorn server, behind a local proxy that fails the first requests.

The proxy is the only stand-in: it is a real HTTP server on loopback that answers 503 (or drops the
connection) for its first ``failures`` requests and then forwards to the real service.
"""

from __future__ import annotations

import asyncio
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from earnopt_assets.api_schemas import AllocationResponse, HealthResponse, PredictionResponse
from earnopt_assets.client import (
    APIConnectionError,
    AsyncMLClient,
    AuthenticationError,
    MLClient,
    ModelUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    UnprocessableError,
)
from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import copy_models, free_port, running_server, simulated, train_tiny_model


class FlakyProxy:
    """Fails the first ``failures`` requests (503 problem, or a dropped connection), then proxies."""

    def __init__(self, upstream: str, failures: int = 2, mode: str = "503") -> None:
        self.upstream = upstream
        self.failures = failures
        self.mode = mode
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    failing = len(proxy.requests) <= proxy.failures
                if failing and proxy.mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if failing:
                    payload = b'{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"warming up"}'
                    self.send_response(503)
                    self.send_header("content-type", "application/problem+json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                upstream = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=30)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    from earnopt_assets.catalog import load_catalog

    root = tmp_path_factory.mktemp("client_models")
    repo_catalog = Path(__file__).resolve().parents[2] / "data" / "catalog.yaml"
    raw = yaml.safe_load(repo_catalog.read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in {"honeygain", "storj", "akash"}]
    (root / "catalog.yaml").write_text(yaml.safe_dump(raw))
    train_tiny_model(load_catalog(root / "catalog.yaml"), root / "models", "honeygain")
    return root / "models"


@pytest.fixture
def server(data_dir: Path, small_catalog_path: Path, tiny_models: Path):
    copy_models(tiny_models, data_dir)
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, api_token="tok")
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def telemetry(small_catalog):
    return simulated(small_catalog, ["honeygain", "storj"], 9, end="2026-11-25T10:00:00")


def _fast(client_cls, url: str, **kwargs):
    # Real backoff maths, tiny base so the test does not wait; seeded jitter.
    return client_cls(url, backoff_base=0.01, backoff_max=0.05, rng=random.Random(1), **kwargs)


@pytest.mark.slow
def test_client_retries_503_twice_then_succeeds(server, telemetry):
    honeygain = telemetry[telemetry["protocol"] == "honeygain"].drop(columns=["device", "protocol"])
    with FlakyProxy(server, failures=2) as proxy, _fast(MLClient, proxy.url, retries=3) as client:
        forecast = client.get_earnings_predictions("honeygain", honeygain)
    assert isinstance(forecast, PredictionResponse) and forecast.source == "lstm" and len(forecast.predictions) == 24
    assert len(proxy.requests) == 3 and client.last_attempts == 3
    assert {path for _, path in proxy.requests} == {"/predict/earnings/honeygain"}


@pytest.mark.slow
def test_client_retries_dropped_connections(server):
    with FlakyProxy(server, failures=2, mode="drop") as proxy, _fast(MLClient, proxy.url, retries=2) as client:
        health = client.health()
    assert isinstance(health, HealthResponse) and health.status == "down" and len(proxy.requests) == 3


@pytest.mark.slow
def test_client_gives_up_after_the_retries(server, telemetry):
    with FlakyProxy(server, failures=10) as proxy, _fast(MLClient, proxy.url, retries=2) as client:
        with pytest.raises(ModelUnavailableError) as raised:
            client.models()
    assert raised.value.status_code == 503 and raised.value.attempts == 3 and len(proxy.requests) == 3
    assert raised.value.detail == "warming up"


@pytest.mark.slow
def test_client_does_not_retry_4xx(server, telemetry):
    rows = telemetry[telemetry["protocol"] == "honeygain"].drop(columns=["device", "protocol"])
    with FlakyProxy(server, failures=0) as proxy, _fast(MLClient, proxy.url, retries=3) as client:
        with pytest.raises(NotFoundError):
            client.get_earnings_predictions("nope", rows)
        bad = rows.copy()
        bad.loc[bad.index[3], "allocation"] = 2.0
        with pytest.raises(UnprocessableError) as invalid:
            client.get_earnings_predictions("honeygain", bad)
        with pytest.raises(AuthenticationError):
            client.train("honeygain")
    assert len(proxy.requests) == 3  # one attempt each
    assert invalid.value.errors[0]["field"] == "body.rows.3.allocation"


@pytest.mark.slow
def test_train_is_not_retried_on_5xx(server):
    with FlakyProxy(server, failures=1) as proxy, _fast(MLClient, proxy.url, token="tok", retries=3) as client:
        with pytest.raises(ServerError):
            client.train("honeygain")
    assert len(proxy.requests) == 1


def test_connection_refused_is_retried_then_typed(monkeypatch):
    sleeps: list[float] = []
    client = MLClient(f"http://127.0.0.1:{free_port()}", retries=3, backoff_base=0.1, backoff_max=0.3,
                      rng=random.Random(3), sleep=sleeps.append)
    with client, pytest.raises(APIConnectionError, match="after 4 attempt"):
        client.health()
    # exponential with jitter: attempt k waits in [d_k/2, d_k], d_k = min(0.3, 0.1 * 2**k)
    for k, waited in enumerate(sleeps):
        ceiling = min(0.3, 0.1 * 2**k)
        assert ceiling / 2 <= waited <= ceiling
    assert len(sleeps) == 3


def test_retry_after_header_is_honoured():
    client = MLClient("http://127.0.0.1:1", backoff_max=2.0)
    response = httpx.Response(503, headers={"retry-after": "1.5"})
    assert client.backoff(0, response) == 1.5
    assert client.backoff(0, httpx.Response(503, headers={"retry-after": "60"})) == 2.0
    client.close()


@pytest.mark.slow
def test_client_typed_results_against_the_real_server(server, telemetry):
    honeygain = telemetry[telemetry["protocol"] == "honeygain"]
    with MLClient(server, token="tok") as client:
        plan = client.optimize_allocation({"honeygain": 0.5, "storj": 0.6}, {"honeygain": 0.003, "storj": [0.004] * 24, "akash": [0.04]})
        assert isinstance(plan, AllocationResponse) and plan.solver_status == "optimal"
        baseline = client.get_earnings_predictions("storj", telemetry[telemetry["protocol"] == "storj"], fallback=True)
        assert baseline.source == "seasonal_naive_fallback"
        with pytest.raises(ModelUnavailableError):
            client.detect_anomalies(honeygain.head(10))
        models = client.models()
        assert [m.protocol for m in models.models if m.loaded] == ["honeygain"]
        assert client.model_metrics("honeygain").version == models.models[0].version
        assert client.alerts().available is False
        evaluation = client.evaluate("honeygain", honeygain)
        assert evaluation.n_samples > 0


@pytest.mark.slow
def test_client_maps_403_when_the_server_has_no_token(data_dir, small_catalog_path):
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, api_token=None)
    with running_server(create_app(settings)) as url, MLClient(url, token="anything") as client:
        with pytest.raises(PermissionDeniedError, match="EARNOPT_API_TOKEN"):
            client.train("honeygain")


@pytest.mark.slow
def test_async_client_retries_and_parses(server, telemetry):
    honeygain = telemetry[telemetry["protocol"] == "honeygain"].drop(columns=["device", "protocol"])

    async def scenario():
        with FlakyProxy(server, failures=2) as proxy:
            async with _fast(AsyncMLClient, proxy.url, retries=3) as client:
                forecasts = await asyncio.gather(*(client.get_earnings_predictions("honeygain", honeygain) for _ in range(3)))
                health = await client.health()
                with pytest.raises(NotFoundError):
                    await client.get_earnings_predictions("nope", honeygain)
            return forecasts, health, proxy.requests

    forecasts, health, requests = asyncio.run(scenario())
    assert all(f.source == "lstm" for f in forecasts) and forecasts[0].predictions == forecasts[2].predictions
    assert health.models_loaded == 1
    assert len(requests) == 3 + 2 + 1 + 1  # 3 forecasts + 2 failed attempts, health, one 404
