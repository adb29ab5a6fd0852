"""The product as the UI sees it: a real ``dagster-webserver`` on a free port, driven over GraphQL."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from earnopt_assets_tests.integration.webserver import running_webserver

pytestmark = pytest.mark.slow  # starts dagster-webserver

LINEAGE_EDGES = [
    ("raw_earnings", "earnings_features"),
    ("earnings_features", "earnings_model"),
    ("earnings_model", "earnings_forecast"),
    ("earnings_forecast", "resource_allocation"),
]

ASSET_GRAPH_QUERY = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    groupName
    isPartitioned
    dependencyKeys { path }
    assetChecksOrError {
      ... on AssetChecks { checks { name blocking } }
    }
  }
}
"""

REPOSITORY_QUERY = """
query Automation {
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        schedules { name cronSchedule pipelineName scheduleState { status } }
        sensors { name sensorType }
      }
    }
  }
}
"""

CHECK_RESULTS_QUERY = """
query CheckResults($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            executionForLatestMaterialization { status evaluation { success } }
          }
        }
      }
    }
  }
}
"""


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
    )
    response.raise_for_status()
    payload = response.json()
    assert "errors" not in payload, payload.get("errors")
    return payload["data"]


@pytest.fixture
def webserver(tmp_path: Path, data_dir: Path, small_catalog_path: Path):
    """dagster-webserver on a free port with a tmp DAGSTER_HOME whose runs launch without a daemon."""
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.simulator import simulate_to_dir

    simulate_to_dir(load_catalog(small_catalog_path), days=12, seed=3, out_dir=data_dir / "landing", labels_dir=data_dir / "labels")
    with running_webserver(tmp_path / "dagster_home", data_dir, small_catalog_path, tmp_path / "webserver.log") as url:
        yield int(url.rsplit(":", 1)[1])


def test_ui_graph_lineage_checks_schedule_and_launch(webserver: int) -> None:
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    port = webserver
    nodes = _graphql(port, ASSET_GRAPH_QUERY)["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    for upstream, downstream in LINEAGE_EDGES:
        deps = {"/".join(d["path"]) for d in by_key[downstream]["dependencyKeys"]}
        assert upstream in deps, f"missing lineage edge {upstream} -> {downstream}: {deps}"
    assert by_key["earnings_model"]["isPartitioned"]
    checks = {c["name"] for c in by_key["earnings_model"]["assetChecksOrError"]["checks"]}
    assert "mape_within_target" in checks
    allocation_checks = {c["name"]: c["blocking"] for c in by_key["resource_allocation"]["assetChecksOrError"]["checks"]}
    assert allocation_checks.get("solver_status_optimal") and allocation_checks.get("constraints_satisfied")

    repos = _graphql(port, REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    schedules = {s["name"]: s for repo in repos for s in repo["schedules"]}
    assert any(s["cronSchedule"] == "*/15 * * * *" for s in schedules.values()), schedules
    sensors = {s["name"] for repo in repos for s in repo["sensors"]}
    assert "landing_sensor" in sensors

    # Launch a materialization of the ingestion assets, as the UI's "Materialize" button does.
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution("__ASSET_JOB", asset_selection=[["raw_earnings"], ["earnings_features"]])
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        try:
            status = client.get_run_status(run_id).value
        except DagsterGraphQLClientError:
            status = None
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(1)
    assert status == "SUCCESS", status

    result = _graphql(port, CHECK_RESULTS_QUERY, {"assetKey": {"path": ["earnings_features"]}})
    executed = result["assetNodeOrError"]["assetChecksOrError"]["checks"]
    statuses = {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in executed}
    assert statuses and all(s == "SUCCEEDED" for s in statuses.values()), statuses
