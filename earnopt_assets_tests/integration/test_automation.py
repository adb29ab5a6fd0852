"""Issue #15: a landed telemetry file refreshes features, forecasts, anomalies and alerts, and the next
15-minute tick plans from the new forecast, with no click.

Driven through the same evaluations the daemon performs, on a Dagster instance that records every run:
the real ``landing_sensor`` (its RunRequest runs ``ingestion_job``), then the automation conditions of the
code location evaluated tick after tick with the cursor carried over (what the RUNNING
``default_automation_condition_sensor`` does), each tick's requests materialized, then the real
``allocation_schedule`` tick. No model is trained (forecasts fall back to the statistical baseline), so it
runs in well under a minute.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from earnopt_assets.definitions import automation_sensor, build_definitions
from earnopt_assets.resources import resources_for
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect

END = pd.Timestamp("2026-06-30T23:00")
DAYS = 12
FRESH_HOURS = 6
# Everything a landed file must refresh without a click (earnings_model retrains on its own schedule).
MUST_REFRESH = {"raw_earnings", "earnings_features", "earnings_forecast", "anomalies", "alerts"}
MAX_TICKS = 5


def _scalar(paths: EarnoptPaths, sql: str):
    with connect(paths.warehouse, read_only=True) as conn:
        return conn.execute(sql).fetchone()[0]


def _land(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, keys: set[str]) -> None:
    result = dg.materialize(
        list(defs.assets) + list(defs.asset_checks),
        selection=dg.AssetSelection.assets(*sorted(keys)),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        tags={"dagster/from_automation_condition": "true"},
    )
    failed = [event.step_key for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert not failed, f"automation-requested run of {sorted(keys)} failed in {failed}"


def _requested(defs: dg.Definitions, result) -> set[str]:
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return {key.to_user_string() for key in keys if result.get_num_requested(key)}


def _automation_ticks(defs: dg.Definitions, instance: dg.DagsterInstance, cursor) -> tuple[set[str], object]:
    """Evaluate the automation sensor's target tick after tick, materializing each tick's requests, until a
    tick requests nothing. Returns every asset that was requested and the final cursor."""
    refreshed: set[str] = set()
    for _ in range(MAX_TICKS):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.all(), cursor=cursor,
            evaluation_time=datetime.now(UTC),
        )
        cursor = result.cursor
        requested = _requested(defs, result)
        if not requested:
            return refreshed, cursor
        refreshed |= requested
        _materialize(defs, instance, requested)
    raise AssertionError(f"automation still requesting after {MAX_TICKS} ticks: {sorted(refreshed)}")


def _ingest_landed_files(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """One landing_sensor tick and the ingestion_job run it requests, as the daemon would launch it."""
    from earnopt_assets.defs.ingestion import landing_sensor

    sensor_result = landing_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    [request] = sensor_result.run_requests
    job = defs.resolve_job_def("ingestion_job")
    assert job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False).success


@pytest.fixture
def settled(data_dir: Path, small_catalog_path: Path, small_catalog):
    """A fresh instance whose history arrived through the same path: landing -> sensor -> automation."""
    paths = EarnoptPaths(data_dir).ensure()
    telemetry = simulate(small_catalog, days=DAYS, seed=5, end=END).telemetry
    defs = build_definitions(resources_for(data_dir, small_catalog_path))
    instance = dg.DagsterInstance.ephemeral()
    _, cursor = _automation_ticks(defs, instance, None)  # the daemon's first tick, on an empty instance
    _land(telemetry[telemetry["ts"] <= END - pd.Timedelta(hours=FRESH_HOURS)], paths.landing / "history.parquet")
    _ingest_landed_files(defs, instance)
    refreshed, cursor = _automation_ticks(defs, instance, cursor)
    assert MUST_REFRESH - {"raw_earnings", "earnings_features"} <= refreshed, sorted(refreshed)
    return defs, instance, cursor, paths, telemetry


def test_the_automation_sensor_targets_every_asset_and_runs_by_default() -> None:
    assert automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert automation_sensor.asset_selection == dg.AssetSelection.all()


def test_landed_file_refreshes_everything_downstream_without_a_click(settled) -> None:
    from earnopt_assets.defs.allocation import allocation_schedule

    defs, instance, cursor, paths, telemetry = settled
    forecast_last = _scalar(paths, "SELECT max(target_ts) FROM forecasts")

    # A collector drops a file: the landing sensor's tick asks for ingestion_job, which the daemon launches.
    _land(telemetry[telemetry["ts"] > END - pd.Timedelta(hours=FRESH_HOURS)], paths.landing / "fresh.parquet")
    _ingest_landed_files(defs, instance)

    # The automation sensor's ticks: everything downstream of the new telemetry is requested and refreshed.
    refreshed, _ = _automation_ticks(defs, instance, cursor)
    assert MUST_REFRESH - {"raw_earnings", "earnings_features"} <= refreshed, sorted(refreshed)
    for key in MUST_REFRESH:
        record = instance.get_latest_materialization_event(dg.AssetKey(key))
        assert record is not None, key
    assert _scalar(paths, "SELECT max(ts) FROM raw_earnings") == END
    assert _scalar(paths, "SELECT max(target_ts) FROM forecasts") == forecast_last + pd.Timedelta(hours=FRESH_HOURS)

    # The next 15-minute tick plans from the refreshed forecasts.
    [schedule_request] = allocation_schedule.evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC))
    ).run_requests
    allocation = defs.resolve_job_def("allocation_job").execute_in_process(
        instance=instance, tags=schedule_request.tags, raise_on_error=False
    )
    assert allocation.success
    assert json.loads(paths.latest_plan.read_text())["allocations"]
    planned = instance.get_latest_materialization_event(dg.AssetKey("resource_allocation"))
    forecast = instance.get_latest_materialization_event(dg.AssetKey("earnings_forecast"))
    assert planned.timestamp > forecast.timestamp
