"""Protocol health state: ``healthy`` or ``degraded``, driven by critical alerts (pure logic, no SQL).

State machine per (device, protocol):

    healthy --(an open/acknowledged CRITICAL alert of a degrading rule)--> degraded
    degraded --(no such alert left open: they all resolved)--> healthy

Degrading rules: :data:`earnopt_assets.anomaly.rules.DEGRADING_RULES`. The tables (``protocol_state`` and
``protocol_state_history``) are owned by :mod:`earnopt_assets.anomaly.store`, which applies
:func:`next_state` per protocol inside the alerts transaction, so the state always agrees with the alerts
recorded in the same run. The allocator reads ``store.read_degraded``, caps degraded protocols at their
minimum allocation and plans a ``restart``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from earnopt_assets.anomaly.rules import DEGRADING_RULES

_DEGRADING_TEXT = "/".join(sorted(DEGRADING_RULES))


@dataclass(frozen=True)
class StateChange:
    device: str
    protocol: str
    from_state: str | None  # None: the protocol had no state row yet (first evaluation)
    to_state: str
    reason: str
    alert_id: str | None
    at: datetime | None = None


@dataclass(frozen=True)
class DegradingCause:
    """The newest open critical alert of a degrading rule for one protocol."""

    alert_id: str
    rule: str
    hour: datetime
    message: str
    first_hour: datetime


@dataclass(frozen=True)
class TargetState:
    state: str
    reason: str
    alert_id: str | None
    since: datetime


@dataclass(frozen=True)
class ResolvedCause:
    """The newest resolved critical alert of a degrading rule for one protocol (why it is healthy again)."""

    alert_id: str
    rule: str
    hour: datetime
    resolved_at: datetime


def next_state(previous_state: str | None, previous_alert: str | None, cause: DegradingCause | None,
               now: datetime, last_resolved: ResolvedCause | None = None) -> TargetState:
    """The state a protocol must be in given its newest open critical degrading alert (or none).

    The healthy reason names the last resolved critical alert, so a critical alert recorded and already
    auto-resolved in the same run (e.g. a first run's history) is explained next to the healthy state.
    """
    if cause is not None:
        return TargetState(
            "degraded",
            f"critical {cause.rule} alert {cause.alert_id} at {cause.hour:%Y-%m-%d %H:00}: {cause.message}",
            cause.alert_id,
            cause.first_hour,
        )
    reason = f"no open critical {_DEGRADING_TEXT} alert"
    if last_resolved is not None:
        reason += (f"; the last one, {last_resolved.rule} alert {last_resolved.alert_id} at {last_resolved.hour:%Y-%m-%d %H:00}, "
                   f"resolved at {last_resolved.resolved_at:%Y-%m-%d %H:00}")
    elif previous_state == "degraded" and previous_alert:
        reason += f"; alert {previous_alert} resolved"
    return TargetState("healthy", reason, None, now)
