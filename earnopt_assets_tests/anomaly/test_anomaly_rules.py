"""Alert rules at, just below and just above their thresholds; cooldown, dedupe and auto-resolve."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.anomaly.rules import (
    connection_failures,
    earnings_drop,
    evaluate_rules,
    isolation_forest_alerts,
    make_alert,
    performance_degradation,
    plan_notifications,
    resolve_due,
    resource_usage,
)
from earnopt_assets.anomaly.series import SeriesContext
from earnopt_assets.anomaly.store import acknowledge_alert, record_alerts
from earnopt_assets.catalog import AlertSettings, ProtocolSpec
from earnopt_assets_tests.anomaly.helpers import START, TEST_SPEC, flat_series

SETTINGS = AlertSettings()


def ctx_of(frame: pd.DataFrame, spec: ProtocolSpec = TEST_SPEC, end=None) -> SeriesContext:
    return SeriesContext.from_frame(frame, spec, elasticity=SETTINGS.allocation_elasticity, end=end)


def last_hour_hits(hits, frame):
    return [h for h in hits if h.index == len(frame) - 1]


# ------------------------------------------------------------------------------------ earnings drop


@pytest.mark.parametrize(
    ("last_earnings", "fires", "severity"),
    [(0.70, False, None), (0.6999, True, "warning"), (0.7001, False, None), (0.40, True, "critical"), (0.4001, True, "warning")],
)
def test_earnings_drop_threshold(last_earnings, fires, severity):
    frame = flat_series()
    frame.loc[frame.index[-1], "earnings_usd"] = last_earnings
    hits = last_hour_hits(earnings_drop(ctx_of(frame), SETTINGS), frame)
    assert bool(hits) is fires
    if fires:
        assert hits[0].severity == severity
        assert hits[0].evidence["baseline_usd"] == pytest.approx(1.0)
        assert hits[0].evidence["drop"] == pytest.approx(1 - last_earnings)


def test_earnings_drop_threshold_is_configurable():
    frame = flat_series()
    frame.loc[frame.index[-1], "earnings_usd"] = 0.85
    assert not last_hour_hits(earnings_drop(ctx_of(frame), SETTINGS), frame)
    loose = AlertSettings(earnings_drop_threshold=0.1)
    assert last_hour_hits(earnings_drop(ctx_of(frame), loose), frame)


def test_deliberate_allocation_cut_is_not_an_earnings_drop():
    frame = flat_series()
    # The allocator halves the allocation: earnings follow a^0.6, usage follows a.
    frame.loc[frame.index[-1], ["allocation", "cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb"]] = [0.5, 0.5, 0.5, 5.0, 0.5]
    frame.loc[frame.index[-1], "earnings_usd"] = 0.5**0.6
    ctx = ctx_of(frame)
    assert not last_hour_hits(earnings_drop(ctx, SETTINGS), frame)
    assert not last_hour_hits(resource_usage(ctx, SETTINGS), frame)


def test_earnings_drop_before_four_days_fires_only_at_the_critical_drop_as_a_warning():
    """Young history (#17): yesterday's same hour is the baseline; only the critical drop is reported, as a
    warning (a young baseline never degrades a protocol)."""
    frame = flat_series(hours=3 * 24)
    frame.loc[frame.index[-1], "earnings_usd"] = 0.0
    hits = earnings_drop(ctx_of(frame), SETTINGS)
    assert [h.index for h in hits] == [len(frame) - 1]
    assert hits[0].severity == "warning" and hits[0].evidence["baseline_step"] == "seasonal_naive_24"
    frame.loc[frame.index[-1], "earnings_usd"] = frame["earnings_usd"].iloc[-2] * 0.5  # 50 %: below critical
    assert earnings_drop(ctx_of(frame), SETTINGS) == []


def test_idle_compute_hours_are_not_judged_on_earnings():
    spec = ProtocolSpec(name="computeapp", kind="compute", cpu_cores=4, memory_gb=4, bandwidth_mbps=5, storage_gb=50)
    frame = flat_series(spec=spec, protocol="computeapp", latency=np.nan)
    # lease ends: CPU falls to 40 % of its share and earnings to 8 %: expected, no alert
    frame.loc[frame.index[-1], ["earnings_usd", "cpu_cores"]] = [0.08, 0.4 * 4]
    assert not last_hour_hits(earnings_drop(ctx_of(frame, spec), SETTINGS), frame)
    # leased (CPU busy) but paid 20 %: a real drop
    frame.loc[frame.index[-1], ["earnings_usd", "cpu_cores"]] = [0.2, 4.0]
    hits = last_hour_hits(earnings_drop(ctx_of(frame, spec), SETTINGS), frame)
    assert hits and hits[0].severity == "critical"


# ------------------------------------------------------------------------------------ resources


@pytest.mark.parametrize(("cpu", "fires"), [(1.25, False), (1.2499, False), (1.2501, True)])
def test_resource_usage_share_threshold(cpu, fires):
    frame = flat_series()
    frame.loc[frame.index[-1], "cpu_cores"] = cpu
    hits = last_hour_hits(resource_usage(ctx_of(frame), SETTINGS), frame)
    assert bool(hits) is fires
    if fires:
        assert hits[0].evidence["share_resource"] == "cpu_cores"
        assert hits[0].severity == "warning"


def test_resource_usage_double_share_is_critical():
    frame = flat_series()
    frame.loc[frame.index[-1], "memory_gb"] = 2.0
    hits = last_hour_hits(resource_usage(ctx_of(frame), SETTINGS), frame)
    assert hits[0].severity == "critical"


@pytest.mark.parametrize(("cpu", "fires"), [(1.6, False), (1.59, False), (1.61, True)])
def test_resource_usage_zscore_threshold(cpu, fires):
    frame = flat_series()
    # trailing week alternates 0.8 / 1.2 of the share: mean 1.0, std 0.2, so z = (cpu - 1) / 0.2
    frame["cpu_cores"] = np.where(np.arange(len(frame)) % 2 == 0, 0.8, 1.2)
    frame.loc[frame.index[-1], "cpu_cores"] = cpu
    settings = AlertSettings(resource_share_tolerance=5.0)  # isolate the z-score
    hits = last_hour_hits(resource_usage(ctx_of(frame), settings), frame)
    assert bool(hits) is fires
    if fires:
        assert hits[0].evidence["zscore"] == pytest.approx(3.05)
        assert hits[0].evidence["zscore_resource"] == "cpu_cores"


def test_resource_zscore_floor_ignores_noise_on_steady_resources():
    frame = flat_series()
    frame.loc[frame.index[-1], "memory_gb"] = 1.02  # 2 % above a perfectly flat history: infinite raw z
    assert not last_hour_hits(resource_usage(ctx_of(frame), SETTINGS), frame)


# ------------------------------------------------------------------------------------ connection failures


@pytest.mark.parametrize(("failures", "fires", "severity"), [(5, True, "warning"), (4, False, None), (6, True, "warning"), (10, True, "critical"), (9, True, "warning")])
def test_connection_failures_threshold(failures, fires, severity):
    frame = flat_series()
    frame.loc[frame.index[-1], "connection_failures"] = failures
    hits = last_hour_hits(connection_failures(ctx_of(frame), SETTINGS), frame)
    assert bool(hits) is fires
    if fires:
        assert hits[0].severity == severity
        assert hits[0].evidence["connection_failures"] == failures


@pytest.mark.parametrize(("silent", "expected"), [(1, None), (2, "warning"), (3, "warning"), (4, "critical")])
def test_silent_protocol(silent, expected):
    frame = flat_series()
    end = frame["ts"].iloc[-1]
    quiet = frame.iloc[: len(frame) - silent]
    hits = connection_failures(ctx_of(quiet, end=end), SETTINGS)
    last = [h for h in hits if h.index == len(frame) - 1]
    if expected is None:
        assert not last
    else:
        assert last[0].severity == expected
        assert last[0].evidence["silent_hours"] == silent


def test_evaluate_rules_sees_a_protocol_that_went_quiet_while_others_report():
    spec_b = TEST_SPEC.model_copy(update={"name": "other"})
    from earnopt_assets.catalog import Catalog, HostSpec

    catalog = Catalog(host=HostSpec(cpu_cores=8, memory_gb=16, bandwidth_mbps=100, storage_gb=100), protocols=[TEST_SPEC, spec_b])
    a = flat_series()
    b = flat_series(protocol="other").iloc[:-3]
    alerts = evaluate_rules(pd.concat([a, b]), catalog, start=a["ts"].iloc[-4])
    silent = [x for x in alerts if x.protocol == "other" and x.rule == "connection_failures"]
    assert [x.hour for x in silent] == list(a["ts"].iloc[-2:])
    assert not [x for x in alerts if x.protocol == "testapp"]


# ------------------------------------------------------------------------------------ degradation


@pytest.mark.parametrize(("slow_hours", "latency", "fires"), [(3, 150.0, True), (2, 150.0, False), (3, 100.0 / 0.7, False), (4, 143.0, True)])
def test_performance_degradation_latency(slow_hours, latency, fires):
    frame = flat_series()
    frame.loc[frame.index[-slow_hours:], "latency_ms"] = latency
    hits = last_hour_hits(performance_degradation(ctx_of(frame), SETTINGS), frame)
    assert bool(hits) is fires
    if fires:
        assert hits[0].evidence["consecutive_hours"] == slow_hours
        assert hits[0].evidence["latency_median_ms"] == pytest.approx(100.0)


@pytest.mark.parametrize(("ratio", "fires"), [(0.70, False), (0.69, True), (0.71, False)])
def test_performance_degradation_earnings_per_allocation(ratio, fires):
    frame = flat_series()
    frame.loc[frame.index[-3:], "earnings_usd"] = ratio
    hits = last_hour_hits(performance_degradation(ctx_of(frame), SETTINGS), frame)
    assert bool(hits) is fires


def test_isolation_forest_alerts_carry_the_score():
    scores = pd.DataFrame(
        {"device": "local", "protocol": "testapp", "ts": [START, START + timedelta(hours=1)], "score": [-0.2, 0.1],
         "is_anomaly": [True, False], "failure_rate": [3.0, 0.0]}
    )
    alerts = isolation_forest_alerts(scores)
    assert len(alerts) == 1
    assert alerts[0].severity == "info" and alerts[0].evidence["score"] == pytest.approx(-0.2)
    assert "-0.200" in alerts[0].message
    assert isolation_forest_alerts(scores, start=START + timedelta(hours=1)) == []


def test_rules_are_quiet_on_normal_simulated_telemetry(small_catalog):
    from earnopt_assets.simulator import simulate

    sim = simulate(small_catalog, days=21, seed=3, end="2026-01-01T00:00", inject_anomalies=False)
    normal = sim.telemetry
    labelled = set(zip(sim.labels["protocol"], sim.labels["ts"]))  # outages only
    start = normal["ts"].min() + pd.Timedelta(days=8)
    alerts = evaluate_rules(normal, small_catalog, start=start)
    false = [a for a in alerts if not any((a.protocol, pd.Timestamp(a.hour) - pd.Timedelta(hours=k)) in labelled for k in range(3))]
    hours = normal.loc[normal["ts"] >= start].shape[0]
    assert len(false) / hours < 0.02
    assert not [a for a in false if a.severity == "critical"]


# ------------------------------------------------------------------------------------ cooldown, dedupe, resolve


def _alerts(hours, rule="connection_failures", severity="warning"):
    return [make_alert("local", "testapp", rule, severity, START + timedelta(hours=h), "m", {}) for h in hours]


def test_cooldown_sends_a_persistent_fault_once():
    decisions = plan_notifications(_alerts(range(5)), {}, 60)
    assert [d.notify for d in decisions] == [True, False, False, False, False]
    assert [d.reason for d in decisions][:2] == ["new", "cooldown"]


def test_cooldown_zero_sends_every_hour_and_a_gap_resends():
    assert all(d.notify for d in plan_notifications(_alerts(range(3)), {}, 0))
    decisions = plan_notifications(_alerts([0, 1, 3]), {}, 60)
    assert [d.notify for d in decisions] == [True, False, True]
    # A longer cooldown swallows the gap.
    assert [d.notify for d in plan_notifications(_alerts([0, 1, 3]), {}, 120)] == [True, False, False]


def test_cooldown_respects_earlier_runs_and_escalation():
    previous = {("local", "testapp", "connection_failures"): START - timedelta(hours=1)}
    assert [d.notify for d in plan_notifications(_alerts([0]), previous, 60)] == [False]
    escalated = plan_notifications(_alerts([0]) + _alerts([1], severity="critical"), {}, 60)
    assert [(d.notify, d.reason) for d in escalated] == [(True, "new"), (True, "escalated")]
    other_rule = plan_notifications(_alerts([0]) + _alerts([0], rule="earnings_drop"), {}, 60)
    assert all(d.notify for d in other_rule)


def test_resolve_due_after_three_quiet_hours():
    key = ("local", "testapp", "connection_failures")
    last = {key: START}
    assert resolve_due(last, {"local": START + timedelta(hours=2)}, 3) == {}
    assert resolve_due(last, {"local": START + timedelta(hours=3)}, 3) == {key: START + timedelta(hours=3)}


def test_record_alerts_dedupes_resolves_and_acknowledges(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    settings = AlertSettings()
    first = record_alerts(conn, _alerts([0, 1]), {"local": START + timedelta(hours=1)}, settings)
    assert len(first.new) == 2 and [d.notify for d in first.decisions] == [True, False]
    again = record_alerts(conn, _alerts([0, 1]), {"local": START + timedelta(hours=2)}, settings)
    assert again.new == [] and again.duplicates == 2
    assert conn.execute("SELECT count(*) FROM alerts WHERE status = 'open'").fetchone()[0] == 2
    # Continues at hour 2: recorded, suppressed by cooldown (fired 60 min before).
    cont = record_alerts(conn, _alerts([2]), {"local": START + timedelta(hours=2)}, settings)
    assert [d.notify for d in cont.decisions] == [False]
    assert acknowledge_alert(conn, first.new[0].id)
    assert not acknowledge_alert(conn, "nope")
    # Quiet for hours 3, 4: still open; after hour 5 (3 quiet hours) all resolve, acknowledged too.
    assert record_alerts(conn, [], {"local": START + timedelta(hours=4)}, settings).resolved == {}
    done = record_alerts(conn, [], {"local": START + timedelta(hours=5)}, settings)
    assert done.resolved_rows == 3
    rows = conn.execute("SELECT status, resolved_at, notify_status FROM alerts ORDER BY hour").fetchall()
    assert {r[0] for r in rows} == {"resolved"}
    assert rows[0][1] == START + timedelta(hours=5)
    assert [r[2] for r in rows] == ["pending", "cooldown", "cooldown"]
    # It fires again later: a new incident, notified again.
    later = record_alerts(conn, _alerts([7]), {"local": START + timedelta(hours=7)}, settings)
    assert [d.notify for d in later.decisions] == [True]


# ------------------------------------------------------------------------------------ level factor


def test_slow_price_slide_is_followed_but_a_long_outage_keeps_firing():
    frame = flat_series(hours=12 * 24)
    n = len(frame)
    # The token loses 40 % over the last 4 days, smoothly: the same-hour median lags far behind.
    slide = np.ones(n)
    slide[-96:] = np.linspace(1.0, 0.6, 96)
    frame["earnings_usd"] = slide
    ctx = ctx_of(frame)
    assert earnings_drop(ctx, SETTINGS) == []
    assert ctx.level_factor[-1] < 0.9
    # Without the level factor the slide alerts (the plain rule of the issue).
    plain = SeriesContext.from_frame(frame, TEST_SPEC, level_band=0.0)
    assert earnings_drop(plain, SETTINGS)

    # Earnings stop for two days: the clip keeps the baseline up, so it never becomes the new normal.
    dead = flat_series(hours=12 * 24)
    dead.loc[dead.index[-48:], "earnings_usd"] = 0.0
    hits = earnings_drop(ctx_of(dead), SETTINGS)
    assert len(hits) == 48 and {h.severity for h in hits} == {"critical"}


def test_history_before_notify_since_is_recorded_but_never_sent(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    result = record_alerts(conn, _alerts([0, 1, 10]), {"local": START + timedelta(hours=10)}, AlertSettings(),
                           notify_since=START + timedelta(hours=10))
    assert [(d.notify, d.reason) for d in result.decisions] == [(False, "backfill"), (False, "backfill"), (True, "new")]
    # Hours 0-1 were one incident that resolved at hour 4; hour 10 is a new, open one.
    assert conn.execute("SELECT notify_status, status, resolved_at FROM alerts ORDER BY hour").fetchall() == [
        ("backfill", "resolved", START + timedelta(hours=4)), ("backfill", "resolved", START + timedelta(hours=4)),
        ("pending", "open", None)]


def test_split_incidents():
    from earnopt_assets.anomaly.rules import split_incidents

    h = [START + timedelta(hours=k) for k in (0, 1, 4, 8, 9)]
    parts = split_incidents(h, START + timedelta(hours=11), 3)
    # 1 -> 4 is a 3 h gap (hours 2, 3 quiet: not enough); 4 -> 8 is 4 h: a new incident.
    assert [(len(hours), at) for hours, at in parts] == [(3, START + timedelta(hours=7)), (2, None)]
    assert split_incidents(h, START + timedelta(hours=12), 3)[-1][1] == START + timedelta(hours=12)
    assert split_incidents([], START, 3) == []


def _share_change(before: float, after: float, earnings_after: float, hours: int = 9 * 24) -> pd.DataFrame:
    """Steady at ``before`` with earnings 1, then the last 12 hours at ``after`` earning ``earnings_after``."""
    frame = flat_series(hours, allocation=before)
    frame.loc[frame.index[-12:], "allocation"] = after
    frame.loc[frame.index[-12:], "earnings_usd"] = earnings_after
    return frame


def test_a_learned_response_keeps_a_planned_share_change_from_reading_as_an_earnings_drop():
    """A saturated bandwidth app raised from 20 % to 100 % earns the same: a^0.6 expects 2.6x and calls the
    unchanged earnings a critical drop; the learned response (flat there) does not. A real drop still fires."""
    frame = _share_change(0.2, 1.0, 1.0)
    power = earnings_drop(ctx_of(frame), SETTINGS)
    assert last_hour_hits(power, frame) and last_hour_hits(power, frame)[0].severity == "critical"

    def saturated(a):
        return np.where(np.asarray(a) >= 0.2, 1.0, 0.0)

    learned = SeriesContext.from_frame(frame, TEST_SPEC, elasticity=SETTINGS.allocation_elasticity, response=saturated)
    assert not earnings_drop(learned, SETTINGS)
    dropped = _share_change(0.2, 1.0, 0.3)
    real = earnings_drop(SeriesContext.from_frame(dropped, TEST_SPEC, response=saturated), SETTINGS)
    assert last_hour_hits(real, dropped)[0].severity == "critical"
    assert last_hour_hits(real, dropped)[0].evidence["baseline_usd"] == pytest.approx(1.0)


def test_a_share_the_learned_response_pays_nothing_at_is_not_judged():
    """Cut below a storage minimum the learned curve pays 0 there: zero earnings are expected, not a drop."""
    frame = _share_change(0.8, 0.4, 0.0)

    def minimum(a):
        return np.where(np.asarray(a) >= 0.5, np.asarray(a), 0.0)

    assert last_hour_hits(earnings_drop(ctx_of(frame), SETTINGS), frame)  # a^0.6 calls it a drop
    assert not earnings_drop(SeriesContext.from_frame(frame, TEST_SPEC, response=minimum), SETTINGS)
