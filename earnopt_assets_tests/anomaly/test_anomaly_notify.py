"""Alert delivery against a REAL local HTTP server: payload shapes, retries on 500, timeouts, budgets."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from earnopt_assets.anomaly.notify import Channel, Notifier, channels_from_settings
from earnopt_assets.anomaly.rules import make_alert
from earnopt_assets.catalog import AlertChannel, AlertSettings
from earnopt_assets_tests.anomaly.helpers import Receiver

ALERT = make_alert(
    "local", "honeygain", "earnings_drop", "critical", datetime(2026, 1, 1, 5), "honeygain earned 60% less",
    {"earnings_usd": 0.001, "baseline_usd": 0.0025, "drop": 0.6},
)


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def fast_notifier(channels, **overrides) -> Notifier:
    options = {"timeout_seconds": 0.5, "attempts": 3, "backoff_seconds": 0.01, "budget_seconds": 5.0}
    options.update(overrides)
    return Notifier(channels, **options)


def test_generic_webhook_payload(receiver):
    with fast_notifier([Channel("webhook", receiver.url)]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.ok, a.status_code, a.attempt) for a in attempts] == [(True, 200, 1)]
    body = receiver.json_bodies()[0]
    assert body["title"] == "[CRITICAL] honeygain: earnings drop"
    assert body["message"] == "honeygain earned 60% less"
    assert body["severity"] == "critical" and body["protocol"] == "honeygain"
    assert body["evidence"] == {"earnings_usd": 0.001, "baseline_usd": 0.0025, "drop": 0.6}
    assert receiver.requests[0]["path"] == "/hook/secret-token"
    # The recorded channel never holds the secret path.
    assert attempts[0].channel.startswith("webhook:http://127.0.0.1:") and "secret" not in attempts[0].channel


def test_ntfy_slack_discord_shapes(receiver):
    channels = [Channel("ntfy", receiver.url), Channel("slack", receiver.url), Channel("discord", receiver.url)]
    with fast_notifier(channels) as notifier:
        attempts = notifier.deliver(ALERT)
    assert all(a.ok for a in attempts) and len(attempts) == 3
    ntfy, slack, discord = receiver.requests
    assert ntfy["headers"]["Title"] == "[CRITICAL] honeygain: earnings drop"
    assert ntfy["headers"]["Priority"] == "5"
    assert "rotating_light" in ntfy["headers"]["Tags"] and "honeygain" in ntfy["headers"]["Tags"]
    assert ntfy["body"].decode().startswith("honeygain earned 60% less")
    import json

    slack_body = json.loads(slack["body"])
    assert "honeygain earned 60% less" in slack_body["text"]
    assert slack_body["blocks"][0]["type"] == "header"
    discord_body = json.loads(discord["body"])
    assert discord_body["embeds"][0]["description"] == "honeygain earned 60% less"
    assert {f["name"] for f in discord_body["embeds"][0]["fields"]} == {"earnings_usd", "baseline_usd", "drop"}
    assert len(discord_body["content"]) <= 2000


def test_retries_after_500_then_succeeds(receiver):
    receiver.script = [500, 500, 200]
    with fast_notifier([Channel("webhook", receiver.url)]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.attempt, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 500), (3, True, 200)]
    assert "HTTP 500" in attempts[0].error
    assert len(receiver.requests) == 3


def test_always_500_gives_up_after_three_attempts_and_skips_the_channel(receiver):
    receiver.default = 500
    sleeps: list[float] = []
    with Notifier([Channel("webhook", receiver.url)], timeout_seconds=0.5, attempts=3, backoff_seconds=0.2,
                  budget_seconds=5.0, sleep=sleeps.append) as notifier:
        first = notifier.deliver(ALERT)
        second = notifier.deliver(ALERT)
    assert [a.ok for a in first] == [False, False, False]
    assert sleeps == [0.2, 0.4]  # exponential backoff
    assert len(receiver.requests) == 3
    assert second[0].error.startswith("skipped: channel failed earlier")


def test_client_errors_are_not_retried(receiver):
    receiver.default = 404
    with fast_notifier([Channel("webhook", receiver.url)]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 404)]


def test_hanging_receiver_times_out_within_the_budget(receiver):
    receiver.default = "hang"
    started = time.monotonic()
    with fast_notifier([Channel("webhook", receiver.url)], timeout_seconds=0.3, budget_seconds=1.0) as notifier:
        attempts = notifier.deliver(ALERT)
    elapsed = time.monotonic() - started
    assert not any(a.ok for a in attempts)
    assert "timeout" in attempts[0].error
    assert elapsed < 3.0  # bounded by the budget, not by the receiver


def test_down_receiver_is_recorded_not_raised():
    # A port nothing listens on.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with fast_notifier([Channel("webhook", f"http://127.0.0.1:{port}/x")]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert len(attempts) == 3 and not any(a.ok for a in attempts)
    assert "ConnectError" in attempts[0].error


def test_min_severity_filters_channels(receiver):
    info = make_alert("local", "storj", "isolation_forest", "info", datetime(2026, 1, 1), "odd", {})
    with fast_notifier([Channel("webhook", receiver.url, "warning")]) as notifier:
        assert notifier.deliver(info) == []
    assert receiver.requests == []


def test_channels_from_catalog_and_environment():
    settings = AlertSettings(channels=[AlertChannel(kind="slack", url="https://hooks.slack.example/T/B/X")])
    env = {
        "EARNOPT_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "EARNOPT_NTFY_URL": "https://ntfy.sh/earnopt-test",
        "EARNOPT_ALERT_MIN_SEVERITY": "critical",
    }
    channels = channels_from_settings(settings, env)
    assert [(c.kind, c.min_severity, c.source) for c in channels] == [
        ("slack", "warning", "catalog"),
        ("webhook", "critical", "env:EARNOPT_WEBHOOK_URL"),
        ("ntfy", "critical", "env:EARNOPT_NTFY_URL"),
    ]
    assert channels_from_settings(AlertSettings(), {}) == []
    with pytest.raises(ValueError, match="EARNOPT_DISCORD_WEBHOOK_URL"):
        channels_from_settings(AlertSettings(), {"EARNOPT_DISCORD_WEBHOOK_URL": "ftp://x"})
    with pytest.raises(ValueError, match="EARNOPT_ALERT_MIN_SEVERITY"):
        channels_from_settings(AlertSettings(), {"EARNOPT_ALERT_MIN_SEVERITY": "loud"})


def test_notifier_from_settings_uses_the_catalog_delivery_bounds():
    settings = AlertSettings(delivery_attempts=5, delivery_timeout_seconds=1.5, delivery_budget_seconds=4)
    notifier = Notifier.from_settings(settings, {})
    assert (notifier.attempts, notifier.timeout_seconds, notifier.budget_seconds) == (5, 1.5, 4)
    assert notifier.channels == []
