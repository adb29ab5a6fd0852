"""When to retrain a protocol's model outside the daily schedule (plain Python; the sensor is thin).

Two triggers, checked per enabled protocol from its serving decision (``<models>/serving/<protocol>.json``):

* ``check_failed`` — the latest training run's challenger failed ``mape_within_target`` and that run is at
  least ``min_age_hours`` old (so a protocol that fails again is not retrained in a tight loop);
* ``drift`` — the LSTM champion serves and its live MAPE over the last ``window_hours`` of telemetry
  (its ``forecasts`` rows against the realised earnings) exceeds ``ratio`` x its holdout MAPE, with at
  least ``min_pairs`` (forecast, actual) pairs.

Every protocol not retrained gets one true, specific sentence saying why (the sensor's skip reason).
Run keys name the model version and the reason, so one version is retrained at most once per reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pandas as pd

from earnopt_assets.catalog import Catalog
from earnopt_assets.forecasting.registry import LSTM_SOURCE, read_serving_decision
from earnopt_assets.forecasting.store import realised_mape
from earnopt_assets.settings import EarnoptPaths
from earnopt_assets.warehouse import connect

log = logging.getLogger(__name__)

DRIFT_WINDOW_HOURS = 48
DRIFT_RATIO = 1.5
MIN_DRIFT_PAIRS = 24
MIN_AGE_HOURS_AFTER_FAILED_CHECK = 6.0


@dataclass(frozen=True)
class RetrainRequest:
    protocol: str
    reason: str  # "check_failed" or "drift"
    model_version: str
    detail: str

    @property
    def run_key(self) -> str:
        return f"retrain:{self.protocol}:{self.model_version}:{self.reason}"


@dataclass
class RetrainPlan:
    requests: list[RetrainRequest] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # protocol -> why it is not retrained now

    def skip_reason(self) -> str:
        if not self.waiting:
            return "no enabled protocol in the catalog"
        return "; ".join(self.waiting.values())


def _age_hours(stamp: object, now: datetime) -> float:
    try:
        parsed = pd.Timestamp(str(stamp))
    except (ValueError, TypeError):
        return float("inf")
    if pd.isna(parsed):
        return float("inf")
    parsed = parsed.tz_localize("UTC") if parsed.tzinfo is None else parsed.tz_convert("UTC")
    return (pd.Timestamp(now).tz_convert("UTC") - parsed) / pd.Timedelta(hours=1)


def retrain_plan(
    catalog: Catalog,
    paths: EarnoptPaths,
    now: datetime | None = None,
    *,
    window_hours: int = DRIFT_WINDOW_HOURS,
    ratio: float = DRIFT_RATIO,
    min_pairs: int = MIN_DRIFT_PAIRS,
    min_age_hours: float = MIN_AGE_HOURS_AFTER_FAILED_CHECK,
) -> RetrainPlan:
    """Protocols to retrain now, with why, and why each other one waits. Opens the warehouse read-only,
    briefly, only for the drift of LSTM-served protocols."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    plan = RetrainPlan()
    drift_candidates: list[tuple[str, str, float]] = []
    for name in catalog.enabled_names:
        protocol = catalog.require(name).name
        decision = read_serving_decision(paths.models, protocol)
        training = (decision.training or {}) if decision is not None else {}
        if decision is None or not training:
            plan.waiting[protocol] = f"{protocol} has no training run yet (the daily schedule trains it)"
            continue
        check = training.get("check") or {}
        version = str(training.get("challenger_version") or decision.model_version or "unknown")
        if check.get("passed") is not True:
            age = _age_hours(training.get("trained_at") or decision.decided_at, now)
            why = "; ".join(check.get("reasons") or []) or "MAPE check failed"
            if age >= min_age_hours:
                plan.requests.append(RetrainRequest(protocol, "check_failed", version, why))
            else:
                plan.waiting[protocol] = (
                    f"{protocol} failed its check ({why}) but was trained {age:.1f} h ago; retrain waits until {min_age_hours:g} h"
                )
            continue
        if decision.source == LSTM_SOURCE and decision.model_version and decision.mape_pct is not None:
            drift_candidates.append((protocol, decision.model_version, float(decision.mape_pct)))
        else:
            plan.waiting[protocol] = f"{protocol} passed its check; {decision.source} serves (live drift is tracked for LSTM champions only)"
    if drift_candidates:
        if not paths.warehouse.exists():
            for protocol, _, _ in drift_candidates:
                plan.waiting[protocol] = f"{protocol} passed its check; no warehouse yet to measure live drift"
            return plan
        try:
            with connect(paths.warehouse, read_only=True, timeout_s=5.0) as conn:
                for protocol, version, holdout in drift_candidates:
                    live, pairs = realised_mape(conn, catalog.host.device, protocol, version, window_hours)
                    if live is not None and pairs >= min_pairs and live > ratio * holdout:
                        detail = f"live MAPE {live:.2f}% over {pairs} forecast hours > {ratio:g} x holdout {holdout:.2f}%"
                        plan.requests.append(RetrainRequest(protocol, "drift", version, detail))
                    elif live is None or pairs < min_pairs:
                        plan.waiting[protocol] = f"{protocol} passed its check; only {pairs} live forecast hours (drift needs {min_pairs})"
                    else:
                        plan.waiting[protocol] = (
                            f"{protocol} passed its check; live MAPE {live:.2f}% over {pairs} h is within {ratio:g} x holdout {holdout:.2f}%"
                        )
        except (duckdb.Error, OSError) as exc:  # warehouse busy: try again next tick
            log.warning("drift check skipped: %s", exc)
            for protocol, _, _ in drift_candidates:
                plan.waiting[protocol] = f"{protocol} passed its check; drift not measured this tick (warehouse busy: {exc})"
    return plan


def retrain_requests(catalog: Catalog, paths: EarnoptPaths, now: datetime | None = None, **options) -> list[RetrainRequest]:
    """The requests of :func:`retrain_plan` only."""
    return retrain_plan(catalog, paths, now, **options).requests
