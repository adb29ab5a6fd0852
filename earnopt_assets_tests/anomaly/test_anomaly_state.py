"""Protocol health state: degraded on critical drop/failure alerts, healthy again when they resolve."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from earnopt_assets.anomaly.rules import make_alert
from earnopt_assets.anomaly.store import (
    ensure_alert_tables,
    read_degraded,
    read_state,
    record_alerts,
    update_protocol_state,
)
from earnopt_assets.catalog import AlertSettings

T0 = datetime(2026, 1, 1)
PROTOCOLS = ["honeygain", "storj", "akash"]


@pytest.fixture
def conn(tmp_path):
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_alert_tables(connection)
    yield connection
    connection.close()


def alert(protocol, rule, severity, hour):
    return make_alert("local", protocol, rule, severity, T0 + timedelta(hours=hour), f"{rule} on {protocol}", {})


def test_read_degraded_without_table(tmp_path):
    connection = duckdb.connect(str(tmp_path / "empty.duckdb"))
    assert read_degraded(connection, "local") == set()
    assert read_state(connection, "local") == {}


def test_degraded_and_back_to_healthy_with_history(conn):
    settings = AlertSettings()
    first = update_protocol_state(conn, "local", PROTOCOLS, now=T0)
    assert {c.to_state for c in first} == {"healthy"} and all(c.from_state is None for c in first)

    record_alerts(conn, [alert("storj", "connection_failures", "critical", 0)], {"local": T0}, settings)
    changes = update_protocol_state(conn, "local", PROTOCOLS, now=T0 + timedelta(minutes=5))
    assert [(c.protocol, c.from_state, c.to_state) for c in changes] == [("storj", "healthy", "degraded")]
    assert "critical connection_failures alert" in changes[0].reason
    assert read_degraded(conn, "local") == {"storj"}
    assert read_state(conn, "local")["storj"]["since"] == T0

    # Nothing changes while it keeps firing.
    record_alerts(conn, [alert("storj", "connection_failures", "critical", 1)], {"local": T0 + timedelta(hours=1)}, settings)
    assert update_protocol_state(conn, "local", PROTOCOLS) == []

    # Three quiet hours: the alert resolves, the protocol is healthy again.
    record_alerts(conn, [], {"local": T0 + timedelta(hours=4)}, settings)
    back = update_protocol_state(conn, "local", PROTOCOLS, now=T0 + timedelta(hours=4))
    assert [(c.protocol, c.from_state, c.to_state) for c in back] == [("storj", "degraded", "healthy")]
    assert "resolved" in back[0].reason
    assert read_degraded(conn, "local") == set()
    history = conn.execute(
        "SELECT from_state, to_state FROM protocol_state_history WHERE protocol = 'storj' ORDER BY changed_at"
    ).fetchall()
    assert history == [(None, "healthy"), ("healthy", "degraded"), ("degraded", "healthy")]


@pytest.mark.parametrize(
    ("rule", "severity", "degrades"),
    [
        ("earnings_drop", "critical", True),
        ("connection_failures", "critical", True),
        ("earnings_drop", "warning", False),
        ("resource_usage", "critical", False),
        ("performance_degradation", "warning", False),
        ("isolation_forest", "info", False),
    ],
)
def test_only_critical_drop_or_failure_alerts_degrade(conn, rule, severity, degrades):
    record_alerts(conn, [alert("akash", rule, severity, 0)], {"local": T0}, AlertSettings())
    update_protocol_state(conn, "local", PROTOCOLS)
    assert (read_degraded(conn, "local") == {"akash"}) is degrades


def test_acknowledged_alert_keeps_the_protocol_degraded(conn):
    from earnopt_assets.anomaly.store import acknowledge_alert

    result = record_alerts(conn, [alert("honeygain", "earnings_drop", "critical", 0)], {"local": T0}, AlertSettings())
    acknowledge_alert(conn, result.new[0].id)
    update_protocol_state(conn, "local", PROTOCOLS)
    assert read_degraded(conn, "local") == {"honeygain"}
    assert read_degraded(conn, "other-device") == set()
