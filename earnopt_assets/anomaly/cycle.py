"""The anomaly area's domain functions, one per asset, without Dagster:

* :func:`train_detector` — pick the training rows (feature-table hours not already alerted on) and fit
  the IsolationForest;
* :func:`score_recent` — detection features and scores of the last ``score_hours`` hours;
* :func:`run_anomaly_cycle` — rules -> record alerts -> protocol state -> notifications:
  (1) evaluate the rules over the telemetry, (2) record alerts, auto-resolve and update ``protocol_state``
  in one transaction (``store.record_evaluation``), (3) close the warehouse and deliver the alerts outside
  their cooldown, (4) reopen it briefly to record the delivery attempts.

Callers read the inputs through the stores (``ingestion.store`` for telemetry, ``anomaly.store`` for scores
and alert history) and pass ``open_connection``, a callable returning a short-lived connection context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from earnopt_assets.anomaly import store
from earnopt_assets.anomaly.detector import MIN_TRAINING_ROWS, AnomalyDetector, detection_features
from earnopt_assets.anomaly.notify import ENV_CHANNELS, DeliveryAttempt, Notifier, redact_text
from earnopt_assets.anomaly.rules import Alert, evaluate_rules, evaluated_until, silent_alerts
from earnopt_assets.anomaly.state import StateChange
from earnopt_assets.anomaly.store import NotificationDecision, RecordResult
from earnopt_assets.catalog import Catalog

# History the rules and features need before the first evaluated hour: 7 days + a day + slack.
HISTORY_HOURS = 168 + 24 + 8
# How far back the first alert cycle records history (stored as backfill, never sent).
BACKFILL_HOURS = 24 * 400
NO_CHANNEL_HINT = (
    "no alert channel configured: the alert went nowhere. Set alerts.channels in the catalog or "
    + " / ".join(ENV_CHANNELS)
)

OpenConnection = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
Log = Callable[[str], None]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def known_protocols(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Rows of catalog protocols only: every protocol name passes the catalog gate."""
    return frame.loc[frame["protocol"].isin(catalog.names)]


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainingResult:
    detector: AnomalyDetector
    version_dir: Path
    training_rows: int
    excluded_alert_rows: int
    training_scores: np.ndarray  # decision_function of the complete training rows

    @property
    def flagged_training_rows(self) -> int:
        return int((self.training_scores < 0).sum())


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(
        frame[["device", "protocol", "ts"]].assign(ts=lambda f: pd.to_datetime(f["ts"]).astype("datetime64[us]"))
    )


# A detection row is complete once its series has a week behind it (earnings vs the same hour last
# week, the resource z-score over the trailing 168 h) plus the hour itself.
COMPLETE_ROW_HOURS = 168 + 1


@dataclass(frozen=True)
class DetectorWarmup:
    """Not enough history to fit the detector yet: how far along the longest series is (#17)."""

    history_days: float
    needed_days: float
    complete_rows: int
    series: int

    @property
    def rule(self) -> str:
        return (
            f"the IsolationForest needs {MIN_TRAINING_ROWS} complete detection rows (not already alerted on); a row is "
            f"complete once its series has {COMPLETE_ROW_HOURS} h of history (the same hour last week and the trailing-week "
            f"resource z-score), so with {self.series} series that is {COMPLETE_ROW_HOURS} h + "
            f"ceil({MIN_TRAINING_ROWS} / {self.series}) h = {self.needed_days:.1f} days"
        )

    @property
    def summary(self) -> str:
        return f"warming up: {self.history_days:.1f} of {self.needed_days:.1f} days ({self.complete_rows} of {MIN_TRAINING_ROWS} rows)"


class DetectorWarmingUp(ValueError):
    """Raised by :func:`train_detector` when history is merely short: not a failure (the asset stays green)."""

    def __init__(self, warmup: DetectorWarmup) -> None:
        super().__init__(f"{warmup.summary}: {warmup.rule}")
        self.warmup = warmup


def detector_warmup(raw: pd.DataFrame, complete_rows: int) -> DetectorWarmup:
    """Progress of the longest series towards the detector's minimum history."""
    series = max(1, raw.groupby(["device", "protocol"]).ngroups) if not raw.empty else 1
    needed_hours = COMPLETE_ROW_HOURS + int(np.ceil(MIN_TRAINING_ROWS / series))
    if raw.empty:
        history_hours = 0.0
    else:
        ts = pd.to_datetime(raw["ts"])
        spans = ts.groupby([raw["device"], raw["protocol"]]).agg(lambda t: (t.max() - t.min()) / pd.Timedelta(hours=1) + 1)
        history_hours = float(spans.max())
    return DetectorWarmup(round(history_hours / 24.0, 1), needed_hours / 24.0, int(complete_rows), int(series))


def train_detector(raw: pd.DataFrame, feature_keys: pd.DataFrame | None, alerted: pd.DataFrame, catalog: Catalog,
                   target: Path) -> TrainingResult:
    """Fit on the rows of the feature table (hours with a full week of history; all rows when that table
    is missing) minus hours already alerted on, and save the detector under ``target``.

    Raises :class:`DetectorWarmingUp` when fewer than ``MIN_TRAINING_ROWS`` complete rows exist yet (history
    is short: not an error) and ValueError when the fit itself fails.
    """
    settings = catalog.alerts
    specs = {p.name: p for p in catalog.protocols}
    features = detection_features(known_protocols(raw, catalog), specs, settings.allocation_elasticity)
    keys = _keys(features)
    in_feature_table = (
        keys.isin(_keys(feature_keys)) if feature_keys is not None and not feature_keys.empty else np.ones(len(features), dtype=bool)
    )
    is_alerted = keys.isin(_keys(alerted)) if not alerted.empty else np.zeros(len(features), dtype=bool)
    train = features.loc[in_feature_table & ~is_alerted]
    complete = int(AnomalyDetector.complete_rows(train).sum()) if not train.empty else 0
    if complete < MIN_TRAINING_ROWS:
        raise DetectorWarmingUp(detector_warmup(known_protocols(raw, catalog), complete))
    detector = AnomalyDetector(contamination=settings.contamination).fit(train)
    version_dir = detector.save(target)
    scores = detector.decision_function(train.loc[AnomalyDetector.complete_rows(train)])
    return TrainingResult(detector, version_dir, detector.training_window.rows, int((in_feature_table & is_alerted).sum()), scores)


# ------------------------------------------------------------------------------------------- scoring


def score_recent(detector: AnomalyDetector, telemetry: pd.DataFrame, newest: datetime | None, catalog: Catalog) -> pd.DataFrame:
    """Detection features, ``score`` (decision_function, below 0 = anomalous) and ``is_anomaly`` of the
    hours after ``newest - score_hours``."""
    settings = catalog.alerts
    specs = {p.name: p for p in catalog.protocols}
    features = detection_features(known_protocols(telemetry, catalog), specs, settings.allocation_elasticity)
    if newest is not None and not features.empty:
        features = features.loc[pd.to_datetime(features["ts"]) > pd.Timestamp(newest) - pd.Timedelta(hours=settings.score_hours)]
    scores = detector.decision_function(features)
    return features.assign(score=scores, is_anomaly=scores < 0)


# ------------------------------------------------------------------------------------ the alert cycle


def cycle_window_hours(catalog: Catalog, first_run: bool) -> int:
    """Telemetry hours (before the newest hour) the cycle needs: the evaluation window, or the whole
    backfill on a first run, plus the rules' history."""
    return (BACKFILL_HOURS if first_run else catalog.alerts.evaluation_hours) + HISTORY_HOURS


def scores_since(catalog: Catalog, newest: datetime | None) -> datetime | None:
    """Scores newer than this hour feed the isolation_forest rule."""
    return None if newest is None else pd.Timestamp(newest).to_pydatetime() - timedelta(hours=catalog.alerts.evaluation_hours)


@dataclass
class AnomalyCycleResult:
    """Everything one alert cycle did; ``defs.render.anomaly_cycle_metadata`` turns it into the UI."""

    first_run: bool
    newest_hour: datetime | None
    candidates: list[Alert]
    record: RecordResult
    state_changes: list[StateChange]
    states: dict[tuple[str, str], dict]
    alert_status: dict[str, str]
    open_by_rule: pd.DataFrame
    notified: list[Alert] = field(default_factory=list)
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    delivery_counts: dict[str, int] = field(default_factory=lambda: {"sent": 0, "failed": 0, "no_channel": 0})
    channels: list[str] = field(default_factory=list)  # redacted targets
    config_error: str = ""

    @property
    def decisions(self) -> list[NotificationDecision]:
        return self.record.decisions

    @property
    def backfilled(self) -> int:
        return sum(1 for d in self.decisions if d.reason == "backfill")

    @property
    def suppressed_by_cooldown(self) -> int:
        return sum(1 for d in self.decisions if d.reason == "cooldown")

    @property
    def delivery_note(self) -> str:
        """One plain sentence on where this run's alerts went."""
        if self.config_error:
            return f"alert channels misconfigured, nothing sent: {self.config_error}"
        if not self.notified:
            return "nothing to send this run (no new alert outside its cooldown)"
        counts = self.delivery_counts
        if not self.channels:
            return f"{NO_CHANNEL_HINT} ({counts['no_channel']} alert(s) recorded, not sent)"
        parts = [f"{counts['sent']} sent", f"{counts['failed']} failed"]
        if counts["no_channel"]:
            parts.append(f"{counts['no_channel']} below every channel's min_severity (recorded, not sent)")
        return f"{len(self.notified)} alert(s) to notify via {', '.join(self.channels)}: " + ", ".join(parts)


def last_seen_hours(telemetry: pd.DataFrame) -> pd.DataFrame:
    """(device, protocol, latest_ts) of every series in ``telemetry``."""
    if telemetry.empty:
        return pd.DataFrame({"device": pd.Series(dtype=object), "protocol": pd.Series(dtype=object), "latest_ts": pd.Series(dtype="datetime64[us]")})
    return telemetry.groupby(["device", "protocol"], as_index=False)["ts"].max().rename(columns={"ts": "latest_ts"})


def run_anomaly_cycle(open_connection: OpenConnection, catalog: Catalog, telemetry: pd.DataFrame,
                      scores: pd.DataFrame | None, *, first_run: bool, last_seen: pd.DataFrame | None = None,
                      now: datetime | None = None,
                      environ: Mapping[str, str] | None = None, log: Log | None = None,
                      warn: Log | None = None) -> AnomalyCycleResult:
    """Rules -> record alerts (dedupe, cooldown, auto-resolve) -> protocol state -> notifications.

    ``telemetry``: raw rows of the evaluation window plus ``HISTORY_HOURS`` (the whole backfill on a first
    run). On a first run every hour is evaluated and recorded, only the last ``evaluation_hours`` may be
    sent. ``last_seen`` (device, protocol, latest_ts over all stored history; default: from ``telemetry``)
    feeds the ``silent`` rule, measured against the wall clock ``now``. Delivery happens with no
    connection open; it is bounded and never raises.
    """
    settings = catalog.alerts
    log = log or (lambda message: None)
    warn = warn or log
    now = now or _utcnow()
    telemetry = known_protocols(telemetry, catalog)
    newest = pd.Timestamp(telemetry["ts"].max()).to_pydatetime() if not telemetry.empty else None
    if scores is not None:
        scores = known_protocols(scores, catalog)
    notify_since = newest - timedelta(hours=settings.evaluation_hours - 1) if newest is not None else None
    candidates = evaluate_rules(telemetry, catalog, settings, scores=scores, start=None if first_run else notify_since)
    last_seen = known_protocols(last_seen if last_seen is not None else last_seen_hours(telemetry), catalog)
    candidates += silent_alerts(last_seen, now, settings.silent_lag_hours)
    candidates.sort(key=lambda a: (a.hour, a.protocol, a.rule))
    devices = sorted(set(telemetry["device"].astype(str)) | set(last_seen["device"].astype(str))) or [catalog.host.device]
    with open_connection() as conn:
        recorded = store.record_evaluation(
            conn, candidates, evaluated_until(telemetry), settings, devices, list(catalog.names),
            notify_since=notify_since, now=now,
        )
    result = AnomalyCycleResult(
        first_run=first_run, newest_hour=newest, candidates=candidates, record=recorded.result,
        state_changes=recorded.state_changes, states=recorded.states, alert_status=recorded.alert_status,
        open_by_rule=recorded.open_by_rule,
    )
    for decision in result.decisions:
        alert = decision.alert
        if decision.reason == "backfill":
            continue  # history of a first run: counted in the metadata, not logged one by one
        note = "notify" if decision.notify else "recorded only (cooldown)"
        (warn if alert.severity == "critical" else log)(
            f"alert {alert.id} [{alert.severity}] {alert.protocol}/{alert.rule} at {alert.hour:%Y-%m-%d %H:00}: {alert.message} -> {note}"
        )
    for change in result.state_changes:
        log(f"{change.device}/{change.protocol}: {change.from_state or 'untracked'} -> {change.to_state} ({change.reason})")

    result.notified = result.record.to_notify
    try:
        notifier = Notifier.from_settings(settings, environ, log=log)
    except ValueError as exc:
        # A broken channel variable must not lose the alerts: they are recorded; say so loudly.
        result.config_error = redact_text(str(exc)) or ""
        warn(f"alert channels misconfigured, nothing sent this run: {result.config_error}")
        notifier = Notifier([])
    with notifier:
        result.attempts = notifier.deliver_all(result.notified)
        result.channels = [c.target for c in notifier.channels]
    with open_connection() as conn:
        result.delivery_counts = store.record_deliveries(conn, result.notified, result.attempts)
    if result.notified and not result.channels:
        warn(result.delivery_note)
    return result
