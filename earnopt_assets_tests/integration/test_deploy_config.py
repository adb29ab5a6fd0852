"""The shipped Dagster instance configs are valid for the Dagster version we install."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config

from earnopt_assets.warehouse import DUCKDB_POOL

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("directory", [DEPLOY, DEPLOY / "k8s"], ids=["local", "k8s"])
def test_instance_config_validates_and_serializes_duckdb_writers(directory: Path) -> None:
    config, custom_class = dagster_instance_config(str(directory))
    assert custom_class is None
    pools = config["concurrency"]["pools"]
    # One slot per pool: the DuckDB pool (and any other) admits a single writer step at a time.
    assert pools["default_limit"] == 1
    assert DUCKDB_POOL == "duckdb_warehouse"


def test_k8s_run_launcher_and_postgres_storage_match_their_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresEventLogStorage

    config, _ = dagster_instance_config(str(DEPLOY / "k8s"))
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    # The pods get these from the earnopt-secrets/earnopt-env objects.
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(name, "set-by-the-pod")
    storage = process_config(PostgresEventLogStorage.config_type(), config["storage"]["postgres"])
    assert storage.success, storage.errors


def test_invalid_instance_config_is_rejected(tmp_path: Path) -> None:
    """The validation above is not vacuous: a conflicting config fails."""
    bad = yaml.safe_load((DEPLOY / "k8s" / "dagster.yaml").read_text())
    bad["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"max_concurrent_runs": 2},
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_helm_values_wire_the_code_location_and_shared_volume() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "earnopt_assets.definitions"]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert claim.keys() == mounts.keys()
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    # Run pods must see the same data volume as the code server, or models and plans diverge.
    assert launcher["config"]["k8sRunLauncher"]["volumeMounts"] == deployment["volumeMounts"]
