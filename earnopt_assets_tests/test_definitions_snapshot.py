"""The code location's public surface — asset keys and groups, asset checks, jobs, schedules (cron, default
status) and sensors (default status) — equals the checked-in ``definitions_snapshot.json``.

Schedules, sensors and asset names are what operators, the API (job names) and run history refer to, so a
rename must be deliberate. To change the surface on purpose, regenerate the snapshot and commit it with the
change::

    EARNOPT_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest earnopt_assets_tests/test_definitions_snapshot.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
UPDATE_ENV = "EARNOPT_UPDATE_SNAPSHOT"


def definitions_surface(defs: dg.Definitions) -> dict:
    """The names a rename would break, as plain sorted JSON-ready data."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitioned": node.partitions_def is not None,
            "automation_condition": node.automation_condition is not None,
        }
    checks = sorted(f"{check.asset_key.to_user_string()}:{check.name}" for check in graph.asset_check_keys)
    return {
        "assets": dict(sorted(assets.items())),
        "asset_checks": checks,
        "jobs": sorted(job.name for job in repo.get_all_jobs() if not job.name.startswith("__")),
        "schedules": {
            schedule.name: {"cron": schedule.cron_schedule, "timezone": schedule.execution_timezone,
                            "default_status": schedule.default_status.value}
            for schedule in sorted(repo.schedule_defs, key=lambda s: s.name)
        },
        "sensors": {
            sensor.name: {"type": sensor.sensor_type.value, "default_status": sensor.default_status.value}
            for sensor in sorted(repo.sensor_defs, key=lambda s: s.name)
        },
    }


def _dump(surface: dict) -> str:
    return json.dumps(surface, indent=2, sort_keys=False) + "\n"


def test_definitions_match_the_checked_in_snapshot() -> None:
    from earnopt_assets.definitions import defs

    current = _dump(definitions_surface(defs))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(current)
        return
    expected = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if current != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), current.splitlines(True),
                                            "definitions_snapshot.json (checked in)", "definitions (now)"))
        raise AssertionError(
            "The code location's assets/checks/jobs/schedules/sensors changed. If this is deliberate, run\n"
            f"    {UPDATE_ENV}=1 .venv/bin/python -m pytest earnopt_assets_tests/test_definitions_snapshot.py\n"
            "and commit earnopt_assets_tests/definitions_snapshot.json with the change.\n\n" + diff
        )


def test_every_schedule_and_sensor_runs_on_a_fresh_instance() -> None:
    """Issue #15: what the README promises runs without a click in the UI."""
    from earnopt_assets.definitions import defs

    surface = definitions_surface(defs)
    stopped = [name for kind in ("schedules", "sensors") for name, spec in surface[kind].items()
               if spec["default_status"] != "RUNNING"]
    assert not stopped, f"set default_status=...RUNNING in code for: {', '.join(stopped)}"
    assert "default_automation_condition_sensor" in surface["sensors"]
