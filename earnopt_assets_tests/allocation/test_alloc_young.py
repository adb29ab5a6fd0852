"""The allocation always runs (#17 §4): from the first hours of telemetry, with no forecast, no anomaly
model and no alerts yet, the 15-minute job produces a plan from degraded inputs and says which."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from earnopt_assets.definitions import build_definitions
from earnopt_assets_tests.allocation.test_alloc_job import load_simulated


def _plan_metadata(data_dir: Path, small_resources) -> dict:
    defs = build_definitions(resources=small_resources)
    result = defs.resolve_job_def("allocation_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert (data_dir / "allocation" / "latest.json").exists()  # the plan file, from the first tick
    return result.asset_materializations_for_node("resource_allocation")[0].metadata


def test_plan_from_the_first_day_without_forecasts_or_alerts(data_dir: Path, small_catalog_path: Path, small_catalog, small_resources) -> None:
    load_simulated(data_dir, small_catalog, days=1)
    metadata = _plan_metadata(data_dir, small_resources)
    assert set(metadata["forecast_sources"].value.values()) == {"seasonal_naive_24_level_blend"}  # 24 h: naive + level
    degraded = metadata["degraded_inputs"].value
    assert "alerts have not run yet" in degraded and "no degraded caps" in degraded
    assert all(f"- {name}: forecast seasonal naive 24" in degraded for name in small_catalog.enabled_names)


def test_plan_from_priors_before_any_telemetry(data_dir: Path, small_catalog_path: Path, small_catalog, small_resources) -> None:
    metadata = _plan_metadata(data_dir, small_resources)
    assert set(metadata["forecast_sources"].value.values()) == {"prior"}
    assert metadata["decision"].value == "keep"  # priors with their wide intervals never pay a move
