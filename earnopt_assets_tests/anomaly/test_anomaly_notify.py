"""Alert delivery through Apprise against REAL local HTTP receivers: json:// and ntfy:// shapes, the
legacy EARNOPT_*_URL kinds mapped onto Apprise URLs, retries on 500, timeouts, budgets, a receiver
that is down (recorded, never raised) and secrets kept out of every recorded text."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime

import pytest

from earnopt_assets.anomaly.notify import Channel, Notifier, apprise_url, channels_from_settings
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


def _apprise(receiver: Receiver, scheme: str) -> str:
    """The receiver's URL (``http://127.0.0.1:<port>/hook/secret-token``) in an Apprise scheme."""
    return scheme + "://" + receiver.url.split("://", 1)[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fast_notifier(channels, **overrides) -> Notifier:
    options = {"timeout_seconds": 0.5, "attempts": 3, "backoff_seconds": 0.01, "budget_seconds": 5.0}
    options.update(overrides)
    return Notifier(channels, **options)


def test_json_scheme_payload(receiver):
    channel = Channel("json", _apprise(receiver, "json"))
    with fast_notifier([channel]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.ok, a.status_code, a.attempt) for a in attempts] == [(True, 200, 1)]
    body = receiver.json_bodies()[0]
    assert body["title"] == "[CRITICAL] honeygain: earnings drop"
    assert body["message"] == "honeygain earned 60% less" and body["type"] == "failure"
    assert body["severity"] == "critical" and body["protocol"] == "honeygain" and body["rule"] == "earnings_drop"
    assert json.loads(body["evidence"]) == {"earnings_usd": 0.001, "baseline_usd": 0.0025, "drop": 0.6}
    assert receiver.requests[0]["path"] == "/hook/secret-token"
    # The recorded channel never holds the secret path.
    assert attempts[0].channel.startswith("json:json://127.0.0.1:") and "secret" not in attempts[0].channel


def test_ntfy_scheme_headers(receiver):
    topic = "ntfy://" + receiver.url.split("://", 1)[1].split("/", 1)[0] + "/earnopt-alerts"  # one path segment = one topic
    with fast_notifier([Channel("ntfy", topic)]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [a.ok for a in attempts] == [True]
    (request,) = receiver.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"].startswith("/earnopt-alerts") or "earnopt-alerts" in request["body"].decode()
    sent = json.loads(request["body"]) if request["body"].startswith(b"{") else {"message": request["body"].decode()}
    text = json.dumps(sent) + json.dumps(headers)
    assert "honeygain earned 60% less" in text and "drop: 0.6" in text
    assert "rotating_light" in text and "earnopt" in text
    assert "[CRITICAL] honeygain: earnings drop" in text
    assert headers.get("x-priority") == "max" or sent.get("priority") == 5


def test_legacy_kinds_map_onto_apprise_urls(receiver):
    assert apprise_url("webhook", "https://u:p@example.org:8443/hook/x?token=abc") == "jsons://u:p@example.org:8443/hook/x?-token=abc"
    assert apprise_url("ntfy", "https://ntfy.sh/my-topic") == "ntfys://ntfy.sh/my-topic"
    assert apprise_url("slack", "https://hooks.slack.com/services/T1/B2/tok3n") == "slack://T1/B2/tok3n"
    assert apprise_url("discord", "https://discord.com/api/webhooks/123/tok3n") == "discord://123/tok3n"
    assert apprise_url("webhook", "tgram://123:abc/456") == "tgram://123:abc/456"
    # An EARNOPT_WEBHOOK_URL keeps working: same path and query string at the receiver, JSON body.
    with fast_notifier([Channel("webhook", receiver.url + "?token=querySECRET")]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert attempts[0].ok and receiver.requests[0]["path"] == "/hook/secret-token?token=querySECRET"
    assert receiver.json_bodies()[0]["protocol"] == "honeygain"
    assert attempts[0].channel.startswith("webhook:http://127.0.0.1:") and "SECRET" not in attempts[0].channel


def test_retries_after_500_then_succeeds(receiver):
    receiver.script = [500, 500, 200]
    with fast_notifier([Channel("json", _apprise(receiver, "json"))]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.attempt, a.ok, a.status_code) for a in attempts] == [(1, False, 500), (2, False, 500), (3, True, 200)]
    assert "HTTP 500" in attempts[0].error
    assert len(receiver.requests) == 3


def test_always_500_gives_up_after_three_attempts_and_skips_the_channel(receiver):
    receiver.default = 500
    sleeps: list[float] = []
    with Notifier([Channel("json", _apprise(receiver, "json"))], timeout_seconds=0.5, attempts=3, backoff_seconds=0.2,
                  budget_seconds=5.0, sleep=sleeps.append) as notifier:
        first = notifier.deliver(ALERT)
        second = notifier.deliver(ALERT)
    assert [a.ok for a in first] == [False, False, False]
    assert sleeps == [0.2, 0.4]  # exponential backoff
    assert len(receiver.requests) == 3
    assert second[0].error.startswith("skipped: channel failed earlier")


def test_client_errors_are_not_retried(receiver):
    receiver.default = 404
    with fast_notifier([Channel("json", _apprise(receiver, "json"))]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 404)]


def test_hanging_receiver_times_out_within_the_budget(receiver):
    receiver.default = "hang"
    started = time.monotonic()
    with fast_notifier([Channel("json", _apprise(receiver, "json"))], timeout_seconds=0.3, budget_seconds=1.0) as notifier:
        attempts = notifier.deliver(ALERT)
    elapsed = time.monotonic() - started
    assert not any(a.ok for a in attempts)
    assert "timeout" in attempts[0].error
    assert elapsed < 3.0  # bounded by the budget, not by the receiver


@pytest.mark.parametrize("scheme", ["json", "ntfy"])
def test_down_receiver_is_recorded_not_raised(scheme):
    url = f"{scheme}://127.0.0.1:{_closed_port()}/pathSECRETtopic"
    with fast_notifier([Channel(scheme, url)]) as notifier:
        attempts = notifier.deliver(ALERT)
    assert len(attempts) == 3 and not any(a.ok for a in attempts)
    assert all(a.error and "SECRET" not in a.error and "SECRET" not in a.channel for a in attempts)


def test_min_severity_filters_channels(receiver):
    info = make_alert("local", "storj", "isolation_forest", "info", datetime(2026, 1, 1), "odd", {})
    with fast_notifier([Channel("json", _apprise(receiver, "json"), "warning")]) as notifier:
        assert notifier.deliver(info) == []
    assert receiver.requests == []


def test_channels_from_catalog_and_environment():
    settings = AlertSettings(channels=["tgram://123456:AAbotTOKEN/98765", {"url": "ntfys://ntfy.sh/earnopt", "min_severity": "critical"},
                                       AlertChannel(kind="slack", url="https://hooks.slack.com/services/T/B/X")])
    env = {
        "EARNOPT_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "EARNOPT_NTFY_URL": "https://ntfy.sh/earnopt-test",
        "EARNOPT_ALERT_MIN_SEVERITY": "critical",
    }
    channels = channels_from_settings(settings, env)
    assert [(c.kind, c.min_severity, c.source) for c in channels] == [
        ("tgram", "warning", "catalog"),
        ("ntfys", "critical", "catalog"),
        ("slack", "warning", "catalog"),
        ("webhook", "critical", "env:EARNOPT_WEBHOOK_URL"),
        ("ntfy", "critical", "env:EARNOPT_NTFY_URL"),
    ]
    assert channels[0].target == "tgram:tgram://***"  # the bot token sits where a host would
    assert "TOKEN" not in channels[0].redact("failed to reach tgram://123456:AAbotTOKEN/98765 (bot 123456:AAbotTOKEN)")
    assert channels_from_settings(AlertSettings(), {}) == []
    with pytest.raises(ValueError, match="EARNOPT_DISCORD_WEBHOOK_URL"):
        channels_from_settings(AlertSettings(), {"EARNOPT_DISCORD_WEBHOOK_URL": "ftp://x"})
    with pytest.raises(ValueError, match="EARNOPT_ALERT_MIN_SEVERITY"):
        channels_from_settings(AlertSettings(), {"EARNOPT_ALERT_MIN_SEVERITY": "loud"})
    with pytest.raises(ValueError, match=r"alerts.channels.0: not a URL Apprise") as info:
        channels_from_settings(AlertSettings(channels=["nosuchscheme://user:hunter2@host"]), {})
    assert "hunter2" not in str(info.value)


def test_notifier_from_settings_uses_the_catalog_delivery_bounds():
    settings = AlertSettings(delivery_attempts=5, delivery_timeout_seconds=1.5, delivery_budget_seconds=4)
    notifier = Notifier.from_settings(settings, {})
    assert (notifier.attempts, notifier.timeout_seconds, notifier.budget_seconds) == (5, 1.5, 4)
    assert notifier.channels == []
