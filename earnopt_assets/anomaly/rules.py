"""Deterministic alert rules, alert identity, cooldown and auto-resolve.

Each rule is a function ``rule(ctx, settings) -> list[RuleHit]`` over one series
(:class:`~earnopt_assets.anomaly.series.SeriesContext`); thresholds come from
:class:`~earnopt_assets.catalog.AlertSettings`. Comparisons are exact: "more than 30 % below" fires at
a 30.0001 % drop and not at 30 %.

| rule | fires at hour t when | severity |
|---|---|---|
| earnings_drop | x_t < (1 - drop_threshold) * B'_t, B'_t = median(x_{t-24k}, k=1..7) * L_t (before 4 days: a younger baseline, only at the critical drop) | critical if x_t <= (1 - drop_critical) * B'_t (warning on a young baseline) |
| resource_usage | max_r z_{r,t} > z_threshold, or max_r v_{r,t} > 1 + share_tolerance | critical if max_r v_{r,t} >= 2 |
| connection_failures | failures_t >= failure_threshold, or no telemetry for >= silent_hours | critical if failures_t >= failure_critical_threshold or silent >= 2 * silent_hours |
| performance_degradation | for >= degradation_hours consecutive hours: x_t < ratio * B'_t or latency_t > median_7d(latency) / ratio | warning |
| isolation_forest | the detector flags the row (decision_function < 0) | info |
| silent | a series that reported before has no row for more than ``silent_lag_hours``: now_wallclock - last_ts > lag (evaluated at the wall-clock hour) | critical |

``x_t`` is allocation-adjusted earnings (earnings per unit of allocation^g, see ``series.py``), so a
deliberate allocation cut is not an earnings drop; compute protocols compare busy (leased) hours with busy
hours and idle hours with idle hours, so the end of a lease is not a drop either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from earnopt_assets.anomaly.detector import resource_zscore
from earnopt_assets.anomaly.series import BASELINE_STEPS, RESOURCES, SeriesContext, iter_series, trailing_median
from earnopt_assets.catalog import AlertSettings, Catalog

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
RULES: tuple[str, ...] = ("earnings_drop", "resource_usage", "connection_failures", "performance_degradation", "isolation_forest", "silent")
# Rules whose critical alerts mark a protocol degraded (see state.py).
DEGRADING_RULES: frozenset[str] = frozenset({"earnings_drop", "connection_failures", "silent"})
# Default of the silent rule's lag when the catalog does not set alerts.silent_lag_hours.
DEFAULT_SILENT_LAG_HOURS = 3.0
_TOL = 1e-9  # float slack so that "at the threshold" means at it


@dataclass(frozen=True)
class RuleHit:
    """One firing of one rule in one hour of one series."""

    index: int
    severity: Severity
    message: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Alert:
    id: str
    protocol: str
    device: str
    rule: str
    severity: Severity
    hour: datetime
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    dedupe_key: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """The cooldown/resolve key: (device, protocol, rule)."""
        return (self.device, self.protocol, self.rule)

    @property
    def title(self) -> str:
        return f"[{self.severity.upper()}] {self.protocol}: {self.rule.replace('_', ' ')}"


def dedupe_key(device: str, protocol: str, rule: str, hour: datetime | pd.Timestamp) -> str:
    """One alert per (device, protocol, rule, hour): re-evaluating the same hour never duplicates it."""
    return f"{device}|{protocol}|{rule}|{pd.Timestamp(hour):%Y-%m-%dT%H:00}"


def make_alert(device: str, protocol: str, rule: str, severity: Severity, hour: datetime | pd.Timestamp,
               message: str, evidence: Mapping[str, Any]) -> Alert:
    key = dedupe_key(device, protocol, rule, hour)
    return Alert(
        id=hashlib.sha256(key.encode()).hexdigest()[:20],
        protocol=protocol,
        device=device,
        rule=rule,
        severity=severity,
        hour=pd.Timestamp(hour).to_pydatetime(),
        message=message,
        evidence={k: _jsonable(v) for k, v in evidence.items()},
        dedupe_key=key,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (pd.Timestamp, datetime)):
        return pd.Timestamp(value).isoformat()
    return value


def _fmt_pct(value: float) -> str:
    return f"{100.0 * value:.0f}%"


# ----------------------------------------------------------------------------------------- the rules


_BASELINE_WORDS = {
    "same_hour_7d": "same-hour 7-day median",
    "seasonal_naive_24": "same-hour median of the days seen so far",
    "recent_level": "median of the last 24 h",
}


def earnings_drop(ctx: SeriesContext, settings: AlertSettings) -> list[RuleHit]:
    """Earnings this hour more than ``earnings_drop_threshold`` below the best baseline history allows.

    From 4 days the same-hour 7-day median B'_t; before that (young series, #17) the same-hour median of the
    days seen so far, or from 3 hours the 24 h level (``SeriesContext.stepped_baseline``). A young baseline
    is noisier and the level ignores the daily rhythm, so before 4 days the rule fires only at the critical
    drop and reports it as a warning (it never marks the protocol degraded on a guess).
    """
    x = ctx.adjusted_earnings
    base, step = ctx.stepped_baseline
    young = step > 0
    with np.errstate(invalid="ignore"):
        valid = ctx.earnings_observed & np.isfinite(x) & np.isfinite(base) & (base > 0)
        critical = x <= base * (1.0 - settings.earnings_drop_critical) + _TOL * base
        fire = valid & (x < base * (1.0 - settings.earnings_drop_threshold) - _TOL * base) & (~young | critical)
    hits: list[RuleHit] = []
    scale = ctx.response_scale
    for i in np.flatnonzero(fire):
        drop = 1.0 - x[i] / base[i]
        expected = base[i] * scale[i]
        step_name = BASELINE_STEPS[int(step[i])]
        threshold = settings.earnings_drop_critical if young[i] else settings.earnings_drop_threshold
        hits.append(
            RuleHit(
                int(i),
                "critical" if critical[i] and not young[i] else "warning",
                f"{ctx.protocol} earned ${ctx.earnings[i]:.6f} in the hour, {_fmt_pct(drop)} below its "
                f"{_BASELINE_WORDS[step_name]} of ${expected:.6f} (threshold {_fmt_pct(threshold)})",
                {
                    "earnings_usd": ctx.earnings[i],
                    "baseline_usd": expected,
                    "baseline_step": step_name,
                    "drop": drop,
                    "allocation": ctx.allocation[i],
                    "level_factor": ctx.level_factor[i],
                    "threshold": threshold,
                },
            )
        )
    return hits


def resource_usage(ctx: SeriesContext, settings: AlertSettings) -> list[RuleHit]:
    """A resource's z-score vs the trailing 7 days above the threshold, or use above the allocated share."""
    z, which = resource_zscore(ctx)
    activity = np.vstack([ctx.activity(r) for r in RESOURCES])
    finite = np.isfinite(activity)
    share = np.where(finite.any(axis=0), np.where(finite, activity, -np.inf).max(axis=0), np.nan)
    share_which = np.where(finite, activity, -np.inf).argmax(axis=0)
    limit = 1.0 + settings.resource_share_tolerance
    with np.errstate(invalid="ignore"):
        z_fire = np.isfinite(z) & (z > settings.resource_zscore_threshold + _TOL)
        share_fire = np.isfinite(share) & (share > limit + _TOL)
    fire = ctx.observed & (z_fire | share_fire)
    hits: list[RuleHit] = []
    for i in np.flatnonzero(fire):
        reasons = []
        if z_fire[i]:
            reasons.append(f"{RESOURCES[which[i]]} z-score {z[i]:.1f} vs the trailing 7 days (> {settings.resource_zscore_threshold:g})")
        if share_fire[i]:
            reasons.append(f"{RESOURCES[share_which[i]]} at {_fmt_pct(share[i])} of its allocated share (> {_fmt_pct(limit)})")
        usage = {r: ctx.usage[r][i] for r in RESOURCES}
        hits.append(
            RuleHit(
                int(i),
                "critical" if share[i] >= 2.0 else "warning",
                f"{ctx.protocol} unusual resource usage: " + "; ".join(reasons),
                {
                    "zscore": z[i],
                    "zscore_resource": RESOURCES[which[i]] if which[i] >= 0 else None,
                    "share_of_allocation": share[i],
                    "share_resource": RESOURCES[share_which[i]],
                    "allocation": ctx.allocation[i],
                    **{f"usage_{k}": v for k, v in usage.items()},
                    "zscore_threshold": settings.resource_zscore_threshold,
                    "share_limit": limit,
                },
            )
        )
    return hits


def connection_failures(ctx: SeriesContext, settings: AlertSettings) -> list[RuleHit]:
    """Failures in the hour at or above the threshold, or no telemetry for ``silent_hours`` or more."""
    failures = np.nan_to_num(ctx.failures, nan=0.0)
    silent = ctx.silent_run()
    fail_fire = ctx.observed & (failures >= settings.failure_threshold)
    silent_fire = silent >= settings.silent_hours
    hits: list[RuleHit] = []
    for i in np.flatnonzero(fail_fire | silent_fire):
        if silent_fire[i]:
            severity: Severity = "critical" if silent[i] >= 2 * settings.silent_hours else "warning"
            message = f"{ctx.protocol} has sent no telemetry for {silent[i]} h (threshold {settings.silent_hours} h)"
        else:
            severity = "critical" if failures[i] >= settings.failure_critical_threshold else "warning"
            message = (f"{ctx.protocol} had {int(failures[i])} connection failures in the hour "
                       f"(threshold {settings.failure_threshold})")
        hits.append(
            RuleHit(
                int(i),
                severity,
                message,
                {
                    "connection_failures": None if silent_fire[i] else int(failures[i]),
                    "silent_hours": int(silent[i]),
                    "failure_threshold": settings.failure_threshold,
                    "failure_critical_threshold": settings.failure_critical_threshold,
                },
            )
        )
    return hits


def performance_degradation(ctx: SeriesContext, settings: AlertSettings) -> list[RuleHit]:
    """Earnings per unit of allocation or latency below ``ratio`` of normal for ``degradation_hours`` hours.

    Earnings are compared with the same-hour 7-day median (a plain 7-day median would fire every night on
    apps with a daily rhythm); latency with its trailing 7-day median (performance = 1 / latency).
    """
    ratio = settings.degradation_ratio
    x, base = ctx.adjusted_earnings, ctx.baseline
    latency_median = trailing_median(ctx.latency)
    with np.errstate(invalid="ignore"):
        earn_low = ctx.earnings_observed & np.isfinite(x) & np.isfinite(base) & (base > 0) & (x < ratio * base - _TOL * base)
        slow = np.isfinite(ctx.latency) & np.isfinite(latency_median) & (ctx.latency * ratio > latency_median + _TOL)
    below = ctx.observed & (earn_low | slow)
    run = np.zeros(len(below), dtype=int)
    count = 0
    for i, flag in enumerate(below):
        count = count + 1 if flag else 0
        run[i] = count
    hits: list[RuleHit] = []
    for i in np.flatnonzero(run >= settings.degradation_hours):
        parts = []
        if earn_low[i]:
            parts.append(f"earnings per unit of allocation at {_fmt_pct(x[i] / base[i])} of the same-hour 7-day median")
        if slow[i]:
            parts.append(f"latency {ctx.latency[i]:.0f} ms vs a 7-day median of {latency_median[i]:.0f} ms")
        hits.append(
            RuleHit(
                int(i),
                "warning",
                f"{ctx.protocol} performance below {_fmt_pct(ratio)} of normal for {run[i]} h: " + "; ".join(parts),
                {
                    "consecutive_hours": int(run[i]),
                    "earnings_ratio": x[i] / base[i] if np.isfinite(base[i]) and base[i] > 0 else None,
                    "latency_ms": ctx.latency[i],
                    "latency_median_ms": latency_median[i],
                    "ratio": ratio,
                    "hours_required": settings.degradation_hours,
                },
            )
        )
    return hits


SERIES_RULES: dict[str, Callable[[SeriesContext, AlertSettings], list[RuleHit]]] = {
    "earnings_drop": earnings_drop,
    "resource_usage": resource_usage,
    "connection_failures": connection_failures,
    "performance_degradation": performance_degradation,
}


def isolation_forest_alerts(scores: pd.DataFrame, start: datetime | None = None, end: datetime | None = None) -> list[Alert]:
    """One info alert per row the detector flagged (columns device, protocol, ts, score, is_anomaly)."""
    if scores is None or scores.empty:
        return []
    flagged = scores.loc[scores["is_anomaly"].astype(bool)]
    ts = pd.to_datetime(flagged["ts"])
    if start is not None:
        flagged = flagged.loc[ts >= pd.Timestamp(start)]
        ts = ts.loc[flagged.index]
    if end is not None:
        flagged = flagged.loc[ts <= pd.Timestamp(end)]
    alerts = []
    feature_cols = [c for c in flagged.columns if c not in ("device", "protocol", "ts", "score", "is_anomaly")]
    for row in flagged.itertuples(index=False):
        data = row._asdict()
        alerts.append(
            make_alert(
                str(data["device"]), str(data["protocol"]), "isolation_forest", "info", data["ts"],
                f"{data['protocol']} flagged by the IsolationForest (score {data['score']:.3f}; below 0 is anomalous)",
                {"score": data["score"], **{c: data[c] for c in feature_cols}},
            )
        )
    return alerts


def series_alerts(ctx: SeriesContext, settings: AlertSettings, start: datetime | None = None,
                  end: datetime | None = None, rules: Iterable[str] = tuple(SERIES_RULES)) -> list[Alert]:
    """Run the series rules on one series and turn hits inside [start, end] into alerts."""
    lo = pd.Timestamp(start) if start is not None else None
    hi = pd.Timestamp(end) if end is not None else None
    out: list[Alert] = []
    for name in rules:
        for hit in SERIES_RULES[name](ctx, settings):
            hour = ctx.ts[hit.index]
            if (lo is not None and hour < lo) or (hi is not None and hour > hi):
                continue
            out.append(make_alert(ctx.device, ctx.protocol, name, hit.severity, hour, hit.message, hit.evidence))
    return out


def evaluate_rules(telemetry: pd.DataFrame, catalog: Catalog, settings: AlertSettings | None = None,
                   scores: pd.DataFrame | None = None, start: datetime | None = None,
                   end: datetime | None = None) -> list[Alert]:
    """Every alert of every rule for hours in [start, end], sorted by (hour, protocol, rule)."""
    settings = settings or catalog.alerts
    specs = {p.name: p for p in catalog.protocols}
    alerts: list[Alert] = []
    for ctx in iter_series(telemetry, specs, elasticity=settings.allocation_elasticity, level_band=settings.baseline_level_band):
        alerts.extend(series_alerts(ctx, settings, start, end))
    if scores is not None:
        known = scores.loc[scores["protocol"].isin(list(specs))]
        alerts.extend(isolation_forest_alerts(known, start, end))
    alerts.sort(key=lambda a: (a.hour, a.protocol, a.rule))
    return alerts


def silent_alerts(last_seen: pd.DataFrame, now: datetime, lag_hours: float) -> list[Alert]:
    """"Silence is an alert": one critical ``silent`` alert per (device, protocol) whose newest row
    (``last_seen`` columns device, protocol, latest_ts; naive UTC) is more than ``lag_hours`` behind the
    WALL CLOCK ``now``. The alert's hour is the current wall-clock hour, so an ongoing silence fires once
    per hour (deduped, cooldown as every rule) and resolves ``resolve_after_hours`` after the series
    reports again. ``lag_hours <= 0`` turns the rule off.
    """
    if lag_hours <= 0 or last_seen is None or last_seen.empty:
        return []
    now_ts = pd.Timestamp(now)
    now_ts = now_ts.tz_convert("UTC").tz_localize(None) if now_ts.tzinfo is not None else now_ts
    hour = now_ts.floor("h")
    alerts = []
    for row in last_seen.itertuples(index=False):
        if pd.isna(row.latest_ts):
            continue
        latest = pd.Timestamp(row.latest_ts)
        lag = (now_ts - latest).total_seconds() / 3600.0
        if lag <= lag_hours + _TOL:
            continue
        alerts.append(
            make_alert(
                str(row.device), str(row.protocol), "silent", "critical", hour,
                f"{row.protocol} on {row.device} has sent no telemetry for {lag:.1f} h "
                f"(last hour {latest:%Y-%m-%d %H:00} UTC; threshold {lag_hours:g} h)",
                {"last_seen": latest, "lag_hours": lag, "lag_threshold_hours": lag_hours, "checked_at": now_ts},
            )
        )
    alerts.sort(key=lambda a: (a.hour, a.protocol))
    return alerts


def evaluated_until(telemetry: pd.DataFrame) -> dict[str, datetime]:
    """Per device, the newest hour that rules have been evaluated on (the newest telemetry hour)."""
    if telemetry.empty:
        return {}
    ends = telemetry.assign(ts=pd.to_datetime(telemetry["ts"])).groupby("device")["ts"].max()
    return {str(k): v.to_pydatetime() for k, v in ends.items()}


# ----------------------------------------------------------------------------- cooldown and resolve


@dataclass(frozen=True)
class NotificationDecision:
    alert: Alert
    notify: bool
    reason: Literal["new", "escalated", "cooldown", "backfill"]


def plan_notifications(alerts: Iterable[Alert], last_fired: Mapping[tuple[str, str, str], datetime],
                       cooldown_minutes: float,
                       last_notified_severity: Mapping[tuple[str, str, str], str] | None = None) -> list[NotificationDecision]:
    """Decide which new alerts are sent. Every alert is still recorded.

    Per (device, protocol, rule): an alert is sent when the key has not fired within the previous
    ``cooldown_minutes`` (hour - previous firing > cooldown), or when it escalates above the severity
    already sent during the current run of firings. With hourly data and the default 60 min, a fault that
    persists for many hours is sent once (plus once if it turns critical); a fault that returns after a
    quiet hour is sent again.
    """
    cooldown = timedelta(minutes=cooldown_minutes)
    previous: dict[tuple[str, str, str], datetime] = dict(last_fired)
    sent_rank: dict[tuple[str, str, str], int] = {
        k: SEVERITY_RANK[v] for k, v in (last_notified_severity or {}).items() if v in SEVERITY_RANK
    }
    decisions: list[NotificationDecision] = []
    for alert in sorted(alerts, key=lambda a: (a.hour, SEVERITY_RANK[a.severity])):
        key = alert.key
        prev = previous.get(key)
        rank = SEVERITY_RANK[alert.severity]
        if prev is None or alert.hour - prev > cooldown:
            decisions.append(NotificationDecision(alert, True, "new"))
            sent_rank[key] = rank
        elif rank > sent_rank.get(key, rank):  # unknown history: no escalation
            decisions.append(NotificationDecision(alert, True, "escalated"))
            sent_rank[key] = rank
        else:
            decisions.append(NotificationDecision(alert, False, "cooldown"))
        if prev is None or alert.hour > prev:
            previous[key] = alert.hour
    return decisions


def resolve_due(last_fired: Mapping[tuple[str, str, str], datetime], evaluated: Mapping[str, datetime],
                resolve_after_hours: int) -> dict[tuple[str, str, str], datetime]:
    """Keys whose rule has not fired for ``resolve_after_hours`` evaluated hours, with the resolve hour.

    A key that fired last at hour h resolves once hour h + resolve_after_hours has been evaluated
    without a firing.
    """
    after = timedelta(hours=resolve_after_hours)
    due: dict[tuple[str, str, str], datetime] = {}
    for key, fired in last_fired.items():
        until = evaluated.get(key[0])
        if until is not None and until - fired >= after:
            due[key] = fired + after
    return due


def split_incidents(hours: Iterable[datetime], evaluated: datetime | None, resolve_after_hours: int) -> list[tuple[list[datetime], datetime | None]]:
    """Split the firing hours of one key into incidents and give each its resolve hour (None = still open).

    A new incident starts when the next firing comes more than ``resolve_after_hours`` after the previous
    one (the rule was quiet for that many evaluated hours in between). An incident resolves at its last
    firing + ``resolve_after_hours`` once that hour has been evaluated.
    """
    after = timedelta(hours=resolve_after_hours)
    ordered = sorted(set(hours))
    incidents: list[list[datetime]] = []
    for hour in ordered:
        if incidents and hour - incidents[-1][-1] <= after:
            incidents[-1].append(hour)
        else:
            incidents.append([hour])
    out: list[tuple[list[datetime], datetime | None]] = []
    for index, incident in enumerate(incidents):
        resolve_at = incident[-1] + after
        is_last = index == len(incidents) - 1
        done = (not is_last) or (evaluated is not None and evaluated >= resolve_at)
        out.append((incident, resolve_at if done else None))
    return out
