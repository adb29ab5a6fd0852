"""Auth on mutating endpoints, CORS allowlist, body size limit, settings validation, OpenAPI document."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings


@pytest.fixture
def make_client(data_dir: Path, small_catalog_path: Path):
    clients = []

    def build(**overrides) -> TestClient:
        settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# ----------------------------------------------------------------------------- auth


def test_train_is_disabled_without_a_configured_token(make_client):
    client = make_client(api_token=None)
    body = _problem(client.post("/train/honeygain", headers={"Authorization": "Bearer anything"}), 403)
    assert "EARNOPT_API_TOKEN" in body["detail"]


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwdw==", "Bearer wrong-token", "bearer  "])
def test_train_rejects_missing_or_wrong_tokens(make_client, header):
    client = make_client(api_token="right-token")
    headers = {"Authorization": header} if header is not None else {}
    response = client.post("/train/honeygain", headers=headers)
    _problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_auth_is_checked_before_the_protocol(make_client):
    client = make_client(api_token="right-token")
    _problem(client.post("/train/nope"), 401)
    _problem(client.post("/train/nope", headers={"Authorization": "Bearer right-token"}), 404)


def test_read_endpoints_need_no_token(make_client):
    client = make_client(api_token="right-token")
    assert client.get("/models").status_code == 200
    assert client.get("/alerts").status_code == 200


@pytest.mark.slow
def test_a_failed_launch_is_reported_by_runs(make_client, data_dir):
    """A valid token launches the worker; with a job the code location lacks, the run fails and says why."""
    client = make_client(api_token="right-token", train_job="no_such_job", dagster_home=data_dir / "dagster_home")
    response = client.post("/train/honeygain", headers={"Authorization": "Bearer right-token"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "LAUNCHING" and body["status_url"] == f"/runs/{body['run_id']}"
    deadline = time.monotonic() + 120
    while True:
        status = client.get(body["status_url"]).json()
        if status["finished"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["status"] == "FAILURE"
    assert "dagster job launch failed" in status["detail"] and "no_such_job" in status["detail"]


def test_runs_unknown_and_malformed_ids(make_client, data_dir):
    client = make_client(dagster_home=data_dir / "dagster_home")
    _problem(client.get("/runs/4b0c1f9e-0000-4000-8000-000000000000"), 404)
    body = _problem(client.get("/runs/not-a-uuid"), 422)
    assert body["errors"][0]["field"] == "path.run_id"


# ----------------------------------------------------------------------------- CORS


def test_cors_allows_listed_origins_only(make_client):
    client = make_client()
    allowed = client.get("/models", headers={"Origin": "http://localhost:3000"})
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    denied = client.get("/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers


def test_cors_preflight(make_client):
    client = make_client(cors_origins=["https://grafana.example"])
    ok = client.options("/train/honeygain", headers={
        "Origin": "https://grafana.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://grafana.example"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    refused = client.options("/train/honeygain", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_cors_wildcard_is_refused(data_dir, small_catalog_path, monkeypatch):
    with pytest.raises(ValidationError, match="explicit origins"):
        ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, cors_origins=["*"])
    monkeypatch.setenv("EARNOPT_CORS_ORIGINS", '["*"]')
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_settings_from_environment(data_dir, small_catalog_path, monkeypatch):
    monkeypatch.setenv("EARNOPT_API_TOKEN", "from-env")
    monkeypatch.setenv("EARNOPT_CORS_ORIGINS", '["https://ops.example"]')
    monkeypatch.setenv("EARNOPT_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("DAGSTER_HOME", str(data_dir / "dh"))
    settings = ServiceSettings()
    assert settings.data_dir == data_dir and settings.catalog == small_catalog_path
    assert settings.token_value() == "from-env" and "from-env" not in repr(settings)
    assert settings.cors_origins == ["https://ops.example"] and settings.max_body_bytes == 4096
    assert settings.resolved_dagster_home == data_dir / "dh"
    monkeypatch.delenv("DAGSTER_HOME")
    assert ServiceSettings().resolved_dagster_home == data_dir / "dagster_home"


# ----------------------------------------------------------------------------- body size


def test_body_over_the_limit_by_content_length_is_413(make_client):
    client = make_client(max_body_bytes=4096)
    payload = json.dumps({"rows": [{"x": "y" * 5000}]})
    body = _problem(client.post("/predict/earnings/honeygain", content=payload, headers={"content-type": "application/json"}), 413)
    assert "4096" in body["detail"]


def test_chunked_body_over_the_limit_is_413(make_client):
    client = make_client(max_body_bytes=4096)

    def chunks():
        yield b'{"rows": ['
        for _ in range(50):
            yield b'{"padding": "' + b"z" * 200 + b'"},'
        yield b"{}]}"

    _problem(client.post("/predict/earnings/honeygain", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_body_under_the_limit_reaches_validation(make_client):
    client = make_client(max_body_bytes=4096)
    _problem(client.post("/predict/earnings/honeygain", json={"rows": []}), 422)


# ----------------------------------------------------------------------------- OpenAPI


def test_openapi_document_validates_and_documents_every_endpoint(make_client):
    from openapi_spec_validator import validate

    client = make_client()
    spec = client.get("/openapi.json").json()
    validate(spec)
    paths = spec["paths"]
    expected = {
        ("/predict/earnings/{protocol}", "post"), ("/predict/allocation", "post"), ("/evaluate/{protocol}", "post"),
        ("/detect/anomalies", "post"), ("/train/{protocol}", "post"), ("/runs/{run_id}", "get"), ("/models", "get"),
        ("/models/{protocol}/metrics", "get"), ("/health", "get"), ("/alerts", "get"), ("/metrics", "get"),
    }
    assert expected <= {(path, method) for path, ops in paths.items() for method in ops}
    for path, method in expected:
        assert paths[path][method].get("description"), f"{method} {path} lacks a description"
    assert {"401", "403", "202"} <= set(paths["/train/{protocol}"]["post"]["responses"])
    assert {"404", "422", "503"} <= set(paths["/predict/earnings/{protocol}"]["post"]["responses"])
    schemas = spec["components"]["schemas"]
    for name in ("PredictionRequest", "PredictionResponse", "AllocationRequest", "AllocationResponse", "EvaluationRequest",
                 "EvaluationResponse", "TrainRequest", "TrainResponse", "ModelInfo", "HealthResponse",
                 "AnomalyDetectionRequest", "AnomalyDetectionResponse"):
        assert name in schemas, name
    row = schemas["TelemetryRow"]
    assert row["properties"]["allocation"]["maximum"] == 1 and row["properties"]["earnings_usd"]["minimum"] == 0
    assert row["properties"]["earnings_usd"]["description"] and row.get("examples")
    assert client.get("/docs").status_code == 200
