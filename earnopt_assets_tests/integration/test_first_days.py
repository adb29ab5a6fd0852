"""Day one (#17 §6): the real Dagster pipeline (``earnopt demo``'s stages on a persistent instance) on 6 hours,
2 days and 10 days of telemetry: no run fails, a plan exists, and every forecast ``source`` is what the
history allows (prior -> recent_level -> seasonal_naive_24 -> statistical candidates)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from earnopt_assets.catalog import load_catalog
from earnopt_assets.forecasting.candidates import STATISTICAL_NAMES
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets_tests.integration.demo_process import run_demo_process

TINY = {"epochs": 1, "lstm_units_1": 4, "lstm_units_2": 2}
ALLOWED = {
    6: {"recent_level"},
    48: {"seasonal_naive_24_level_blend"},
    240: set(STATISTICAL_NAMES),
}

pytestmark = pytest.mark.slow


def land_recent_telemetry(data_dir: Path, catalog, hours: int) -> None:
    """The last ``hours`` hours up to the current hour, as a collector that just started would leave them."""
    from earnopt_assets.simulator import simulate

    now_hour = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h")
    frame = simulate(catalog, days=-(-hours // 24), seed=11, end=now_hour, inject_anomalies=False).telemetry
    frame = frame.loc[frame["ts"] > now_hour - pd.Timedelta(hours=hours)]
    landing = EarnoptPaths(data_dir).landing
    landing.mkdir(parents=True, exist_ok=True)
    for protocol, part in frame.groupby("protocol"):
        part.reset_index(drop=True).to_parquet(landing / f"young_{protocol}.parquet")


@pytest.mark.parametrize("hours", sorted(ALLOWED))
def test_pipeline_is_green_with_a_plan_on_young_history(hours: int, data_dir: Path, small_catalog_path: Path, dagster_home: Path) -> None:
    catalog = load_catalog(small_catalog_path)
    land_recent_telemetry(data_dir, catalog, hours)

    code, out = run_demo_process(data_dir, model_config=TINY)
    assert code == 0, out
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert runs and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), [(r.run_id, r.status) for r in runs]

    paths = EarnoptPaths(data_dir)
    assert paths.latest_plan.exists()
    with duckdb.connect(str(paths.warehouse), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM optimization_cycles").fetchone()[0] >= 1
        sources = dict(conn.execute("SELECT protocol, any_value(source) FROM forecasts GROUP BY protocol").fetchall())
        bounds = conn.execute("SELECT count(*) FROM forecasts WHERE lower_80 IS NULL OR upper_95 IS NULL").fetchone()[0]
    assert set(sources) == set(catalog.enabled_names)
    assert set(sources.values()) <= ALLOWED[hours], sources
    assert bounds == 0, "every step carries its intervals"
    # every earnings_model partition completed without training and says how far along it is
    warming = instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=dg.AssetKey("earnings_model")))
    texts = [str(r.asset_materialization.metadata["warming_up"].value) for r in warming]
    assert len(texts) == len(catalog.enabled_names) and all(t.startswith("warming up: ") and t.endswith(" of 25 days") for t in texts), texts
