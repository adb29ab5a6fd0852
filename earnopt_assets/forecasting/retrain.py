"""When to retrain a protocol's model outside the daily schedule (plain Python; the sensor is thin).

Two triggers, checked per enabled protocol:

* ``check_failed`` — the current model's ``mape_within_target`` result is a failure and the model is at
  least ``min_age_hours`` old (so a model that fails again is not retrained in a tight loop);
* ``drift`` — the live MAPE of this model version's LSTM forecasts over the last ``window_hours`` of
  telemetry (``forecasts`` joined with ``raw_earnings``) exceeds ``ratio`` x its holdout MAPE, with at
  least ``min_pairs`` (forecast, actual) pairs.

Run keys name the model version and the reason, so one version is retrained at most once per reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
import pandas as pd

from earnopt_assets.catalog import Catalog
from earnopt_assets.forecasting.registry import check_passed, read_model_summary
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


def _age_hours(trained_at: object, now: datetime) -> float:
    try:
        stamp = pd.Timestamp(str(trained_at))
    except (ValueError, TypeError):
        return float("inf")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return (pd.Timestamp(now).tz_convert("UTC") - stamp) / pd.Timedelta(hours=1)


def retrain_requests(
    catalog: Catalog,
    paths: EarnoptPaths,
    now: datetime | None = None,
    *,
    window_hours: int = DRIFT_WINDOW_HOURS,
    ratio: float = DRIFT_RATIO,
    min_pairs: int = MIN_DRIFT_PAIRS,
    min_age_hours: float = MIN_AGE_HOURS_AFTER_FAILED_CHECK,
) -> list[RetrainRequest]:
    """Protocols to retrain now, with why. Opens the warehouse read-only, briefly, only for drift."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    requests: list[RetrainRequest] = []
    drift_candidates: list[tuple[str, str, float]] = []
    for name in catalog.enabled_names:
        protocol = catalog.require(name).name
        summary = read_model_summary(paths.models, protocol)
        if summary is None:
            continue
        version = str(summary["version"])
        passed = check_passed(summary)
        if passed is False:
            age = _age_hours(summary.get("trained_at"), now)
            if age >= min_age_hours:
                reasons = "; ".join((summary.get("mape_check") or {}).get("reasons") or [])
                requests.append(RetrainRequest(protocol, "check_failed", version, reasons or "MAPE check failed"))
            continue
        holdout = ((summary.get("metrics") or {}).get("model") or {}).get("mape")
        if passed and holdout is not None:
            drift_candidates.append((protocol, version, float(holdout)))
    if drift_candidates and paths.warehouse.exists():
        try:
            with connect(paths.warehouse, read_only=True, timeout_s=5.0) as conn:
                for protocol, version, holdout in drift_candidates:
                    live, pairs = realised_mape(conn, catalog.host.device, protocol, version, window_hours)
                    if live is not None and pairs >= min_pairs and live > ratio * holdout:
                        requests.append(
                            RetrainRequest(
                                protocol,
                                "drift",
                                version,
                                f"live MAPE {live:.2f}% over {pairs} forecast hours > {ratio:g} x holdout {holdout:.2f}%",
                            )
                        )
        except (duckdb.Error, OSError) as exc:  # warehouse busy: try again next tick
            log.warning("drift check skipped: %s", exc)
    return requests
