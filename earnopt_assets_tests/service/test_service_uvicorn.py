"""The service through a real uvicorn: in a thread (success/404/422/503 over TCP) and as the
``earnopt serve`` process an operator runs (settings from the environment, clean shutdown)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import (
    copy_models,
    free_port,
    rows_payload,
    running_server,
    simulated,
    train_tiny_model,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # uvicorn servers and the earnopt serve process


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    from earnopt_assets.catalog import load_catalog

    root = tmp_path_factory.mktemp("uvicorn_models")
    raw = yaml.safe_load((REPO / "data" / "catalog.yaml").read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in {"honeygain", "storj", "akash"}]
    (root / "catalog.yaml").write_text(yaml.safe_dump(raw))
    train_tiny_model(load_catalog(root / "catalog.yaml"), root / "models", "honeygain")
    return root / "models"


def test_endpoints_over_tcp(data_dir, small_catalog, small_catalog_path, tiny_models):
    copy_models(tiny_models, data_dir)
    telemetry = simulated(small_catalog, ["honeygain", "storj"], 9, end="2026-11-25T10:00:00")
    honeygain = rows_payload(telemetry[telemetry["protocol"] == "honeygain"])
    storj = rows_payload(telemetry[telemetry["protocol"] == "storj"])
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        ok = http.post("/predict/earnings/honeygain", json={"rows": honeygain}, headers={"Origin": "http://127.0.0.1:3000"})
        assert ok.status_code == 200 and ok.json()["source"] == "lstm" and len(ok.json()["predictions"]) == 24
        assert ok.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
        missing = http.post("/predict/earnings/filecoin", json={"rows": honeygain})
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        invalid = http.post("/predict/earnings/honeygain", content=b"{not json", headers={"content-type": "application/json"})
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"].startswith("body")
        unavailable = http.post("/predict/earnings/storj", json={"rows": storj})
        assert unavailable.status_code == 503 and "fallback" in unavailable.json()["detail"]
        assert http.post("/predict/earnings/storj", json={"rows": storj, "fallback": True}).json()["source"] == "seasonal_naive_fallback"
        assert http.post("/train/honeygain").status_code == 403  # no token configured
        assert http.get("/health").json()["models_loaded"] == 1
        assert "earnopt_http_requests_total" in http.get("/metrics").text
        assert http.get("/docs").status_code == 200 and http.get("/openapi.json").json()["info"]["title"] == "earnopt ML service"


def test_earnopt_serve_process(data_dir, small_catalog_path, tiny_models):
    copy_models(tiny_models, data_dir)
    port = free_port()
    env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "EARNOPT_CATALOG": str(small_catalog_path),
           "EARNOPT_API_TOKEN": "serve-token", "EARNOPT_LOG_LEVEL": "info", "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "earnopt_assets.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"earnopt serve did not come up:\n{process.stdout.read() if process.stdout else ''}") from None
                time.sleep(0.3)
        assert health.json()["models_loaded"] == 1
        unauthorized = httpx.post(f"http://127.0.0.1:{port}/train/honeygain", headers={"Authorization": "Bearer nope"})
        assert unauthorized.status_code == 401  # the token came from EARNOPT_API_TOKEN
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "GET /health 503" in output  # request log: method, path, status, duration
    assert "models released" in output and "1/3 models loaded" in output
