"""The API contract says what the code enforces (#13 §5): schemathesis, as a library against the ASGI
app, generates requests from the OpenAPI document and runs every check on each answer (no server
error, documented status codes, content types and headers, response schemas, schema-invalid requests
rejected and schema-valid ones accepted, ...). Bounded by a small ``max_examples`` per operation."""

from __future__ import annotations

import shutil

import hypothesis
import hypothesis.errors
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings

pytestmark = pytest.mark.slow
TOKEN = "schemathesis-token"
MAX_EXAMPLES = 8


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    """A healthy service: one protocol with a tiny trained model, a detector and a seeded warehouse (a
    missing model is a documented 503, but a 5xx is what schemathesis counts as a server error)."""
    import yaml

    from earnopt_assets.anomaly.detector import AnomalyDetector, detection_features
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG
    from earnopt_assets_tests.service.helpers import SIM_END, seed_warehouse, simulated, train_tiny_model

    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    data_dir.mkdir()
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] == "honeygain"]
    catalog_path = data_dir / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    catalog = load_catalog(catalog_path)
    models = data_dir / "models"
    train_tiny_model(catalog, models, "honeygain")
    telemetry = simulated(catalog, ["honeygain"], 14, seed=11, anomalies=True)
    detector = AnomalyDetector(contamination=0.05, n_estimators=25, max_samples=128)
    detector.fit(detection_features(telemetry, {s.name: s for s in catalog.protocols})).save(models / "anomaly")
    seed_warehouse(data_dir / "earnopt.duckdb", catalog, telemetry, forecast_time=pd.Timestamp(SIM_END).to_pydatetime())
    settings = ServiceSettings(data_dir=data_dir, catalog=catalog_path, api_token=TOKEN, model_reload_seconds=0)
    application = create_app(settings)
    with TestClient(application) as client:  # runs the lifespan: catalog, models, detector
        application.state.history_hours = max(m["required_history_hours"] or 0 for m in client.get("/models").json()["models"])
        yield application
    shutil.rmtree(data_dir, ignore_errors=True)


def valid_rows(case, history_hours: int) -> None:
    """The two row rules JSON Schema cannot state (the schema says both in prose): no two rows share
    (device, ts), and a model needs its ``required_history_hours`` (GET /models; per protocol, decided
    by training). Generated rows get distinct consecutive hours, and bodies for a model's forecast or
    evaluation are padded to that history with copies of the generated rows."""
    body = case.body
    if not (isinstance(body, dict) and isinstance(body.get("rows"), list) and body["rows"]):
        return
    rows = body["rows"]
    # a forecast needs the history; an evaluation also needs the 24 h it scores after it
    needed = history_hours if "/predict/earnings/" in case.path else history_hours + 24 if "/evaluate/" in case.path else 0
    rows.extend(dict(rows[i % len(rows)]) for i in range(max(0, needed - len(rows))))
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            row["ts"] = f"{start + pd.Timedelta(hours=index):%Y-%m-%dT%H:%M:%SZ}"


def test_booleans_are_strict(app) -> None:
    with TestClient(app) as client:
        answer = client.post("/predict/allocation", json={"use_latest_forecasts": 0})
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert "use_latest_forecasts" in answer.text


def test_every_operation_passes_every_check(app) -> None:
    load_all_checks()
    checks = list(CHECKS.get_all())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    history_hours = app.state.history_hours
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def run(case) -> None:
                if mode is GenerationMode.POSITIVE:  # noqa: B023 - run() is called within this iteration
                    valid_rows(case, history_hours)
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no parameter or body to break: nothing negative exists
            except (Exception, BaseExceptionGroup) as exc:  # every failing operation is reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations >= 10
    assert not failures, "\n\n".join(failures)
