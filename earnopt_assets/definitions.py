"""The one Definitions object of the earnopt code location.

Each asset group module under ``earnopt_assets.defs`` exposes plain lists (``assets``, ``asset_checks``,
``jobs``, ``schedules``, ``sensors``); this module only gathers them. Nothing here imports TensorFlow.
"""

import dagster as dg

from earnopt_assets.defs import actuation, allocation, anomalies, forecasting, ingestion
from earnopt_assets.resources import default_resources

GROUP_MODULES = (ingestion, forecasting, anomalies, allocation, actuation)

# Declared so it is RUNNING on a fresh instance: Dagster's implicit one starts STOPPED, and then new telemetry
# refreshes nothing (features, forecasts, anomalies and alerts carry automation conditions) until someone clicks.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[a for m in GROUP_MODULES for a in m.assets],
        asset_checks=[c for m in GROUP_MODULES for c in m.asset_checks],
        jobs=[j for m in GROUP_MODULES for j in m.jobs],
        schedules=[s for m in GROUP_MODULES for s in m.schedules],
        sensors=[automation_sensor, *(s for m in GROUP_MODULES for s in m.sensors)],
        resources=resources if resources is not None else default_resources(),
    )


defs = build_definitions()
