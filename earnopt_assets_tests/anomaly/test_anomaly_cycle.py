"""The anomaly cycle as one domain function on a real DuckDB file: store transactions, state consistent with
the alerts of the same run, plain-words delivery metadata, UI tables without Python reprs, and secrets
redacted from tables and logs."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
import pytest

from earnopt_assets.anomaly import store
from earnopt_assets.anomaly.cycle import NO_CHANNEL_HINT, run_anomaly_cycle
from earnopt_assets.anomaly.notify import Channel, Notifier, redact_text, redact_url
from earnopt_assets.anomaly.rules import DEGRADING_RULES, make_alert
from earnopt_assets.catalog import AlertSettings
from earnopt_assets.defs.render import anomaly_cycle_metadata
from earnopt_assets_tests.anomaly.helpers import Receiver

T0 = datetime(2026, 1, 1)
# The simulated telemetry ends at T0 00:00; the wall clock of these cycles is an hour later.
NOW = T0 + timedelta(hours=1)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def open_connection(db_path):
    @contextlib.contextmanager
    def opener():
        conn = duckdb.connect(str(db_path))
        try:
            yield conn
        finally:
            conn.close()

    return opener


def query(db_path, sql, params=None):
    conn = duckdb.connect(str(db_path), read_only=True)
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


@pytest.fixture
def telemetry(small_catalog):
    """Two weeks of simulated telemetry; storj fails hard in its last 3 hours (critical, open), akash
    failed hard 10 hours before the end (critical, but quiet since: resolved within the same run)."""
    from earnopt_assets.simulator import simulate

    frame = simulate(small_catalog, days=14, seed=2, end="2026-01-01T00:00", inject_anomalies=False).telemetry.copy()
    newest = frame["ts"].max()
    frame.loc[(frame["protocol"] == "storj") & (frame["ts"] > newest - pd.Timedelta(hours=3)), "connection_failures"] = 40
    frame.loc[(frame["protocol"] == "akash") & (frame["ts"] == newest - pd.Timedelta(hours=10)), "connection_failures"] = 40
    return frame


# ------------------------------------------------------------------------------------------- store


def test_transaction_rolls_back_everything_on_error(db_path, open_connection):
    alert = make_alert("local", "storj", "connection_failures", "critical", T0, "boom", {})
    with open_connection() as conn:
        store.ensure_tables(conn)
        with pytest.raises(RuntimeError), store.transaction(conn):
            store.record_alerts(conn, [alert], {"local": T0}, AlertSettings())
            store.update_protocol_state(conn, "local", ["storj"], now=T0)
            raise RuntimeError("crash between the writes")
    assert query(db_path, "SELECT count(*) FROM alerts")[0][0] == 0
    assert query(db_path, "SELECT count(*) FROM protocol_state")[0][0] == 0


def test_record_evaluation_state_follows_the_alerts_of_the_same_run(db_path, open_connection):
    alerts = [
        make_alert("local", "storj", "connection_failures", "critical", T0 + timedelta(hours=5), "storj fails", {}),
        make_alert("local", "akash", "earnings_drop", "critical", T0, "akash dropped", {}),  # quiet 5 h: resolves
        make_alert("local", "honeygain", "resource_usage", "critical", T0 + timedelta(hours=5), "cpu", {}),  # does not degrade
    ]
    with open_connection() as conn:
        record = store.record_evaluation(conn, alerts, {"local": T0 + timedelta(hours=5)}, AlertSettings(), ["local"],
                                         ["storj", "akash", "honeygain"], now=T0 + timedelta(hours=5))
    states = {p: row["state"] for (_, p), row in record.states.items()}
    assert states == {"storj": "degraded", "akash": "healthy", "honeygain": "healthy"}
    assert record.alert_status == {a.id: s for a, s in zip(alerts, ["open", "resolved", "open"])}
    assert "resolved at 2026-01-01 03:00" in record.states[("local", "akash")]["reason"]
    by_rule = record.open_by_rule.set_index(["rule", "severity"])["open_alerts_count"].to_dict()
    assert by_rule == {("connection_failures", "critical"): 1, ("resource_usage", "critical"): 1}
    with open_connection() as conn:
        assert store.read_degraded(conn, "local") == {"storj"}


# ------------------------------------------------------------------------------------------ cycle


def _text_of(value) -> str:
    if isinstance(value, dg.TableMetadataValue):
        return " ".join(str(v) for record in value.records for v in record.data.values() if v is not None)
    return str(getattr(value, "value", value))


def test_cycle_without_channel_says_where_the_alerts_went(small_catalog, telemetry, db_path, open_connection):
    messages: list[str] = []
    result = run_anomaly_cycle(open_connection, small_catalog, telemetry, None, first_run=True, environ={}, now=NOW,
                               log=messages.append)

    # The state agrees with the alerts of this run: an open critical degrading alert = degraded.
    open_degrading = {
        p for (p,) in query(db_path, f"""SELECT DISTINCT protocol FROM alerts WHERE severity = 'critical' AND status = 'open'
                                         AND rule IN ({', '.join("'" + r + "'" for r in DEGRADING_RULES)})""")
    }
    degraded = {p for (_, p), row in result.states.items() if row["state"] == "degraded"}
    assert open_degrading == degraded == {"storj"}
    akash_new = [d for d in result.decisions if d.alert.protocol == "akash" and d.alert.severity == "critical" and d.reason != "backfill"]
    assert akash_new and all(result.alert_status[d.alert.id] == "resolved" for d in akash_new)
    assert "resolved at" in result.states[("local", "akash")]["reason"]

    assert result.notified and not result.channels
    assert result.delivery_counts["no_channel"] == len(result.notified)
    assert result.delivery_note.startswith(NO_CHANNEL_HINT)
    assert any(NO_CHANNEL_HINT in m for m in messages)

    meta = anomaly_cycle_metadata(result)
    assert "EARNOPT_SLACK_WEBHOOK_URL" in meta["delivery"].value and "alerts.channels" in meta["delivery"].value
    expected_columns = {
        "state_changes": ["protocol", "device", "from_state", "to_state", "reason", "alert_id", "at_utc"],
        "open_alerts_by_rule": ["rule", "severity", "open_alerts_count", "protocols", "oldest_hour_utc", "newest_hour_utc"],
        "deliveries": ["alert_id", "protocol", "rule", "severity", "channel", "attempt", "outcome", "http_status", "elapsed_ms", "error"],
        "new_alert_list": ["hour_utc", "protocol", "rule", "severity", "status", "degrades_protocol", "notify", "alert_id", "message"],
        "protocol_states": ["protocol", "device", "state", "since_utc", "alert_id", "reason"],
    }
    for key, columns in expected_columns.items():
        assert isinstance(meta[key], dg.TableMetadataValue), key
        assert [c.name for c in meta[key].schema.columns] == columns, key
    changes = {r.data["protocol"]: r.data for r in meta["state_changes"].records}
    assert changes["storj"]["from_state"] == "untracked" and changes["storj"]["to_state"] == "degraded"
    assert {r.data["outcome"] for r in meta["deliveries"].records} == {"not sent: no alert channel configured"}
    for key, value in meta.items():
        text = _text_of(value)
        for bad in ("None", "nan", "NaT", "[]", "{'"):
            assert bad not in text.split() and f"{bad}," not in text, (key, bad, text[:200])


def test_second_cycle_records_nothing_twice(small_catalog, telemetry, open_connection):
    run_anomaly_cycle(open_connection, small_catalog, telemetry, None, first_run=True, environ={}, now=NOW)
    again = run_anomaly_cycle(open_connection, small_catalog, telemetry, None, first_run=False, environ={}, now=NOW)
    assert again.record.new == [] and again.notified == [] and again.state_changes == []
    assert again.delivery_note.startswith("nothing to send")


# ------------------------------------------------------------------------------------------ secrets


SLACK = "https://hooks.slack.com/services/T0000SECRET/B0000SECRET/xoxSECRETtoken123"
DISCORD = "https://discord.com/api/webhooks/123456789/DISCORDsecretTOKEN"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (SLACK, "https://hooks.slack.com/***"),
        (DISCORD, "https://discord.com/***"),
        ("http://alice:hunter2@127.0.0.1:8080/hook?token=abc123", "http://127.0.0.1:8080/***"),
        ("https://ntfy.sh/my-private-topic", "https://ntfy.sh/***"),
        ("https://example.org", "https://example.org"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_text(f"failed posting to {url}: 500") == f"failed posting to {expected}: 500"


def test_channel_target_has_no_credentials_or_tokens():
    for url in (SLACK, DISCORD, "http://alice:hunter2@example.org:81/x?token=t0k3n"):
        target = Channel("webhook", url).target
        for secret in ("SECRET", "secret", "hunter2", "alice", "t0k3n"):
            assert secret not in target


def test_misconfigured_env_value_is_not_echoed():
    from earnopt_assets.anomaly.notify import channels_from_settings

    with pytest.raises(ValueError) as info:
        channels_from_settings(AlertSettings(), {"EARNOPT_SLACK_WEBHOOK_URL": "hooks.slack.com/services/T1/B2/xoxSECRETtoken"})
    assert "xoxSECRETtoken" not in str(info.value) and "EARNOPT_SLACK_WEBHOOK_URL" in str(info.value)


def test_secrets_never_reach_deliveries_table_or_logs(small_catalog, telemetry, db_path, open_connection):
    """A webhook URL with user:password@, a path token and a query token; one receiver answers 500 with the
    URL echoed back, one channel points at a closed port: nothing secret is stored or logged."""
    receiver = Receiver(default=500).start()
    try:
        port = receiver.server.server_address[1]
        failing = f"http://alice:hunter2@127.0.0.1:{port}/hook/pathSECRETtoken?token=querySECRET"
        dead = "http://bob:sw0rdfish@127.0.0.1:9/services/T1/B2/deadSECRETtoken"
        catalog = small_catalog.model_copy(update={"alerts": small_catalog.alerts.model_copy(update={
            "channels": [], "delivery_timeout_seconds": 0.5, "delivery_backoff_seconds": 0.01, "delivery_attempts": 2})})
        messages: list[str] = []
        result = run_anomaly_cycle(open_connection, catalog, telemetry, None, first_run=True, log=messages.append, now=NOW,
                                   environ={"EARNOPT_WEBHOOK_URL": failing, "EARNOPT_SLACK_WEBHOOK_URL": dead})
    finally:
        receiver.stop()
    assert receiver.requests, "the failing receiver was really called"
    assert receiver.requests[0]["path"] == "/hook/pathSECRETtoken?token=querySECRET"
    assert result.delivery_counts["failed"] >= 1
    rows = query(db_path, "SELECT channel, coalesce(error, '') FROM alert_deliveries")
    assert rows
    everything = " ".join(" ".join(r) for r in rows) + " ".join(messages) + " ".join(result.channels)
    everything += " ".join(_text_of(v) for v in anomaly_cycle_metadata(result).values())
    for secret in ("hunter2", "alice", "pathSECRETtoken", "querySECRET", "sw0rdfish", "deadSECRETtoken", "bob:"):
        assert secret not in everything, secret
    assert "webhook:http://127.0.0.1:" in everything


def test_store_redacts_what_a_caller_did_not(db_path, open_connection):
    from earnopt_assets.anomaly.notify import DeliveryAttempt

    alert = make_alert("local", "storj", "connection_failures", "critical", T0, "boom", {})
    attempt = DeliveryAttempt(alert.id, "webhook:https://u:pw@example.org/x?token=abc", 1, False, 500,
                              "HTTP 500 from https://u:pw@example.org/x?token=abc", 1.0)
    with open_connection() as conn:
        store.record_alerts(conn, [alert], {"local": T0}, AlertSettings())
        store.record_deliveries(conn, [alert], [attempt])
    [(channel, error)] = query(db_path, "SELECT channel, error FROM alert_deliveries")
    assert "pw" not in channel + error and "token=abc" not in channel + error
    assert "https://example.org/***" in error


def test_notifier_logs_are_redacted():
    logged: list[str] = []
    notifier = Notifier([Channel("webhook", "http://carol:letmein@127.0.0.1:9/hook/t0k3nPath")], timeout_seconds=0.2,
                        attempts=1, budget_seconds=1.0, log=logged.append)
    with notifier:
        attempts = notifier.deliver(make_alert("local", "storj", "connection_failures", "critical", T0, "boom", {}))
    assert attempts and not attempts[0].ok
    text = " ".join(logged) + " ".join(a.channel + (a.error or "") for a in attempts)
    assert "letmein" not in text and "carol" not in text and "t0k3nPath" not in text


# ------------------------------------------------------------------------------ silence is an alert


def test_silent_rule_threshold_is_exclusive_and_zero_turns_it_off():
    from earnopt_assets.anomaly.rules import silent_alerts

    last_seen = pd.DataFrame({"device": ["local", "local"], "protocol": ["storj", "akash"],
                              "latest_ts": [T0, T0 - timedelta(minutes=1)]})
    now = T0 + timedelta(hours=3)
    [alert] = silent_alerts(last_seen, now, 3.0)  # storj exactly 3 h behind: not yet
    assert (alert.protocol, alert.rule, alert.severity, alert.hour) == ("akash", "silent", "critical", now)
    assert "3.0 h" in alert.message and alert.evidence["lag_threshold_hours"] == 3.0
    assert silent_alerts(last_seen, now, 0) == []


def test_silent_protocol_fires_degrades_cools_down_and_resolves(small_catalog, telemetry, db_path, open_connection):
    newest = telemetry["ts"].max()
    quiet = telemetry.loc[~((telemetry["protocol"] == "akash") & (telemetry["ts"] > newest - pd.Timedelta(hours=5)))]

    first = run_anomaly_cycle(open_connection, small_catalog, quiet, None, first_run=True, environ={}, now=NOW)
    silent = [d for d in first.decisions if d.alert.rule == "silent"]
    assert [(d.alert.protocol, d.alert.severity, d.notify) for d in silent] == [("akash", "critical", True)]
    assert "no telemetry for 6.0 h" in silent[0].alert.message
    assert first.states[("local", "akash")]["state"] == "degraded"
    assert "critical silent alert" in first.states[("local", "akash")]["reason"]
    with open_connection() as conn:
        assert store.read_degraded(conn, "local") == {"storj", "akash"}

    # An hour later, still silent: recorded, not sent again (cooldown like every rule).
    later = run_anomaly_cycle(open_connection, small_catalog, quiet, None, first_run=False, environ={}, now=NOW + timedelta(hours=1))
    assert [(d.alert.protocol, d.reason) for d in later.decisions if d.alert.rule == "silent"] == [("akash", "cooldown")]

    # akash reports again (with its backlog) and everyone reports 5 more hours: resolve_after_hours (3) quiet
    # evaluated hours after the last silent firing (02:00), the silent alert resolves.
    last = telemetry.loc[telemetry["ts"] == newest]
    resumed = pd.concat(
        [telemetry, *(last.assign(ts=newest + pd.Timedelta(hours=h), connection_failures=0) for h in range(1, 6))], ignore_index=True
    )
    back = run_anomaly_cycle(open_connection, small_catalog, resumed, None, first_run=False, environ={}, now=NOW + timedelta(hours=5))
    assert not [d for d in back.decisions if d.alert.rule == "silent"]
    assert query(db_path, "SELECT DISTINCT status FROM alerts WHERE rule = 'silent'") == [("resolved",)]
    assert back.states[("local", "akash")]["state"] == "healthy"
    assert [(c.from_state, c.to_state) for c in back.state_changes if c.protocol == "akash"] == [("degraded", "healthy")]
