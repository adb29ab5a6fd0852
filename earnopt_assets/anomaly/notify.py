"""Alert delivery through Apprise (https://github.com/caronc/apprise): one URL syntax for 100+ services.

Channels come from the catalog (``alerts.channels``: Apprise URLs such as ``ntfy://host/topic``,
``tgram://bot_token/chat_id``, ``json://host/path``, ``mailtos://user:pass@host?to=me@example.org``,
``gotify://host/token``, ``pover://user_key@app_token``, ``matrixs://user:pass@host/#room``,
``slack://T/B/token``, ``discord://id/token``; or a legacy ``{kind, url}`` http(s) webhook) and from the
environment variables ``EARNOPT_WEBHOOK_URL``, ``EARNOPT_NTFY_URL``, ``EARNOPT_SLACK_WEBHOOK_URL``,
``EARNOPT_DISCORD_WEBHOOK_URL`` (minimum severity for those: ``EARNOPT_ALERT_MIN_SEVERITY``, default
warning), which are mapped onto Apprise URLs (:func:`apprise_url`). Default: no channel.

Delivery never raises and is bounded: each attempt has a short timeout (Apprise's connect/read
timeouts), failures (connection errors, timeouts, HTTP 429/5xx) are retried with exponential backoff
(``backoff * 2**k``) up to ``attempts`` times, and one alert's delivery to one channel stops at
``budget_seconds``. A channel that exhausted its retries is skipped for the rest of the run (recorded as
such), so a dead receiver costs one budget per run, not one per alert. Every attempt is returned as a
:class:`DeliveryAttempt` row for ``alert_deliveries``.

Secrets: channel URLs carry credentials (``user:password@``), tokens in the host (``tgram://<bot
token>``), the path (Slack, Discord, an ntfy topic) and the query string. Only :attr:`Channel.target`
(``kind:scheme://host[:port]``, or ``scheme://***`` where the host itself is a token) and
:meth:`Channel.redact`-cleaned error texts leave this module; Apprise's own logger does not propagate
(its debug lines carry full URLs), its warnings are captured per attempt and redacted.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from earnopt_assets.anomaly.rules import SEVERITY_RANK, Alert
from earnopt_assets.catalog import AlertSettings

ENV_CHANNELS: dict[str, str] = {
    "EARNOPT_WEBHOOK_URL": "webhook",
    "EARNOPT_NTFY_URL": "ntfy",
    "EARNOPT_SLACK_WEBHOOK_URL": "slack",
    "EARNOPT_DISCORD_WEBHOOK_URL": "discord",
}
NTFY_PRIORITY = {"info": "default", "warning": "high", "critical": "max"}
NTFY_TAGS = {"info": "information_source", "warning": "warning", "critical": "rotating_light"}
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Every URL-looking token in free text: scheme, optional userinfo, host[:port], then path/query/fragment.
_URL_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/@]*@)?([^\s/?#@]*)([^\s'\"<>]*)")
REDACTED = "***"
# Schemes whose "host" is a real host name; for every other Apprise scheme the host is a token.
HOST_SCHEMES = frozenset({
    "http", "https", "json", "jsons", "xml", "xmls", "form", "forms", "ntfy", "ntfys", "gotify", "gotifys",
    "matrix", "matrixs", "mmost", "mmosts", "mailto", "mailtos", "apprise", "apprises", "rocket", "rockets",
})
_STATUS_IN_LOG = re.compile(r"error=(\d{3})\b|\b(?:HTTP|status)[ :=]+(\d{3})\b", re.IGNORECASE)
logging.getLogger("apprise").propagate = False  # its debug lines hold whole URLs (secrets)


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


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _is_host_scheme(url: str) -> bool:
    scheme = _scheme(url)
    if scheme not in HOST_SCHEMES:
        return False
    if scheme in ("ntfy", "ntfys"):  # ntfy://topic (ntfy.sh) has the topic where the host goes
        try:
            return urlsplit(url).path not in ("", "/")
        except ValueError:
            return False
    return True


def _legacy_to_apprise(kind: str, url: str) -> str:
    """An http(s) URL of a legacy channel kind as an Apprise URL (same host, credentials and path).

    webhook -> ``json(s)://`` (query parameters become Apprise ``-name=value`` GET parameters, so the
    receiver sees the same URL); ntfy -> ``ntfy(s)://host/topic``; slack on hooks.slack.com ->
    ``slack://T/B/token``; discord(app).com webhooks -> ``discord://id/token``. A Slack- or Discord-kind
    URL on another host is delivered as Apprise JSON.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.netloc
    segments = [s for s in parts.path.split("/") if s]
    if kind == "slack" and parts.hostname == "hooks.slack.com" and len(segments) >= 4 and segments[0] == "services":
        return "slack://" + "/".join(segments[1:4])
    if kind == "discord" and parts.hostname in ("discord.com", "discordapp.com") and len(segments) >= 4 and segments[:2] == ["api", "webhooks"]:
        return f"discord://{segments[2]}/{segments[3]}"
    if kind == "ntfy":
        return f"{'ntfys' if secure else 'ntfy'}://{host}{parts.path}"
    query = urlencode([(f"-{k}", v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return f"{'jsons' if secure else 'json'}://{host}{parts.path or '/'}" + (f"?{query}" if query else "")


def apprise_url(kind: str, url: str) -> str:
    """The Apprise URL a channel delivers to: legacy http(s) kinds are mapped, Apprise URLs pass as they are."""
    if _scheme(url) in ("http", "https"):
        return _legacy_to_apprise(kind if kind in ENV_CHANNELS.values() else "webhook", url)
    return url


@dataclass(frozen=True)
class Channel:
    """One delivery target: ``kind`` is a legacy kind (webhook, ntfy, slack, discord) or the Apprise
    scheme; ``url`` as configured (never shown: it holds secrets)."""

    kind: str
    url: str
    min_severity: str = "warning"
    source: str = "catalog"

    @property
    def apprise_url(self) -> str:
        return apprise_url(self.kind, self.url)

    @property
    def target(self) -> str:
        """``kind:scheme://host[:port]`` (no credentials, path or query), or ``kind:scheme://***`` when the
        scheme keeps a token where the host goes; what tables, logs and metadata name the channel by."""
        if _is_host_scheme(self.url):
            return f"{self.kind}:{redact_url(self.url).removesuffix('/' + REDACTED)}"
        return f"{self.kind}:{_scheme(self.url) or 'unknown'}://{REDACTED}"

    def redact(self, text: str | None) -> str | None:
        """``text`` with this channel's URLs, their secret pieces and any other URL redacted."""
        secrets = [self.url, self.apprise_url, *_url_secrets(self.url), *_url_secrets(self.apprise_url)]
        for url in (self.url, self.apprise_url):
            if not _is_host_scheme(url):
                secrets.append(url.split("://", 1)[-1])
                secrets.extend(_hostname(url))
        return redact_text(text, secrets)

    def accepts(self, severity: str) -> bool:
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]


def _hostname(url: str) -> list[str]:
    """Host and whole netloc (``123456:bot-token`` for Telegram) and the pieces of the netloc."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return []
    pieces = [host or "", parts.netloc, *re.split(r"[:@]", parts.netloc)]
    return [p for p in pieces if len(p) >= 4]


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
    pieces += [value for _, value in parse_qsl(parts.query) if len(value) >= 4]
    return [p for p in pieces if p]


def _check_apprise_url(url: str, where: str) -> None:
    import apprise

    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise ValueError(f"{where}: not a URL Apprise can deliver to (scheme {_scheme(url) or 'missing'}://); see the README's alert channels")


def channels_from_settings(settings: AlertSettings, environ: Mapping[str, str] | None = None) -> list[Channel]:
    """Catalog channels plus one channel per set environment variable (duplicates removed). Every URL is
    checked by Apprise; an error names the setting, never the URL (it holds secrets)."""
    env = os.environ if environ is None else environ
    channels = []
    for index, configured in enumerate(settings.channels):
        kind = configured.kind or _scheme(configured.url)
        channel = Channel(kind, configured.url, configured.min_severity, "catalog")
        _check_apprise_url(channel.apprise_url, f"alerts.channels.{index}")
        channels.append(channel)
    env_severity = env.get("EARNOPT_ALERT_MIN_SEVERITY", "warning").strip().lower() or "warning"
    if env_severity not in SEVERITY_RANK:
        raise ValueError(f"EARNOPT_ALERT_MIN_SEVERITY must be one of info, warning, critical; got {env_severity!r}")
    for variable, kind in ENV_CHANNELS.items():
        url = (env.get(variable) or "").strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{variable} must be an http(s) URL starting with http:// or https://, got {redact_text(url, [url])!r}")
        channel = Channel(kind, url, env_severity, f"env:{variable}")
        _check_apprise_url(channel.apprise_url, variable)
        channels.append(channel)
    unique: dict[tuple[str, str], Channel] = {}
    for channel in channels:
        unique.setdefault((channel.kind, channel.url), channel)
    return list(unique.values())


# ------------------------------------------------------------------------------------ messages


def _evidence_lines(alert: Alert, limit: int = 12) -> list[str]:
    items = [(k, v) for k, v in alert.evidence.items() if v is not None][:limit]
    return [f"{k}: {v}" for k, v in items]


def message_body(alert: Alert) -> str:
    """The text every service shows: the message, then the evidence one ``name: value`` per line."""
    return "\n".join([alert.message, *_evidence_lines(alert)])


def delivery_url(channel: Channel, alert: Alert) -> str:
    """The channel's Apprise URL with per-alert fields where the service takes them: JSON receivers get
    severity, protocol, rule, device, hour, ids and the evidence (JSON text) as payload fields; ntfy a
    priority and tags."""
    url = channel.apprise_url
    scheme = _scheme(url)
    if scheme in ("json", "jsons"):
        import json

        extra = {"kind": "earnopt.alert", "severity": alert.severity, "protocol": alert.protocol, "rule": alert.rule,
                 "device": alert.device, "hour": alert.hour.isoformat(), "alert_id": alert.id, "dedupe_key": alert.dedupe_key,
                 "evidence": json.dumps(alert.evidence, sort_keys=True)}
        params = [(f":{k}", v) for k, v in extra.items()]
    elif scheme in ("ntfy", "ntfys"):
        tags = ",".join([NTFY_TAGS[alert.severity], "earnopt", alert.protocol, alert.rule])
        params = [("priority", NTFY_PRIORITY[alert.severity]), ("tags", tags)]
    else:
        return url
    separator = "&" if "?" in url else "?"
    return url + separator + urlencode(params, quote_via=quote)


class _StatusCollector(logging.Handler):
    """HTTP status codes of the requests one attempt makes, read from urllib3's debug record
    (``'%s://%s:%s "%s %s %s" %s %s'``: the status is the 7th argument). Only the number is kept."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statuses: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 7 and str(args[6]).isdigit():
            self.statuses.append(int(args[6]))


class _capture_statuses:
    """Collect urllib3 status codes meanwhile, without letting those records (full URLs) reach any other handler."""

    def __enter__(self) -> _StatusCollector:
        self.logger = logging.getLogger("urllib3.connectionpool")
        self.saved = (self.logger.level, self.logger.propagate)
        self.collector = _StatusCollector()
        self.logger.addHandler(self.collector)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        return self.collector

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.collector)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


def _notify_type(severity: str):
    from apprise import NotifyType

    return {"info": NotifyType.INFO, "warning": NotifyType.WARNING, "critical": NotifyType.FAILURE}[severity]


# ------------------------------------------------------------------------------------ delivery


class Notifier:
    """Sends alerts to channels through Apprise with bounded retries. Never raises from :meth:`deliver`."""

    def __init__(self, channels: Iterable[Channel], *, timeout_seconds: float = 3.0, attempts: int = 3,
                 backoff_seconds: float = 0.5, budget_seconds: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None) -> None:
        self.channels = list(channels)
        self.timeout_seconds = timeout_seconds
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self.budget_seconds = budget_seconds
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
        """Nothing is held between deliveries (kept for the context-manager interface)."""

    def deliver(self, alert: Alert) -> list[DeliveryAttempt]:
        """Send one alert to every channel that accepts its severity; returns every attempt."""
        attempts: list[DeliveryAttempt] = []
        for channel in self.channels:
            if not channel.accepts(alert.severity):
                continue
            try:
                attempts.extend(self._deliver_one(channel, alert))
            except Exception as exc:  # a bug in a plugin must not break the run either
                attempts.append(DeliveryAttempt(alert.id, channel.target, 1, False, None, channel.redact(f"internal error: {exc!r}"), 0.0))
        return attempts

    def deliver_all(self, alerts: Iterable[Alert]) -> list[DeliveryAttempt]:
        out: list[DeliveryAttempt] = []
        for alert in alerts:
            out.extend(self.deliver(alert))
        return out

    def _send(self, channel: Channel, alert: Alert, timeout: float) -> tuple[bool, int | None, str | None, bool]:
        """One Apprise attempt: (ok, HTTP status if known, error text, worth retrying)."""
        import apprise

        plugin = apprise.Apprise.instantiate(delivery_url(channel, alert), suppress_exceptions=True)
        if plugin is None:
            return False, None, "not a URL Apprise can deliver to", False
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        with apprise.LogCapture(level=logging.DEBUG, fmt="%(levelname)s %(message)s") as captured, _capture_statuses() as http:
            body = alert.message if _scheme(channel.apprise_url) in ("json", "jsons") else message_body(alert)  # JSON has the evidence as a field
            ok = bool(plugin.notify(body=body, title=alert.title, notify_type=_notify_type(alert.severity)))
        status = http.statuses[-1] if http.statuses else None
        if ok:
            return True, status, None, False
        lines = [line for line in captured.getvalue().splitlines()
                 if line.startswith(("WARNING", "ERROR")) or "Socket Exception" in line]
        text = " ".join(line.split(" ", 1)[-1] for line in lines) or "delivery failed"
        if status is None:
            status = next((int(a or b) for a, b in _STATUS_IN_LOG.findall(text)), None)
        if re.search(r"timed? ?out", text, re.IGNORECASE):
            return False, status, f"timeout after {timeout:.2f} s ({text[:300]})", True
        if status is not None:
            return False, status, f"HTTP {status}: {text[:300]}", status in RETRY_STATUS
        return False, None, text[:400], True  # connection errors and the like

    def _deliver_one(self, channel: Channel, alert: Alert) -> list[DeliveryAttempt]:
        key = f"{channel.kind}|{channel.url}"
        if key in self.down:
            return [DeliveryAttempt(alert.id, channel.target, 0, False, None, "skipped: channel failed earlier in this run", 0.0)]
        deadline = time.monotonic() + self.budget_seconds
        records: list[DeliveryAttempt] = []
        for number in range(1, self.attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                records.append(DeliveryAttempt(alert.id, channel.target, number, False, None, "skipped: delivery budget exhausted", 0.0))
                break
            timeout = min(self.timeout_seconds, remaining)
            started = time.monotonic()
            ok, status, error, retry = self._send(channel, alert, timeout)
            elapsed = (time.monotonic() - started) * 1000
            if ok:
                records.append(DeliveryAttempt(alert.id, channel.target, number, True, status, None, elapsed))
                self._log(f"alert {alert.id} delivered to {channel.target} (attempt {number})")
                return records
            error = channel.redact(error)  # receivers and Apprise may echo the URL back
            records.append(DeliveryAttempt(alert.id, channel.target, number, False, status, error, elapsed))
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
