"""Alert delivery: generic JSON webhook, ntfy, Slack- and Discord-compatible incoming webhooks.

Channels come from the catalog (``alerts.channels``) and from environment variables
``EARNOPT_WEBHOOK_URL``, ``EARNOPT_NTFY_URL``, ``EARNOPT_SLACK_WEBHOOK_URL``, ``EARNOPT_DISCORD_WEBHOOK_URL``
(minimum severity for those: ``EARNOPT_ALERT_MIN_SEVERITY``, default warning). Default: no channel.

Delivery never raises and is bounded: each attempt has a short timeout, failures (connection errors,
timeouts, HTTP 429/5xx) are retried with exponential backoff (``backoff * 2**k``) up to ``attempts``
times, and one alert's delivery to one channel stops at ``budget_seconds``. A channel that exhausted its
retries is skipped for the rest of the run (recorded as such), so a dead receiver costs one budget per
run, not one per alert. Every attempt is returned as a :class:`DeliveryAttempt` row for ``alert_deliveries``.

Secrets: webhook URLs carry credentials (``user:password@``), tokens in the path (Slack
``/services/T../B../<token>``, Discord ``/api/webhooks/<id>/<token>``, an ntfy topic) and in the query
string. Only :func:`redact_url` forms (``scheme://host[:port]``) and :func:`redact_text`-cleaned error
texts leave this module: they are what ``alert_deliveries``, logs and metadata see.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from earnopt_assets.anomaly.rules import SEVERITY_RANK, Alert
from earnopt_assets.catalog import AlertSettings

ENV_CHANNELS: dict[str, str] = {
    "EARNOPT_WEBHOOK_URL": "webhook",
    "EARNOPT_NTFY_URL": "ntfy",
    "EARNOPT_SLACK_WEBHOOK_URL": "slack",
    "EARNOPT_DISCORD_WEBHOOK_URL": "discord",
}
NTFY_PRIORITY = {"info": "3", "warning": "4", "critical": "5"}
NTFY_TAGS = {"info": "information_source", "warning": "warning", "critical": "rotating_light"}
DISCORD_COLOR = {"info": 0x3498DB, "warning": 0xF1C40F, "critical": 0xE74C3C}
SLACK_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Every URL-looking token in free text: scheme, optional userinfo, host[:port], then path/query/fragment.
_URL_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/@]*@)?([^\s/?#@]*)([^\s'\"<>]*)")
REDACTED = "***"


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` with a ``/***`` marker when anything (path, query, user:password@) was
    removed; webhook paths and query strings hold tokens, userinfo holds passwords."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    hidden = parts.username is not None or parts.password is not None or parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{netloc}" + (f"/{REDACTED}" if hidden else "")


def redact_text(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """``text`` with every URL reduced to its host (see :func:`redact_url`) and every given secret
    string (e.g. the channel URL itself, in case a library quotes it oddly) replaced by ``***``."""
    if text is None:
        return None
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)

    def replace(match: re.Match) -> str:
        rest = match.group(3)
        tail = rest[len(rest.rstrip(".,:;)]")):]  # sentence punctuation after the URL stays
        hidden = rest[: len(rest) - len(tail)] or "@" in match.group(0)
        return match.group(1) + match.group(2) + (f"/{REDACTED}" if hidden else "") + tail

    return _URL_IN_TEXT.sub(replace, text)


@dataclass(frozen=True)
class Channel:
    kind: str
    url: str
    min_severity: str = "warning"
    source: str = "catalog"

    @property
    def target(self) -> str:
        """``kind:scheme://host[:port]``: no credentials, path or query (they carry secrets); what tables,
        logs and metadata name the channel by."""
        return f"{self.kind}:{redact_url(self.url).removesuffix('/' + REDACTED)}"

    def redact(self, text: str | None) -> str | None:
        """``text`` with this channel's URL and any other URL redacted."""
        return redact_text(text, [self.url, *_url_secrets(self.url)])

    def accepts(self, severity: str) -> bool:
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]


@dataclass
class DeliveryAttempt:
    alert_id: str
    channel: str
    attempt: int
    ok: bool
    status_code: int | None
    error: str | None
    elapsed_ms: float
    attempted_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))

    def as_row(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "channel": self.channel,
            "attempt": self.attempt,
            "ok": self.ok,
            "status_code": self.status_code,
            "error": self.error,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "attempted_at": self.attempted_at,
        }


def _url_secrets(url: str) -> list[str]:
    """The secret-bearing pieces of a URL (userinfo, password, path segments, query values)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    pieces = [parts.username or "", parts.password or "", parts.query, parts.fragment]
    pieces += [segment for segment in parts.path.split("/") if len(segment) >= 8]
    return [p for p in pieces if p]


def channels_from_settings(settings: AlertSettings, environ: Mapping[str, str] | None = None) -> list[Channel]:
    """Catalog channels plus one channel per set environment variable (duplicates removed)."""
    env = os.environ if environ is None else environ
    channels = [Channel(c.kind, c.url, c.min_severity, "catalog") for c in settings.channels]
    env_severity = env.get("EARNOPT_ALERT_MIN_SEVERITY", "warning").strip().lower() or "warning"
    if env_severity not in SEVERITY_RANK:
        raise ValueError(f"EARNOPT_ALERT_MIN_SEVERITY must be one of info, warning, critical; got {env_severity!r}")
    for variable, kind in ENV_CHANNELS.items():
        url = (env.get(variable) or "").strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{variable} must be an http(s) URL starting with http:// or https://, got {redact_text(url, [url])!r}")
        channels.append(Channel(kind, url, env_severity, f"env:{variable}"))
    unique: dict[tuple[str, str], Channel] = {}
    for channel in channels:
        unique.setdefault((channel.kind, channel.url), channel)
    return list(unique.values())


# ------------------------------------------------------------------------------------ payloads


def _evidence_lines(alert: Alert, limit: int = 12) -> list[str]:
    items = [(k, v) for k, v in alert.evidence.items() if v is not None][:limit]
    return [f"{k}: {v}" for k, v in items]


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """Generic JSON: title, message, severity, protocol, evidence (+ identity fields)."""
    return {
        "title": alert.title,
        "message": alert.message,
        "severity": alert.severity,
        "protocol": alert.protocol,
        "evidence": alert.evidence,
        "kind": "earnopt.alert",
        "rule": alert.rule,
        "device": alert.device,
        "hour": alert.hour.isoformat(),
        "alert_id": alert.id,
        "dedupe_key": alert.dedupe_key,
    }


def _header_safe(text: str) -> str:
    """HTTP headers are latin-1: replace anything else, drop newlines."""
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")


def ntfy_request(alert: Alert) -> tuple[str, dict[str, str]]:
    """ntfy: the message as plain text body, with Title/Priority/Tags headers."""
    body = alert.message + "\n" + "\n".join(_evidence_lines(alert))
    headers = {
        "Title": _header_safe(alert.title),
        "Priority": NTFY_PRIORITY[alert.severity],
        "Tags": ",".join([NTFY_TAGS[alert.severity], "earnopt", _header_safe(alert.protocol), alert.rule]),
        "Content-Type": "text/plain; charset=utf-8",
    }
    return body, headers


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Slack incoming webhook: ``text`` fallback plus Block Kit sections."""
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in list(alert.evidence.items())[:10] if v is not None]
    return {
        "text": f"{SLACK_EMOJI[alert.severity]} {alert.title}: {alert.message}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.message[:3000]}},
            *([{"type": "section", "fields": fields}] if fields else []),
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{alert.device} · {alert.hour:%Y-%m-%d %H:00} UTC · {alert.id}"}]},
        ],
    }


def discord_payload(alert: Alert) -> dict[str, Any]:
    """Discord webhook: ``content`` (<= 2000 chars) plus one embed with the evidence as fields."""
    fields = [{"name": str(k)[:256], "value": str(v)[:1024], "inline": True} for k, v in list(alert.evidence.items())[:25] if v is not None]
    return {
        "content": f"{alert.title}"[:2000],
        "embeds": [
            {
                "title": alert.title[:256],
                "description": alert.message[:4096],
                "color": DISCORD_COLOR[alert.severity],
                "timestamp": alert.hour.isoformat(),
                "fields": fields,
                "footer": {"text": f"earnopt · {alert.device} · {alert.id}"},
            }
        ],
    }


def build_request(channel: Channel, alert: Alert) -> dict[str, Any]:
    """httpx request kwargs for one channel."""
    if channel.kind == "ntfy":
        body, headers = ntfy_request(alert)
        return {"content": body.encode("utf-8"), "headers": headers}
    if channel.kind == "slack":
        return {"json": slack_payload(alert)}
    if channel.kind == "discord":
        return {"json": discord_payload(alert)}
    if channel.kind == "webhook":
        return {"json": webhook_payload(alert)}
    raise ValueError(f"unknown channel kind {channel.kind!r}")


# ------------------------------------------------------------------------------------ delivery


class Notifier:
    """Sends alerts to channels with bounded retries. Never raises from :meth:`deliver`."""

    def __init__(self, channels: Iterable[Channel], *, timeout_seconds: float = 3.0, attempts: int = 3,
                 backoff_seconds: float = 0.5, budget_seconds: float = 10.0,
                 client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None) -> None:
        self.channels = list(channels)
        self.timeout_seconds = timeout_seconds
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self.budget_seconds = budget_seconds
        self._client = client
        self._sleep = sleep
        self._log = log or (lambda message: None)
        self.down: set[str] = set()

    @classmethod
    def from_settings(cls, settings: AlertSettings, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Notifier:
        return cls(
            channels_from_settings(settings, environ),
            timeout_seconds=settings.delivery_timeout_seconds,
            attempts=settings.delivery_attempts,
            backoff_seconds=settings.delivery_backoff_seconds,
            budget_seconds=settings.delivery_budget_seconds,
            **kwargs,
        )

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False, headers={"User-Agent": "earnopt-alerts/1"})
        return self._client

    def deliver(self, alert: Alert) -> list[DeliveryAttempt]:
        """Send one alert to every channel that accepts its severity; returns every attempt."""
        attempts: list[DeliveryAttempt] = []
        for channel in self.channels:
            if not channel.accepts(alert.severity):
                continue
            try:
                attempts.extend(self._deliver_one(channel, alert))
            except Exception as exc:  # a bug in a payload must not break the run either
                attempts.append(DeliveryAttempt(alert.id, channel.target, 1, False, None, channel.redact(f"internal error: {exc!r}"), 0.0))
        return attempts

    def deliver_all(self, alerts: Iterable[Alert]) -> list[DeliveryAttempt]:
        out: list[DeliveryAttempt] = []
        for alert in alerts:
            out.extend(self.deliver(alert))
        return out

    def _deliver_one(self, channel: Channel, alert: Alert) -> list[DeliveryAttempt]:
        key = f"{channel.kind}|{channel.url}"
        if key in self.down:
            return [DeliveryAttempt(alert.id, channel.target, 0, False, None, "skipped: channel failed earlier in this run", 0.0)]
        request = build_request(channel, alert)
        deadline = time.monotonic() + self.budget_seconds
        records: list[DeliveryAttempt] = []
        for number in range(1, self.attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                records.append(DeliveryAttempt(alert.id, channel.target, number, False, None, "skipped: delivery budget exhausted", 0.0))
                break
            timeout = min(self.timeout_seconds, remaining)
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            retry = True
            try:
                response = self.client.post(channel.url, timeout=httpx.Timeout(timeout), **request)
                status = response.status_code
                if 200 <= status < 300:
                    records.append(DeliveryAttempt(alert.id, channel.target, number, True, status, None, (time.monotonic() - started) * 1000))
                    self._log(f"alert {alert.id} delivered to {channel.target} (attempt {number}, HTTP {status})")
                    return records
                error = f"HTTP {status}: {response.text[:200]}"
                retry = status in RETRY_STATUS
            except httpx.TimeoutException as exc:
                error = f"timeout after {timeout:.2f} s ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            error = channel.redact(error)  # receivers and httpx may echo the URL back
            records.append(DeliveryAttempt(alert.id, channel.target, number, False, status, error, (time.monotonic() - started) * 1000))
            self._log(f"alert {alert.id} to {channel.target} failed (attempt {number}/{self.attempts}): {error}")
            if not retry or number == self.attempts:
                break
            delay = self.backoff_seconds * 2 ** (number - 1)
            if time.monotonic() + delay >= deadline:
                records.append(DeliveryAttempt(alert.id, channel.target, number + 1, False, None, "skipped: delivery budget exhausted", 0.0))
                break
            self._sleep(delay)
        if not any(r.ok for r in records):
            self.down.add(key)
        return records
