"""``POST /train/{protocol}`` launches a real Dagster run on a tmp instance; ``GET /runs/{id}`` follows it.

The request posts two weeks of telemetry, so the run goes the whole way: landing file → ingestion assets
(validation, raw_earnings, feature snapshot) → ``retrain_earnings_models`` for the partition with a tiny
model config → the service picks the new model up without a restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from earnopt_assets.service.app import create_app
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets_tests.service.helpers import rows_payload, simulated

DAGSTER_YAML = """\
# Launch runs at once (no daemon in tests); production uses deploy/dagster.yaml's queue and pools.
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""

# A small model; the % target is relaxed because a 5-epoch model is not about accuracy. Whether it also beats
# every statistical candidate decides whether it is promoted (both outcomes are checked below).
TINY = {"epochs": 5, "sequence_length": 12, "lstm_units_1": 16, "lstm_units_2": 8, "patience": 2,
        "min_holdout_days": 2, "mape_target_pct": 1000.0}
# the model needs ~4 weeks of training rows after the 7-day feature warm-up and the holdout
TRAINING_DAYS = 42


@pytest.fixture
def dagster_home(data_dir: Path) -> Path:
    home = data_dir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


def _wait(client: TestClient, status_url: str, timeout_s: float = 420.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        status = client.get(status_url).json()
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["finished"]:
            status["seen"] = seen
            return status
        time.sleep(1.0)
    raise AssertionError(f"run did not finish in {timeout_s}s; states seen: {seen}")


@pytest.mark.slow
def test_train_runs_dagster_and_the_new_model_is_served(data_dir, small_catalog, small_catalog_path, dagster_home):
    settings = ServiceSettings(data_dir=data_dir, catalog=small_catalog_path, api_token="tok", dagster_home=dagster_home,
                               model_reload_seconds=0)
    telemetry = simulated(small_catalog, ["honeygain"], TRAINING_DAYS, seed=3)
    with TestClient(create_app(settings)) as client:
        assert client.get("/models").json()["models"][0]["loaded"] is False
        response = client.post(
            "/train/honeygain",
            json={"rows": rows_payload(telemetry), "options": TINY},
            headers={"Authorization": "Bearer tok"},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["ingested_rows"] == len(telemetry) and accepted["job"] == "retrain_earnings_models"
        assert accepted["launched_via"] == "instance" and accepted["partition"] == "honeygain"
        # the posted rows went to landing as a JSON Lines file (ingestion archives it once loaded)
        status = _wait(client, accepted["status_url"])
        from earnopt_assets.forecasting.registry import read_serving_decision

        decision = read_serving_decision(settings.paths.models, "honeygain")
        assert decision is not None and decision.training["challenger_version"], status  # the training run decided
        passed = decision.training["check"]["passed"]
        # a challenger failing the blocking check fails the run (and is never promoted)
        assert status["status"] == ("SUCCESS" if passed else "FAILURE"), status
        assert status["job"] == "retrain_earnings_models" and status["partition"] == "honeygain"
        assert status["start_time"] and status["end_time"]
        assert status["status"] in status["seen"] and status["seen"][0] in ("LAUNCHING", "STARTING", "STARTED")

        # the run is a real run of the instance, tagged with the partition
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(dagster_home))
        run = instance.get_run_by_id(accepted["run_id"])
        assert run.tags["dagster/partition"] == "honeygain" and run.tags["earnopt/launched_by"] == "api"
        materialized = instance.get_latest_materialization_event(dg.AssetKey("earnings_model"))
        assert materialized is not None and materialized.run_id == accepted["run_id"]
        instance.dispose()

        model = client.get("/models").json()["models"][0]
        assert not list((data_dir / "landing").glob("api-honeygain-*.jsonl"))  # ingested and archived
        forecast = client.post("/predict/earnings/honeygain", json={"rows": rows_payload(telemetry.tail(24 * 14))})
        assert forecast.status_code == 200, forecast.text
        # the service answers with what the run decided, and never with a challenger that was not promoted
        assert forecast.json()["source"] == decision.source and forecast.json()["reason"] == decision.reason
        if decision.training["promoted"]:
            assert model["loaded"] is True and model["version"] == decision.training["challenger_version"]
            assert model["passed_mape_check"] is True
        else:
            assert not model["loaded"] and forecast.json()["model_version"] is None


@pytest.mark.slow
def test_a_failed_run_reports_the_failing_step(data_dir):
    """FAILURE comes with the failing step's error from the run's event log, not just a status."""
    import dagster as dg

    from earnopt_assets.service.training import InstanceTrainLauncher

    @dg.asset
    def broken_asset() -> None:
        raise ValueError("feature snapshot for honeygain is missing")

    home = data_dir / "dagster_home"
    launcher = InstanceTrainLauncher(home, job_name="x", workspace_module="x", data_dir=data_dir, catalog_path=data_dir / "c.yaml")
    result = dg.materialize([broken_asset], instance=launcher.instance(), raise_on_error=False)
    state = launcher.status(result.run_id)
    assert state.status == "FAILURE" and state.finished
    assert "broken_asset" in state.detail and "feature snapshot for honeygain is missing" in state.detail
    launcher.close()
