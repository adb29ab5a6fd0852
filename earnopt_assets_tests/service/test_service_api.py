"""Every endpoint of the service through FastAPI's TestClient: success, 404, 422 and 503 paths.

Models are real: a tiny LSTM trained once per session through the forecasting area's training path, and
a small IsolationForest through the anomaly area's detector. The warehouse is a real DuckDB file.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from earnopt_assets.catalog import load_catalog
from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import (
    copy_models,
    rows_payload,
    seed_warehouse,
    simulated,
    train_tiny_detector,
    train_tiny_model,
)

REPO_CATALOG = Path(__file__).resolve().parents[2] / "data" / "catalog.yaml"


def _small_catalog_file(directory: Path, keep: set[str]) -> Path:
    raw = yaml.safe_load(REPO_CATALOG.read_text())
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in keep]
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with a tiny honeygain LSTM and an anomaly detector (trained once)."""
    root = tmp_path_factory.mktemp("service_models")
    catalog = load_catalog(_small_catalog_file(root, {"honeygain", "storj", "akash"}))
    models = root / "models"
    train_tiny_model(catalog, models, "honeygain")
    train_tiny_detector(catalog, models)
    return models


@pytest.fixture
def settings(data_dir: Path, small_catalog_path: Path, trained_store: Path) -> ServiceSettings:
    copy_models(trained_store, data_dir)
    shutil.rmtree(data_dir / "models" / "anomaly")  # tests that need the detector copy it back
    return ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, api_token="test-token", model_reload_seconds=0)


@pytest.fixture
def client(settings: ServiceSettings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def telemetry(small_catalog):
    return simulated(small_catalog, ["honeygain", "storj"], 10, end="2026-11-25T10:00:00")


def _rows(telemetry: pd.DataFrame, protocol: str, hours: int | None = None) -> list[dict]:
    part = telemetry[telemetry["protocol"] == protocol]
    if hours is not None:
        part = part.tail(hours)
    return rows_payload(part)


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body


# ----------------------------------------------------------------------------- predictions


def test_predict_earnings_with_the_loaded_model(client, telemetry):
    rows = _rows(telemetry, "honeygain")
    response = client.post("/predict/earnings/honeygain", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    # the source is named truthfully, with the reason its training run recorded
    assert body["source"] == "lstm" and body["reason"].startswith("lstm holdout MAPE 9.00% < 15% target") and body["below_target"] is False
    assert body["model_version"] == client.get("/models").json()["models"][0]["version"]
    for hour in body["predictions"]:
        assert 0 <= hour["lower_95"] <= hour["lower_80"] <= hour["earnings_usd"] <= hour["upper_80"] <= hour["upper_95"]
    last = pd.Timestamp(rows[-1]["ts"])
    targets = [pd.Timestamp(p["ts"]) for p in body["predictions"]]
    assert targets == [last + pd.Timedelta(hours=h) for h in range(1, 25)]
    values = [p["earnings_usd"] for p in body["predictions"]]
    assert all(v >= 0 for v in values) and body["total_usd"] == pytest.approx(sum(values))
    # the forecast tracks the series' level (a tiny model, but a residual over the seasonal base)
    recent_mean = pd.Series([r["earnings_usd"] for r in rows[-72:]]).mean()
    assert 0.2 * recent_mean < sum(values) / 24 < 5 * recent_mean


def test_predict_unknown_protocol_is_404(client, telemetry):
    body = _problem(client.post("/predict/earnings/not-a-protocol", json={"rows": _rows(telemetry, "honeygain")}), 404)
    assert "honeygain" in body["detail"]  # tells the caller what exists


def test_predict_path_traversal_is_refused_as_unknown(client, telemetry):
    response = client.post("/predict/earnings/..%2F..%2Fetc", json={"rows": _rows(telemetry, "honeygain")})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda rows: rows[5].update(allocation=1.5), "body.rows.5.allocation"),
        (lambda rows: rows[7].update(earnings_usd=-1), "body.rows.7.earnings_usd"),
        (lambda rows: rows[2].update(ts="2026-11-20T10:30:00Z"), "body.rows.2.ts"),
        (lambda rows: rows[3].pop("cpu_cores"), "body.rows.3.cpu_cores"),
        (lambda rows: rows[4].update(bogus=1), "body.rows.4.bogus"),
        (lambda rows: rows[9].update(ts=rows[8]["ts"]), "body.rows"),
    ],
)
def test_predict_bad_rows_are_422_naming_the_field(client, telemetry, mutate, field):
    rows = _rows(telemetry, "honeygain")
    mutate(rows)
    body = _problem(client.post("/predict/earnings/honeygain", json={"rows": rows}), 422)
    assert field in [e["field"] for e in body["errors"]]


def test_predict_row_for_another_protocol_is_422(client, telemetry):
    rows = _rows(telemetry, "honeygain")
    rows[0]["protocol"] = "storj"
    body = _problem(client.post("/predict/earnings/honeygain", json={"rows": rows}), 422)
    assert body["errors"][0]["field"] == "rows.0.protocol"


def test_predict_short_history_is_422_unless_fallback(client, telemetry):
    rows = _rows(telemetry, "honeygain", hours=48)
    body = _problem(client.post("/predict/earnings/honeygain", json={"rows": rows}), 422)
    needed = client.get("/models").json()["models"][0]["required_history_hours"]
    assert body["required_history_hours"] == needed > 168 and "insufficient_history" in body["detail"]
    fallback = client.post("/predict/earnings/honeygain", json={"rows": rows, "fallback": True}).json()
    assert fallback["source"] == "seasonal_naive_fallback" and "needs more history" in fallback["reason"] and fallback["below_target"]


def test_predict_gap_in_window_is_422(client, telemetry):
    rows = _rows(telemetry, "honeygain")
    del rows[-5]
    body = _problem(client.post("/predict/earnings/honeygain", json={"rows": rows}), 422)
    assert body["errors"][0]["field"] == "rows"


def test_predict_without_model_is_503_or_the_baseline(client, telemetry):
    rows = _rows(telemetry, "storj")
    body = _problem(client.post("/predict/earnings/storj", json={"rows": rows}), 503)
    assert "POST /train/storj" in body["detail"] and "fallback" in body["detail"]
    response = client.post("/predict/earnings/storj", json={"rows": rows, "fallback": True})
    assert response.status_code == 200
    baseline = response.json()
    assert baseline["source"] == "seasonal_naive_fallback" and baseline["model_version"] is None
    assert baseline["predictions"][0]["lower_80"] is None  # no scored residuals, no made-up interval
    # seasonal naive: each target hour repeats the same hour of the previous day
    by_ts = {pd.Timestamp(r["ts"]): r["earnings_usd"] for r in rows}
    for prediction in baseline["predictions"]:
        assert prediction["earnings_usd"] == pytest.approx(by_ts[pd.Timestamp(prediction["ts"]) - pd.Timedelta(hours=24)])


def _decide(settings, protocol: str, **changes):
    from dataclasses import replace

    from earnopt_assets.forecasting.registry import read_serving_decision, write_serving_decision

    decision = read_serving_decision(settings.paths.models, protocol)
    write_serving_decision(settings.paths.models, replace(decision, **changes))


def test_a_champion_that_lost_to_a_statistical_candidate_is_not_used(client, settings, telemetry):
    # the training run found same-hour-last-week better than the LSTM champion: that candidate answers
    _decide(settings, "honeygain", source="seasonal_naive_168", model_version=None,
            reason="seasonal_naive_168 holdout MAPE 1.90% < 15% target, best of 5 candidates; next lstm 6.50%")
    rows = _rows(telemetry, "honeygain")
    body = client.post("/predict/earnings/honeygain", json={"rows": rows}).json()
    assert body["source"] == "seasonal_naive_168" and body["model_version"] is None
    assert body["reason"].startswith("seasonal_naive_168 holdout MAPE 1.90%")
    by_ts = {pd.Timestamp(r["ts"]): r["earnings_usd"] for r in rows}
    for hour in body["predictions"]:
        assert hour["earnings_usd"] == pytest.approx(by_ts[pd.Timestamp(hour["ts"]) - pd.Timedelta(hours=168)])
        assert hour["lower_80"] <= hour["earnings_usd"] <= hour["upper_80"]
    # too little history for that candidate: a 422 naming it, or the labelled fallback when asked
    short = _rows(telemetry, "honeygain", hours=100)
    assert "seasonal_naive_168" in _problem(client.post("/predict/earnings/honeygain", json={"rows": short}), 422)["detail"]
    fallback = client.post("/predict/earnings/honeygain", json={"rows": short, "fallback": True}).json()
    assert fallback["source"] == "seasonal_naive_fallback" and "seasonal_naive_168" in fallback["reason"]


def test_below_target_source_is_served_and_flagged(client, settings, telemetry):
    _decide(settings, "honeygain", below_target=True, mape_pct=16.0,
            reason="below target: lstm holdout MAPE 16.00% is the best of 5 candidates but none meets the 15% target; next seasonal_naive_24 31.00%")
    body = client.post("/predict/earnings/honeygain", json={"rows": _rows(telemetry, "honeygain")}).json()
    assert body["source"] == "lstm" and body["below_target"] is True and body["reason"].startswith("below target")


def test_a_model_that_failed_its_check_is_never_served(client, settings, telemetry):
    import json

    from earnopt_assets.forecasting.registry import current_version, serving_path, version_dir

    # no serving decision on record and the champion's recorded check failed: the model is not used
    serving_path(settings.paths.models, "honeygain").unlink()
    metadata_path = version_dir(settings.paths.models, "honeygain", current_version(settings.paths.models, "honeygain")) / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["mape_check"] = {"passed": False, "threshold": 15.0, "reasons": ["holdout MAPE 31.00% is not below the 15% target"]}
    metadata_path.write_text(json.dumps(metadata))
    rows = _rows(telemetry, "honeygain")
    assert "failed its MAPE check" in _problem(client.post("/predict/earnings/honeygain", json={"rows": rows}), 503)["detail"]
    body = client.post("/predict/earnings/honeygain", json={"rows": rows, "fallback": True}).json()
    assert body["source"] == "seasonal_naive_fallback" and body["model_version"] is None and "failed its MAPE check" in body["reason"]


def test_rows_posted_in_any_order_give_the_same_forecast(client, telemetry):
    rows = _rows(telemetry, "honeygain")
    ordered = client.post("/predict/earnings/honeygain", json={"rows": rows}).json()["predictions"]
    shuffled = client.post("/predict/earnings/honeygain", json={"rows": rows[::-1]}).json()["predictions"]
    assert ordered == shuffled


# ----------------------------------------------------------------------------- evaluation and models


def test_evaluate_scores_posted_data_without_touching_the_served_metrics(client, telemetry):
    before = client.get("/models/honeygain/metrics").json()
    response = client.post("/evaluate/honeygain", json={"rows": _rows(telemetry, "honeygain")})
    assert response.status_code == 200, response.text
    body = response.json()
    needed = client.get("/models").json()["models"][0]["required_history_hours"]
    assert body["n_samples"] == 240 - needed  # every hour after the history the model needs
    assert body["metrics"]["mape"] > 0 and body["metrics"]["rmse"] >= 0
    assert set(body["details"]) >= {"seasonal_naive_24", "seasonal_naive_168", "origins"}
    assert isinstance(body["passed_mape_check"], bool) and body["mape_threshold"] > 0
    assert client.get("/models/honeygain/metrics").json() == before


def test_evaluate_error_paths(client, telemetry):
    _problem(client.post("/evaluate/nope", json={"rows": _rows(telemetry, "honeygain")}), 404)
    body = _problem(client.post("/evaluate/honeygain", json={"rows": _rows(telemetry, "honeygain", hours=100)}), 422)
    assert "evaluation needs at least 181" in body["detail"]
    _problem(client.post("/evaluate/storj", json={"rows": _rows(telemetry, "storj")}), 503)
    _problem(client.post("/evaluate/honeygain", json={"rows": []}), 422)


def test_models_lists_every_enabled_protocol(client):
    body = client.get("/models").json()
    assert body["expected"] == ["honeygain", "storj", "akash"]
    by_name = {m["protocol"]: m for m in body["models"]}
    honeygain = by_name["honeygain"]
    assert honeygain["loaded"] and honeygain["version"] and honeygain["trained_at"]
    assert isinstance(honeygain["passed_mape_check"], bool)
    # the champion's holdout scores next to every statistical candidate's, from its training run
    assert honeygain["metrics"]["lstm"]["mape_pct"] > 0 and honeygain["metrics"]["mstl"]["mape_pct"] > 0
    assert honeygain["required_history_hours"] > 168
    assert not by_name["storj"]["loaded"] and by_name["storj"]["error"] == "no trained model"


def test_model_metrics(client):
    body = client.get("/models/honeygain/metrics").json()
    assert body["history"]["epochs_run"] >= 1 and "best_val_loss" in body["history"]
    assert body["metrics"]["lstm"]["rmse_usd"] >= 0
    _problem(client.get("/models/storj/metrics"), 503)
    _problem(client.get("/models/nope/metrics"), 404)


def _copy_version(settings, protocol: str, version: str, *, corrupt: bool = False) -> str:
    """A second version of ``protocol``'s model saved through the model store (same weights, new name)."""
    import json

    from earnopt_assets.forecasting.model.persistence import model_store

    store = model_store(settings.paths.models)
    source = store.path(protocol, version)
    with store.stage(protocol, mutable=("metadata.json",)) as staged:
        for part in source.iterdir():
            if part.is_file() and part.name != "MANIFEST.json":
                shutil.copy2(part, Path(staged) / part.name)
        metadata = json.loads((Path(staged) / "metadata.json").read_text())
        (Path(staged) / "metadata.json").write_text(json.dumps({**metadata, "version": staged.version}))
    if corrupt:
        (staged.path / "network.npz").write_bytes(b"not a model")
    return staged.version


def test_a_new_model_version_is_picked_up_without_restart(client, settings):
    from earnopt_assets.forecasting.registry import current_version, set_current

    new = _copy_version(settings, "honeygain", current_version(settings.paths.models, "honeygain"))
    set_current(settings.paths.models, "honeygain", new)
    assert client.get("/models").json()["models"][0]["version"] == new


def test_a_corrupt_new_version_keeps_serving_the_previous_one(client, settings, telemetry):
    from earnopt_assets.forecasting.registry import current_version, model_root

    old = current_version(settings.paths.models, "honeygain")
    broken = _copy_version(settings, "honeygain", old, corrupt=True)
    (model_root(settings.paths.models, "honeygain") / "CURRENT").write_text(broken + "\n")  # as a crashed writer might leave it
    info = client.get("/models").json()["models"][0]
    assert info["loaded"] and info["version"] == old and "previous version" in info["error"]
    assert client.post("/predict/earnings/honeygain", json={"rows": _rows(telemetry, "honeygain")}).json()["model_version"] == old


# ----------------------------------------------------------------------------- allocation


def _allocation_body() -> dict:
    return {
        "current_allocations": {"honeygain": 0.5, "storj": 0.6, "akash": 0.0},
        "earnings": {"honeygain": [0.002] * 24, "storj": [0.004], "akash": [0.05]},
    }


def test_allocation_with_posted_predictions(client):
    response = client.post("/predict/allocation", json=_allocation_body())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["solver_status"] == "optimal" and body["checks"] == {"solver_status_optimal": True, "constraints_satisfied": True}
    assert set(body["allocations"]) == {"honeygain", "storj", "akash"}
    assert all(0 <= v <= 1 for v in body["optimal_allocations"].values())
    assert all(0 <= v <= 100 + 1e-6 for v in body["utilisation_pct"].values())
    analysis = body["analysis"]
    assert analysis["decision"] in ("reallocate", "keep") and len(analysis["reasons"]) == 4  # improvement, net benefit, L1, risk
    assert {item["protocol"] for item in analysis["cost_items"]} == {"honeygain", "storj", "akash"}
    assert analysis["reallocation_cost_usd"] == pytest.approx(sum(i["total_usd"] for i in analysis["cost_items"]))
    # akash was off and is the best earner per unit: the optimum turns it on, which restarts it
    akash = next(p for p in body["protocols"] if p["protocol"] == "akash")
    assert akash["optimal"] > 0.5 and akash["earnings_source"] == "request"
    expected_status = "applied" if analysis["decision"] == "reallocate" else "kept"
    assert body["status"] == expected_status
    assert body["allocations"] == (body["optimal_allocations"] if expected_status == "applied" else {"honeygain": 0.5, "storj": 0.6, "akash": 0.0})


def test_allocation_full_allocation_basis_changes_the_potentials(client):
    current = client.post("/predict/allocation", json=_allocation_body()).json()
    full = client.post("/predict/allocation", json={**_allocation_body(), "earnings_basis": "full_allocation"}).json()
    potential = {p["protocol"]: p["potential_usd_per_hour"] for p in current["protocols"]}
    potential_full = {p["protocol"]: p["potential_usd_per_hour"] for p in full["protocols"]}
    assert potential_full["honeygain"] == pytest.approx(0.002)
    assert potential["honeygain"] == pytest.approx(0.002 / 0.5**0.5)  # prior beta 0.5 without telemetry


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"current_allocations": {"honeygain": 1.5}, "earnings": {"honeygain": [0.1]}}, "body.current_allocations"),
        ({"current_allocations": {"nope": 0.5}, "earnings": {"honeygain": [0.1]}}, "current_allocations.nope"),
        ({"earnings": {"honeygain": [0.1] * 5}}, "body.earnings"),
        ({"earnings": {"honeygain": [-0.1]}}, "body.earnings"),
        ({"earnings": {"honeygain": [0.1]}, "use_latest_forecasts": True}, "body"),
    ],
)
def test_allocation_bad_input_is_422(client, body, field):
    problem = _problem(client.post("/predict/allocation", json=body), 422)
    assert any(e["field"] == field or e["field"].startswith(field + ".") for e in problem["errors"])


def test_allocation_without_any_predictions_is_503(client):
    _problem(client.post("/predict/allocation", json={"use_latest_forecasts": True}), 503)


def test_allocation_from_the_latest_forecasts(client, settings, small_catalog, telemetry):
    seed_warehouse(settings.paths.warehouse, small_catalog, telemetry, forecast_time=datetime(2026, 11, 25, 10, 5))
    response = client.post("/predict/allocation", json={"use_latest_forecasts": True})
    assert response.status_code == 200, response.text
    body = response.json()
    sources = {p["protocol"]: p["earnings_source"] for p in body["protocols"]}
    assert sources["honeygain"] in ("lstm", "seasonal_naive_fallback") and sources["akash"] == "prior"  # no telemetry: catalog prior (#17)
    assert body["solver_status"] == "optimal"


# ----------------------------------------------------------------------------- anomalies and alerts


def test_detect_anomalies(client, settings, trained_store, small_catalog):
    rows = rows_payload(simulated(small_catalog, ["honeygain", "storj"], 9, anomalies=True, seed=21), keep_protocol=True)
    _problem(client.post("/detect/anomalies", json={"rows": rows}), 503)
    shutil.copytree(trained_store / "anomaly", Path(settings.data_dir) / "models" / "anomaly")
    response = client.post("/detect/anomalies", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scored"] == len(rows) and body["detector_version"]
    assert body["anomalies"] == sum(r["is_anomaly"] for r in body["results"])
    assert all(r["is_anomaly"] == (r["score"] > 0) for r in body["results"])
    assert set(body["results"][-1]["features"]) == {"earnings_dev_24h", "earnings_vs_last_week", "resource_zscore", "failure_rate"}


def test_detect_anomalies_422(client):
    row = {"ts": "2026-11-20T10:00:00Z", "earnings_usd": 0.1, "cpu_cores": 0.1, "memory_gb": 0.1, "bandwidth_mbps": 1,
           "storage_gb": 0.1, "allocation": 0.5, "connection_failures": 0}
    problem = _problem(client.post("/detect/anomalies", json={"rows": [row]}), 422)
    assert "protocol" in problem["detail"]
    problem = _problem(client.post("/detect/anomalies", json={"rows": [{**row, "protocol": "nope"}]}), 422)
    assert problem["errors"][0]["field"] == "rows.0.protocol"


def test_alerts_before_and_after_the_pipeline(client, settings, small_catalog, telemetry):
    assert client.get("/alerts").json() == {"available": False, "alerts": []}
    seed_warehouse(settings.paths.warehouse, small_catalog, telemetry, forecast_time=datetime(2026, 11, 25, 10, 5), alerts=2)
    body = client.get("/alerts").json()
    assert body["available"] is True
    assert [a["id"] for a in body["alerts"]] == ["a1", "a0"]  # newest first, resolved one left out
    assert body["alerts"][0]["status"] == "acknowledged" and body["alerts"][1]["evidence"] == {"drop": 0.4}


# ----------------------------------------------------------------------------- health and metrics


def test_health_down_without_warehouse(client):
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down" and body["warehouse"]["status"] == "down"
    assert body["models_loaded"] == 1 and body["models_expected"] == 3 and body["missing_models"] == ["storj", "akash"]


def test_health_degraded_then_ok(data_dir, trained_store, small_catalog):
    catalog_path = _small_catalog_file(data_dir, {"honeygain"})
    catalog = load_catalog(catalog_path)
    copy_models(trained_store, data_dir)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    settings = ServiceSettings(data_dir=data_dir, catalog=catalog_path)
    seed_warehouse(settings.paths.warehouse, catalog, simulated(catalog, ["honeygain"], 2, end=now.isoformat()), forecast_time=now)
    with TestClient(create_app(settings)) as client:
        body = client.get("/health").json()
        assert body["status"] == "degraded"  # no allocation yet
        assert body["warehouse"]["status"] == "ok" and body["telemetry_age_seconds"] < 7200
        assert body["allocation_age_seconds"] is None and body["anomaly_detector_loaded"] is True
        settings.paths.latest_plan.parent.mkdir(parents=True, exist_ok=True)
        settings.paths.latest_plan.write_text("{}")
        body = client.get("/health").json()
        assert body["status"] == "ok" and body["allocation_age_seconds"] < 60


def test_health_counts_a_statistical_champion_as_served(data_dir, small_catalog):
    """A protocol whose training run decided a statistical candidate serves (its LSTM lost) is served:
    with no LSTM loaded at all the service is not down, and only the undecided protocols are missing."""
    from earnopt_assets.forecasting.registry import ServingDecision, write_serving_decision

    catalog_path = _small_catalog_file(data_dir, {"honeygain", "storj"})
    catalog = load_catalog(catalog_path)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    settings = ServiceSettings(data_dir=data_dir, catalog=catalog_path, model_reload_seconds=0)
    seed_warehouse(settings.paths.warehouse, catalog, simulated(catalog, ["honeygain"], 2, end=now.isoformat()), forecast_time=now)
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "down"  # nothing can serve yet
        write_serving_decision(settings.paths.models, ServingDecision(
            protocol="honeygain", source="seasonal_naive_168", reason="beat the LSTM challenger on the holdout",
            below_target=False, mape_pct=9.0, target_pct=15.0, model_version=None))
        response = client.get("/health")
        body = response.json()
        assert response.status_code == 200 and body["status"] == "degraded"
        assert body["models_loaded"] == 0 and body["missing_models"] == ["storj"]
        write_serving_decision(settings.paths.models, ServingDecision(
            protocol="storj", source="lstm", reason="champion", below_target=False, mape_pct=5.0,
            target_pct=15.0, model_version="v1"))
        assert client.get("/health").json()["missing_models"] == ["storj"]  # an LSTM decision needs its model


def test_metrics_exposition(client, settings, small_catalog, telemetry):
    client.post("/predict/earnings/honeygain", json={"rows": _rows(telemetry, "honeygain")})
    client.post("/predict/earnings/nope", json={"rows": _rows(telemetry, "honeygain")})
    seed_warehouse(settings.paths.warehouse, small_catalog, telemetry, forecast_time=datetime(2026, 11, 25, 10, 5), alerts=2)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'earnopt_http_requests_total{method="POST",route="/predict/earnings/{protocol}",status="200"} 1.0' in text
    assert 'earnopt_http_requests_total{method="POST",route="/predict/earnings/{protocol}",status="404"} 1.0' in text
    assert 'earnopt_http_request_duration_seconds_bucket{le="0.05",method="POST",route="/predict/earnings/{protocol}"}' in text
    assert 'earnopt_predictions_total{protocol="honeygain",source="lstm"} 1.0' in text
    assert 'earnopt_model_loaded{protocol="honeygain"} 1.0' in text
    assert 'earnopt_model_age_seconds{protocol="honeygain"}' in text
    assert 'earnopt_latest_forecast_usd{protocol="honeygain",source="lstm"} 0.0011' in text
    assert 'earnopt_open_alerts{protocol="honeygain",severity="warning"} 2.0' in text
    assert "earnopt_telemetry_age_seconds" in text


def test_unexpected_errors_are_problem_json_without_traceback(settings):
    app = create_app(settings)

    def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = _problem(client.get("/explode"), 500)
        assert "secret internal detail" not in client.get("/explode").text
        assert body["type"].endswith("/internal")


def test_unknown_route_and_method_are_problem_json(client):
    _problem(client.get("/nowhere"), 404)
    _problem(client.get("/predict/allocation"), 405)


# ----------------------------------------------------------------------------- prediction cache


def test_identical_requests_are_served_from_the_cache(client, telemetry):
    rows = _rows(telemetry, "honeygain")
    first = client.post("/predict/earnings/honeygain", json={"rows": rows}).json()
    second = client.post("/predict/earnings/honeygain", json={"rows": rows}).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["predictions"] == first["predictions"] and second["generated_at"] == first["generated_at"]
    other = client.post("/predict/earnings/honeygain", json={"rows": rows[:-1]}).json()
    assert other["cached"] is False and other["predictions"][0]["ts"] != first["predictions"][0]["ts"]
    state = client.app.state.earnopt
    assert state.predictions.hits == 1 and state.predictions.misses == 2


def test_cache_can_be_disabled_and_errors_are_not_cached(data_dir, small_catalog_path, trained_store, telemetry):
    copy_models(trained_store, data_dir)
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, prediction_cache_size=0)
    rows = _rows(telemetry, "honeygain")
    with TestClient(create_app(settings)) as client:
        assert [client.post("/predict/earnings/honeygain", json={"rows": rows}).json()["cached"] for _ in range(2)] == [False, False]
        short = _rows(telemetry, "honeygain", hours=30)
        assert [client.post("/predict/earnings/honeygain", json={"rows": short}).status_code for _ in range(2)] == [422, 422]


def test_concurrent_identical_requests_compute_once():
    import asyncio

    from earnopt_assets.service.state import PredictionCache

    cache = PredictionCache(size=4)
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        return "forecast"

    async def scenario():
        results = await asyncio.gather(*(cache.compute_once("k", compute) for _ in range(5)))
        failing = [cache.compute_once("bad", _fail) for _ in range(3)]
        errors = await asyncio.gather(*failing, return_exceptions=True)
        return results, errors

    async def _fail():
        await asyncio.sleep(0.01)
        raise ValueError("bad rows")

    results, errors = asyncio.run(scenario())
    assert results == ["forecast"] * 5 and len(calls) == 1 and cache.get("k") == "forecast"
    assert all(isinstance(e, ValueError) for e in errors) and cache.get("bad") is None
    for key in "abcde":
        cache.put(key, key)
    assert cache.get("k") is None and cache.get("e") == "e"  # LRU evicted the oldest


def test_health_counts_a_model_trained_after_startup(data_dir, small_catalog_path, trained_store):
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, model_reload_seconds=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["models_loaded"] == 0
        copy_models(trained_store, data_dir)  # what a finished training run leaves behind
        assert client.get("/health").json()["models_loaded"] == 1
        assert 'earnopt_model_loaded{protocol="honeygain"} 1.0' in client.get("/metrics").text
