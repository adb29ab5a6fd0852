"""The resource_allocation asset, its blocking checks, the 15-minute job and schedule, end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from earnopt_assets.definitions import build_definitions
from earnopt_assets.defs.allocation import allocation_job, allocation_schedule, resource_allocation
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_simulated(data_dir: Path, catalog, days: int = 8) -> None:
    end = pd.Timestamp.now("UTC").floor("h").tz_localize(None)
    telemetry = simulate(catalog, days=days, seed=11, end=end.to_pydatetime(), inject_anomalies=False).telemetry
    with connect(data_dir / "earnopt.duckdb") as conn:
        ensure_raw_earnings(conn)
        conn.register("telemetry", telemetry)
        conn.execute(
            "INSERT INTO raw_earnings (device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb,"
            " allocation, connection_failures, latency_ms) SELECT device, protocol, ts,"
            " earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms FROM telemetry"
        )


def rewrite_catalog(path: Path, **changes) -> None:
    raw = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_schedule_targets_only_the_allocation_step_every_15_minutes() -> None:
    assert allocation_schedule.cron_schedule == "*/15 * * * *"
    assert allocation_schedule.job_name == allocation_job.name == "allocation_job"
    assert allocation_schedule.execution_timezone == "UTC"
    defs = build_definitions()
    assert defs.resolve_schedule_def("allocation_schedule").job_name == "allocation_job"
    job = defs.resolve_job_def("allocation_job")
    assert job.executor_def is dg.in_process_executor
    # applied_allocation (issue 18) acts on the plan after it, gated by the blocking checks
    assert {node.name for node in job.graph.nodes} == {"resource_allocation", "applied_allocation"}
    checks = {key.name for key in job.asset_layer.asset_graph.asset_check_keys if key.asset_key == resource_allocation.key}
    assert checks == {"solver_status_optimal", "constraints_satisfied"}
    specs = {spec.name: spec for spec in resource_allocation.check_specs}
    assert all(spec.blocking for spec in specs.values())
    assert {dep.asset_key for dep in resource_allocation.specs_by_key[resource_allocation.key].deps} == {
        dg.AssetKey("earnings_forecast"),
        dg.AssetKey("alerts"),
    }
    assert resource_allocation.op.pool == "duckdb_warehouse"

    # A tick of the schedule asks for one run of allocation_job, and the cron fires on the quarter hours.
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 25, 17, 45))
    data = allocation_schedule.evaluate_tick(context)
    assert len(data.run_requests) == 1 and data.run_requests[0].job_name in (None, "allocation_job")
    from dagster._utils.schedules import cron_string_iterator

    ticks = cron_string_iterator(datetime(2026, 11, 25, 17, 1, tzinfo=UTC).timestamp(), "*/15 * * * *", "UTC")
    assert [next(ticks).strftime("%H:%M") for _ in range(4)] == ["17:15", "17:30", "17:45", "18:00"]


def test_scheduled_job_runs_end_to_end_on_fallback_forecasts(data_dir: Path, small_catalog_path: Path, small_catalog, small_resources) -> None:
    load_simulated(data_dir, small_catalog)
    defs = build_definitions(resources=small_resources)
    result = defs.resolve_job_def("allocation_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"solver_status_optimal", "constraints_satisfied"}
    assert all(e.passed for e in evaluations.values())
    metadata = result.asset_materializations_for_node("resource_allocation")[0].metadata
    assert metadata["status"].value in ("kept", "applied")
    assert "honeygain" in {r.data["protocol"] for r in metadata["allocation_table"].records}
    assert "memory_gb" in {r.data["resource"] for r in metadata["utilisation"].records}
    assert "Decision:" in metadata["decision_analysis"].value
    cycles = {(r.data["decision"], r.data["status"]) for r in metadata["recent_cycles"].records}
    assert ("keep", "kept") in cycles or ("reallocate", "applied") in cycles
    assert set(metadata["forecast_sources"].value.values()) == {"seasonal_naive_fallback"}
    columns = {c.name for c in metadata["allocation_table"].schema.columns}
    assert {"current_share_%", "proposed_share_%", "change_pp", "expected_current_usd_per_h", "cpu_cores", "memory_gb"} <= columns
    texts = [v if isinstance(v, str) else v.value for v in metadata.values() if isinstance(v, (str, dg.MarkdownMetadataValue, dg.TextMetadataValue))]
    texts = [re.sub(r"\(data:image/png;base64,[^)]*\)", "", text) for text in texts]
    assert not [t for t in texts if re.search(r"\b(None|nan)\b|\[\]|\{\}", t)]

    plan = json.loads((data_dir / "allocation" / "latest.json").read_text())
    assert set(plan["allocations"]) == {"honeygain", "storj", "akash"}
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert conn.execute("SELECT count(*) FROM optimization_cycles").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM allocations").fetchone()[0] == 3


def test_materialize_applies_a_worthwhile_plan(data_dir: Path, small_catalog_path: Path, small_catalog, small_resources) -> None:
    rewrite_catalog(
        small_catalog_path,
        host={"cpu_cores": 4.0, "memory_gb": 6.0},
        allocation={"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0},
    )
    load_simulated(data_dir, small_catalog)
    result = dg.materialize([resource_allocation], resources=small_resources)
    assert result.success
    metadata = result.asset_materializations_for_node("resource_allocation")[0].metadata
    assert metadata["status"].value == "applied" and metadata["applied"].value is True
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert {s for (s,) in conn.execute("SELECT source FROM allocation_state").fetchall()} == {"optimizer"}


def test_failed_blocking_check_fails_the_run_and_leaves_the_plan_unapplied(
    data_dir: Path, small_catalog_path: Path, small_catalog, small_resources
) -> None:
    load_simulated(data_dir, small_catalog, days=3)
    rewrite_catalog(small_catalog_path, host={"memory_gb": 1.0, "reserved": {"cpu_cores": 0.25, "memory_gb": 0.5}}, allocation={"min_net_benefit_usd_per_hour": 0.0, "min_improvement_pct": 0.0})
    result = dg.materialize([resource_allocation], resources=small_resources, raise_on_error=False)
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["solver_status_optimal"].passed
    assert evaluations["solver_status_optimal"].severity == dg.AssetCheckSeverity.ERROR
    assert "sum of min allocations needs" in evaluations["solver_status_optimal"].description
    assert not evaluations["constraints_satisfied"].passed
    plan = json.loads((data_dir / "allocation" / "latest.json").read_text())
    assert plan["status"] == "rejected" and plan["applied"] is False
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert conn.execute("SELECT status, applied FROM optimization_cycles").fetchone() == ("rejected", False)
        assert conn.execute("SELECT count(*) FROM allocation_state WHERE source = 'optimizer'").fetchone()[0] == 0


@pytest.mark.slow
def test_the_job_does_not_import_tensorflow(data_dir: Path, small_catalog_path: Path, small_catalog) -> None:
    load_simulated(data_dir, small_catalog, days=2)
    script = textwrap.dedent(
        f"""
        import sys
        import dagster as dg
        from earnopt_assets.definitions import build_definitions
        from earnopt_assets.resources import resources_for

        defs = build_definitions(resources_for({str(data_dir)!r}, {str(small_catalog_path)!r}))
        result = defs.resolve_job_def("allocation_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
        print("SUCCESS", result.success)
        print("TF", "tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "SUCCESS True" in completed.stdout
    assert "TF False False" in completed.stdout
