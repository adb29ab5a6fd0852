"""A real ``dg.materialize`` of anomaly_model -> anomalies -> alerts on a DuckDB file in a tmp dir, with
alert delivery to a real local webhook receiver."""

from __future__ import annotations

import dagster as dg
import duckdb as duckdb_lib
import pandas as pd
import pytest
import yaml

from earnopt_assets.anomaly.detector import AnomalyDetector
from earnopt_assets.anomaly.store import read_degraded
from earnopt_assets.defs.anomalies import alerts, anomalies, anomaly_model
from earnopt_assets.ingestion.features import build_feature_table
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.warehouse import TELEMETRY_COLUMNS
from earnopt_assets_tests.anomaly.helpers import Receiver

ASSETS = [anomaly_model, anomalies, alerts]


def write_warehouse(data_dir, catalog, telemetry: pd.DataFrame) -> None:
    """What the ingestion assets leave behind: raw_earnings and earnings_features."""
    features, _ = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    conn = duckdb_lib.connect(str(EarnoptPaths(data_dir).warehouse))
    try:
        ensure_raw_earnings(conn)
        conn.execute("DELETE FROM raw_earnings")
        frame = telemetry[list(TELEMETRY_COLUMNS)].copy()
        conn.register("t", frame)
        conn.execute(f"INSERT INTO raw_earnings ({', '.join(TELEMETRY_COLUMNS)}) SELECT * FROM t")
        conn.unregister("t")
        conn.register("f", features)
        conn.execute("CREATE OR REPLACE TABLE earnings_features AS SELECT * FROM f")
        conn.unregister("f")
    finally:
        conn.close()


def query(data_dir, sql: str, params=None):
    conn = duckdb_lib.connect(str(EarnoptPaths(data_dir).warehouse), read_only=True)
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


def set_alert_settings(catalog_path, **settings) -> None:
    raw = yaml.safe_load(catalog_path.read_text())
    raw.setdefault("alerts", {}).update(settings)
    catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(autouse=True)
def replayed_history(small_catalog_path):
    """These tests replay a past fortnight: wall-clock silence (alerts.silent_lag_hours) is off here and
    tested on data ending now in test_silent_protocol_alerts_and_degrades."""
    set_alert_settings(small_catalog_path, silent_lag_hours=0)


@pytest.fixture
def telemetry(small_catalog):
    from earnopt_assets.simulator import simulate

    sim = simulate(small_catalog, days=14, seed=2, end="2026-01-01T00:00", inject_anomalies=False)
    frame = sim.telemetry.copy()
    # storj fails hard in its last 3 hours: a critical connection-failure alert that degrades it.
    last3 = (frame["protocol"] == "storj") & (frame["ts"] > frame["ts"].max() - pd.Timedelta(hours=3))
    frame.loc[last3, "connection_failures"] = 40
    # honeygain failed four days ago: history that a first run records but must not send.
    old = (frame["protocol"] == "honeygain") & frame["ts"].between(frame["ts"].max() - pd.Timedelta(hours=100), frame["ts"].max() - pd.Timedelta(hours=99))
    frame.loc[old, "connection_failures"] = 30
    return frame


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def materialize(resources):
    result = dg.materialize(ASSETS, resources=resources, raise_on_error=False)
    assert result.success
    return result


def metadata(result, key: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.slow
def test_materialize_anomaly_assets_end_to_end(small_catalog_path, small_catalog, small_resources, data_dir, telemetry, receiver):
    set_alert_settings(small_catalog_path, channels=[{"kind": "webhook", "url": receiver.url, "min_severity": "warning"}],
                       delivery_timeout_seconds=1.0, delivery_backoff_seconds=0.05)
    write_warehouse(data_dir, small_catalog, telemetry)

    result = materialize(small_resources)
    model_meta = metadata(result, "anomaly_model")
    assert model_meta["training_rows"] > 450  # 14 days x 3 series minus the first week and alerted hours
    assert model_meta["contamination"] == small_catalog.alerts.contamination
    assert "score distribution" in model_meta["score_distribution"]  # the embedded histogram
    assert AnomalyDetector.load(EarnoptPaths(data_dir).models / "anomaly").version == model_meta["version"]

    scored = query(data_dir, "SELECT count(*), count(DISTINCT protocol) FROM anomalies")[0]
    assert scored == (3 * small_catalog.alerts.score_hours, 3)

    alert_meta = metadata(result, "alerts")
    changes = {r.data["protocol"]: r.data for r in alert_meta["state_changes"].records}
    assert changes["storj"]["from_state"] == "untracked" and changes["storj"]["to_state"] == "degraded"
    assert [c.name for c in alert_meta["state_changes"].schema.columns] == ["protocol", "device", "from_state", "to_state", "reason", "alert_id", "at_utc"]
    assert alert_meta["degraded_protocols"] == "storj"
    assert "sent" in alert_meta["delivery"] and "webhook:http://127.0.0.1:" in alert_meta["delivery"]
    assert all(r.data["outcome"] == "sent" for r in alert_meta["deliveries"].records)
    storj = query(data_dir, "SELECT severity, status, notify_status FROM alerts WHERE protocol = 'storj' AND rule = 'connection_failures' AND notify_status <> 'backfill' ORDER BY hour")
    assert [s for s, _, _ in storj] == ["critical"] * 3
    assert [n for _, _, n in storj] == ["sent", "cooldown", "cooldown"]  # one notification for the fault
    assert {st for _, st, _ in storj} == {"open"}
    conn = duckdb_lib.connect(str(EarnoptPaths(data_dir).warehouse), read_only=True)
    try:
        assert read_degraded(conn, "local") == {"storj"}
    finally:
        conn.close()
    bodies = receiver.json_bodies()
    assert any(b["protocol"] == "storj" and b["severity"] == "critical" for b in bodies)
    assert alert_meta["deliveries_sent"] == len(bodies) >= 1
    deliveries = query(data_dir, "SELECT ok, status_code FROM alert_deliveries")
    assert deliveries and all(ok and code == 200 for ok, code in deliveries)

    history = query(data_dir, "SELECT notify_status, status FROM alerts WHERE protocol = 'honeygain' AND rule = 'connection_failures'")
    assert history == [("backfill", "resolved")] * 2
    assert alert_meta["first_run_backfill"] is True and alert_meta["backfilled_history"] >= 2
    assert not any(b["protocol"] == "honeygain" for b in bodies)

    # Re-running over the same hours records nothing twice and sends nothing new.
    sent_before = len(receiver.requests)
    again = materialize(small_resources)
    again_meta = metadata(again, "alerts")
    assert again_meta["new_alerts"] == 0 and again_meta["first_run_backfill"] is False
    assert again_meta["duplicates_skipped"] == again_meta["candidates"] >= 3
    assert len(receiver.requests) == sent_before

    # storj recovers: four normal hours later its alert resolves and it is healthy again.
    last = telemetry.loc[telemetry["ts"] == telemetry["ts"].max()].copy()
    recovered = [last.assign(ts=last["ts"] + pd.Timedelta(hours=h), connection_failures=0) for h in range(1, 5)]
    write_warehouse(data_dir, small_catalog, pd.concat([telemetry, *recovered], ignore_index=True))
    materialize(small_resources)
    statuses = query(data_dir, "SELECT DISTINCT status FROM alerts WHERE protocol = 'storj' AND rule = 'connection_failures'")
    assert statuses == [("resolved",)]
    history = query(data_dir, "SELECT from_state, to_state FROM protocol_state_history WHERE protocol = 'storj' ORDER BY changed_at")
    assert history == [(None, "degraded"), ("degraded", "healthy")]


@pytest.mark.slow
def test_hanging_receiver_never_fails_the_run(small_catalog_path, small_catalog, small_resources, data_dir, telemetry, receiver):
    receiver.default = "hang"
    set_alert_settings(small_catalog_path, channels=[{"kind": "ntfy", "url": receiver.url, "min_severity": "info"}],
                       delivery_timeout_seconds=0.3, delivery_budget_seconds=1.0, delivery_backoff_seconds=0.05)
    write_warehouse(data_dir, small_catalog, telemetry)
    result = materialize(small_resources)
    alert_meta = metadata(result, "alerts")
    assert alert_meta["deliveries_failed"] >= 1 and alert_meta["deliveries_sent"] == 0
    errors = query(data_dir, "SELECT DISTINCT error FROM alert_deliveries")
    assert any("timeout" in e for (e,) in errors)
    assert any(e.startswith("skipped: channel failed earlier") for (e,) in errors) or alert_meta["notified"] == 1
    assert query(data_dir, "SELECT count(*) FROM alerts WHERE notify_status = 'failed'")[0][0] == alert_meta["deliveries_failed"]


def test_anomaly_model_excludes_alerted_hours_and_fails_clearly_without_telemetry(small_resources, small_catalog, data_dir, telemetry):
    result = dg.materialize([anomaly_model], resources=small_resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "raw_earnings" in failure.event_specific_data.error.message

    write_warehouse(data_dir, small_catalog, telemetry)
    first = metadata(dg.materialize([anomaly_model], resources=small_resources), "anomaly_model")
    assert first["excluded_alert_rows"] == 0
    materialize(small_resources)  # records the alerts (the rules do not wait for the model, #17)
    second = metadata(dg.materialize([anomaly_model], resources=small_resources), "anomaly_model")
    alerted = query(data_dir, "SELECT count(DISTINCT (protocol, hour)) FROM alerts")[0][0]
    assert second["excluded_alert_rows"] == alerted > 0
    assert second["training_rows"] == first["training_rows"] - alerted


def test_automation_triggers_every_anomaly_asset():
    """No job: the automation sensor runs the three assets when telemetry updates, and alerts also hourly."""
    from earnopt_assets.definitions import defs

    assert not any(j.name == "anomaly_job" for j in defs.jobs or [])
    graph = defs.resolve_asset_graph()
    for asset in ASSETS:
        condition = asset.automation_conditions_by_key[asset.key]
        assert condition is not None
        assert "label='eager'" in repr(condition) or condition.get_label() == "eager"
        assert asset.op.pool == "duckdb_warehouse"
    assert dg.AssetKey("earnings_features") in graph.get(dg.AssetKey("anomaly_model")).parent_keys
    assert dg.AssetKey("raw_earnings") in graph.get(dg.AssetKey("anomalies")).parent_keys
    alerts_condition = alerts.automation_conditions_by_key[alerts.key]
    assert "cron_schedule='20 * * * *'" in repr(alerts_condition)


def test_automation_refreshes_after_new_telemetry_and_alerts_run_hourly():
    """Evaluated for real: new telemetry requests all three assets in one tick; an hour without telemetry
    still requests ``alerts`` (so silence can be noticed) and nothing else."""
    from datetime import datetime, timedelta

    upstream = [dg.AssetSpec("raw_earnings"), dg.AssetSpec("earnings_features", deps=["raw_earnings"])]
    definitions = dg.Definitions(
        assets=[*upstream, *ASSETS],
        resources={"duckdb": dg.ResourceDefinition.none_resource(), "earnopt": dg.ResourceDefinition.none_resource()},
    )
    instance = dg.DagsterInstance.ephemeral()
    t0 = datetime(2026, 1, 1, 0, 5)

    def requested(result) -> set[str]:
        return {key for key in ("anomaly_model", "anomalies", "alerts") if result.get_num_requested(dg.AssetKey(key))}

    first = dg.evaluate_automation_conditions(defs=definitions, instance=instance, evaluation_time=t0)
    assert requested(first) == set()
    # Fresh install, nothing upstream yet: the hourly tick does not start a run doomed to fail.
    fresh = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=first.cursor,
                                              evaluation_time=t0 + timedelta(minutes=20))
    assert requested(fresh) == set()
    for key in ("raw_earnings", "earnings_features"):
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    landed = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=fresh.cursor,
                                               evaluation_time=t0 + timedelta(minutes=21))
    assert requested(landed) == {"anomaly_model", "anomalies", "alerts"}
    for key in ("anomaly_model", "anomalies", "alerts"):
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    quiet = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=landed.cursor,
                                              evaluation_time=t0 + timedelta(minutes=22))
    assert requested(quiet) == set()
    hourly = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=quiet.cursor,
                                               evaluation_time=t0 + timedelta(hours=1, minutes=20))
    assert requested(hourly) == {"alerts"}


def test_misconfigured_channel_env_is_reported_not_fatal(small_resources, small_catalog, data_dir, telemetry, monkeypatch):
    monkeypatch.setenv("EARNOPT_NTFY_URL", "not-a-url")
    write_warehouse(data_dir, small_catalog, telemetry)
    result = materialize(small_resources)
    meta = metadata(result, "alerts")
    assert "EARNOPT_NTFY_URL" in meta["channel_config_error"] and "not-a-url" not in meta["channel_config_error"]
    assert meta["delivery"].startswith("alert channels misconfigured, nothing sent")
    assert meta["deliveries_no_channel"] == meta["notified"] >= 1
    assert query(data_dir, "SELECT count(*) FROM alerts WHERE protocol = 'storj'")[0][0] >= 3


def test_silent_protocol_alerts_and_degrades(small_catalog_path, small_catalog, small_resources, data_dir):
    """Against the real wall clock: telemetry up to the current hour, except akash, silent for 5 hours."""
    from earnopt_assets.simulator import simulate

    set_alert_settings(small_catalog_path, silent_lag_hours=3)
    now_hour = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h")
    frame = simulate(small_catalog, days=10, seed=3, end=now_hour, inject_anomalies=False).telemetry
    frame = frame.loc[~((frame["protocol"] == "akash") & (frame["ts"] > now_hour - pd.Timedelta(hours=5)))]
    write_warehouse(data_dir, small_catalog, frame)

    meta = metadata(materialize(small_resources), "alerts")
    silent = query(data_dir, "SELECT protocol, severity, status, notify_status FROM alerts WHERE rule = 'silent'")
    assert silent == [("akash", "critical", "open", "no_channel")]
    assert "akash" in meta["degraded_protocols"].split(", ")
    assert any(r.data["rule"] == "silent" and r.data["degrades_protocol"] for r in meta["new_alert_list"].records)
    assert meta["delivery"].startswith("no alert channel configured: the alert went nowhere")
