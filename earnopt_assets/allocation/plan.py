"""Pure allocation planning: the cycle's inputs, the optimiser call, the checks, the decision, the actions.

No I/O here: :mod:`earnopt_assets.allocation.cycle` reads the inputs through the stores and records the
plan through :mod:`earnopt_assets.allocation.store`; the API service calls the same functions without writes.

* :func:`assemble_inputs` - per protocol: expected $/h from the latest forecast (or a seasonal-naive
  fallback from telemetry), the response curve learned from the last 56 days of (ts, allocation, earnings)
  (:func:`earnopt_assets.numerics.response.learn_response_curve`), the potential, the current allocation
  and whether it is degraded.
* :func:`compute_plan` - optimiser, the two plan checks, the reallocation decision, the actions. The plan
  is APPLIED only if the decision says reallocate AND both checks passed.
* :func:`request_inputs` - the API's variant: posted current shares and predictions override the stored ones.

Potential earnings. A forecast f_i ($/h) describes the protocol at the allocation a_i it is expected to run
at, so its full-allocation potential is (:func:`potential_from_forecast`)::

    p_i = f_i / r_i(a_i)             (a_i >= 0.02 and r_i(a_i) >= 0.02; r_i = x**beta_i, or the learned
                                      curve's interpolant at a_i, ResponseCurve.at_share)
    p_i = k_i                        (otherwise, or no forecast: the curve's own scale)

Snapping (:func:`snap_to_observed`). The optimiser plans on the concave envelope of each learned curve,
which overstates a step curve (whole leases, a storage minimum) between its steps. Its answer x is
therefore moved down to the least observed share that earns what x earns on the learned curve itself,
s_i = min{s_j observed : r_i(s_j) >= r_i(x_i)} (the minimum share when x_i is below every observed share),
those protocols are fixed there and the others re-solved with the resources this frees, until no share
moves (at most 4 rounds). Every plan is then evaluated, and decided on, with the learned curve r_i, never
with its envelope.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from earnopt_assets.allocation.allocator import (
    RESOURCES,
    AllocationResult,
    CheckOutcome,
    DecisionThresholds,
    ProtocolRequirements,
    ReallocationDecision,
    ResourceAllocator,
    ResourceConstraints,
    check_constraints,
    check_solver_status,
    resource_use,
    should_reallocate,
    utilization_pct,
)
from earnopt_assets.allocation.risk import (
    Z_80_LOWER,
    apply_risk_rule,
    downside_sd,
    gain_sd,
    planning_potentials,
    potential_sd,
)
from earnopt_assets.catalog import Catalog
from earnopt_assets.numerics.response import RUN_CHANGE, ResponseCurve, learn_response_curve

logger = logging.getLogger("earnopt.allocation")

PLAN_VERSION = 1
CURVE_WINDOW_DAYS = 56  # the response is learned from the shares seen over 8 weeks
SNAP_ROUNDS = 4
OBSERVED_ALLOCATION_HOURS = 24
MIN_OBSERVED_ALLOCATION = 0.02
NO_CHANGE = 1e-6

# "prior", "recent_level", "seasonal_naive_24_level_blend": the young-series steps of forecasting.warmup (#17); a stored forecast
# passes its own source through (forecasting.registry: lstm, lstm_base_only, mstl, ets, seasonal_naive_*, ...)
ForecastSource = str
Action = Literal["restart", "adjust", "keep"]
PlanStatus = Literal["applied", "kept", "rejected"]
EarningsBasis = Literal["current_allocation", "full_allocation"]
CurrentSource = Literal["applied_plan", "applied_plan_unconfirmed", "telemetry", "catalog_initial", "request"]

CONFIRM_TOLERANCE = 0.01  # a reported share within 1 pp of the plan's confirms it
CONFIRM_GRACE = timedelta(hours=2)  # telemetry is hourly: a fresh plan waits this long for its first reported hour


def utc_now() -> datetime:
    """Naive UTC, like every TIMESTAMP in the warehouse."""
    return datetime.now(UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ProtocolInputs:
    """Everything the cycle knows about one protocol."""

    name: str
    forecast_usd_per_hour: float  # expected $/h at the share the forecast was made for
    forecast_source: ForecastSource
    forecast_detail: str
    observed_allocation: float | None
    curve: ResponseCurve
    potential_usd_per_hour: float  # p_i, at allocation 1.0
    current_allocation: float
    state_source: Literal["state", "initial"]  # whether an applied plan's allocation_state row exists
    degraded_reason: str | None = None
    current_source: CurrentSource = "catalog_initial"  # how current_allocation is known (allocation_in_force)
    current_detail: str = "catalog initial share (nothing reported, no plan applied; not in force)"
    disagreement: str | None = None  # the applied plan and telemetry disagree: what telemetry says instead
    forecast_sd_usd_per_hour: float = 0.0  # downside sd from the forecast's 80 % interval (allocation.risk), 0 = none

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    @property
    def in_force(self) -> bool:
        """True when current_allocation is known to run (an applied plan or telemetry), not a catalog guess."""
        return self.current_source != "catalog_initial"


@dataclass(frozen=True)
class CycleInputs:
    device: str
    now: datetime
    protocols: dict[str, ProtocolInputs]
    notes: list[str] = field(default_factory=list)


def initial_allocation(catalog: Catalog) -> dict[str, float]:
    """Allocation for protocols without state: every enabled protocol at l_i + theta (u_i - l_i).

    theta in [0, 1] is the largest value that fits every resource (an even share of the headroom left
    by the minimums): theta = min(1, min_r (T_r - sum_i l_i R_ir) / sum_i (u_i - l_i) R_ir), floored
    at 0 (if the minimums alone do not fit, start at the minimums and let the checks report it).
    """
    specs = catalog.enabled
    totals = catalog.host.available()  # T_r = host total - earnopt's reserve
    theta = 1.0
    for resource in RESOURCES:
        base = sum(s.min_allocation * s.resource_vector()[resource] for s in specs)
        span = sum((s.max_allocation - s.min_allocation) * s.resource_vector()[resource] for s in specs)
        if span > 0:
            theta = min(theta, (totals[resource] - base) / span)
    theta = max(0.0, theta)
    # 1e-9 below the boundary so float rounding never puts the initial plan a hair over a total.
    return {s.name: s.min_allocation + max(0.0, theta - 1e-9) * (s.max_allocation - s.min_allocation) for s in specs}


def _expected_from_forecast(values: np.ndarray, targets: np.ndarray, now: datetime, mode: str) -> float:
    """Next-hour value (the first target after ``now``, else the first) or the mean of the horizon."""
    if mode == "next_hour":
        future = np.nonzero(targets > np.datetime64(now))[0]
        return float(values[future[0]] if future.size else values[0])
    return float(np.mean(values))


def _hour(value: Any) -> str:
    return f"{pd.Timestamp(value):%Y-%m-%d %H:%M}"


def allocation_in_force(
    plan_row: Mapping[str, Any] | None, series: pd.DataFrame | None, initial: float, now: datetime,
    confirmed: Mapping[str, Any] | None = None,
) -> tuple[float, CurrentSource, str, str | None]:
    """The share a protocol actually runs at: (share, source, detail, disagreement or None).

    0. First, the actuator's confirmation (``confirmed``: share and confirmed_at read back from the
       container by ``docker inspect``, earnopt_assets.actuation): when it confirms the applied plan's share
       at or after the plan, that plan is ``applied_plan`` without waiting for telemetry.

    Telemetry reports the share every protocol ran at each hour (``allocation``). With a plan applied at t
    (its ``allocation_state`` row) the hours from floor_h(t) + 1 h on show whether it was put in force:

    1. the plan's share when the newest such hour reports it (within 0.01): ``applied_plan``;
    2. the plan's share while no such hour exists and the plan is younger than 2 h: ``applied_plan_unconfirmed``;
    3. otherwise the last reported share: ``telemetry`` (with a disagreement when a plan exists: the
       orchestrator did not apply it);
    4. nothing reported and no plan: the catalog's initial share, ``catalog_initial``, which is NOT in force.
    """
    has_series = series is not None and len(series) > 0
    reported = float(series["allocation"].iloc[-1]) if has_series else None
    reported_at = series["ts"].iloc[-1] if has_series else None
    if plan_row is not None:
        share, applied_at, cycle = float(plan_row["allocation"]), pd.Timestamp(plan_row["updated_at"]), plan_row.get("cycle_id")
        plan_text = f"plan {cycle} ({_pct(share)}, applied {_hour(applied_at)})"
        if (confirmed is not None and pd.Timestamp(confirmed["confirmed_at"]) >= applied_at
                and abs(float(confirmed["share"]) - share) <= CONFIRM_TOLERANCE):
            return share, "applied_plan", f"{plan_text} confirmed by the actuator (docker inspect) at {_hour(confirmed['confirmed_at'])}", None
        after = series[pd.to_datetime(series["ts"]) >= applied_at.floor("h") + pd.Timedelta(hours=1)] if has_series else None
        if after is not None and len(after):
            seen, seen_at = float(after["allocation"].iloc[-1]), after["ts"].iloc[-1]
            if abs(seen - share) <= CONFIRM_TOLERANCE:
                return share, "applied_plan", f"{plan_text} confirmed by telemetry at {_hour(seen_at)}", None
            disagreement = (f"telemetry reports {_pct(seen)} at {_hour(seen_at)}, not the {_pct(share)} of {plan_text}: "
                            "the orchestrator did not apply the plan")
            return seen, "telemetry", f"reported at {_hour(seen_at)} (differs from {plan_text})", disagreement
        if pd.Timestamp(now) - applied_at <= pd.Timedelta(CONFIRM_GRACE):
            return share, "applied_plan_unconfirmed", f"{plan_text}; its first telemetry hour has not arrived yet", None
        if reported is not None:
            disagreement = (f"no telemetry since {plan_text}; the last reported share {_pct(reported)} "
                            f"({_hour(reported_at)}) is used")
            return reported, "telemetry", f"reported at {_hour(reported_at)} (before {plan_text})", disagreement
        return share, "applied_plan_unconfirmed", f"{plan_text}; no telemetry at all to confirm it", None
    if reported is not None:
        return reported, "telemetry", f"reported at {_hour(reported_at)} (no plan applied yet)", None
    return initial, "catalog_initial", "catalog initial share (nothing reported, no plan applied; not in force)", None


def _reported_at(series: pd.DataFrame | None, when: Any) -> float | None:
    """The share reported at the newest hour <= ``when`` (the forecast's origin), else None."""
    if series is None or not len(series) or when is None:
        return None
    before = series[pd.to_datetime(series["ts"]) <= pd.Timestamp(when)]
    return float(before["allocation"].iloc[-1]) if len(before) else None


def potential_from_forecast(expected_usd_per_hour: float, at_allocation: float | None, curve: ResponseCurve) -> tuple[float, str]:
    """Full-allocation potential p = f / r(a) of a forecast f made for allocation a, and how it was got.

    Below a = 0.02, where r(a) < 0.02 (the learned curve pays nothing there) or with no allocation, the
    forecast says nothing about full allocation, so the curve's scale k is used.
    """
    if at_allocation is not None and at_allocation >= MIN_OBSERVED_ALLOCATION:
        response = float(curve.at_share(at_allocation))
        if response >= MIN_OBSERVED_ALLOCATION:
            how = "the learned curve" if curve.learned else f"x^beta (beta {curve.beta:.3f})"
            return expected_usd_per_hour / response, f"forecast at share {at_allocation:.3f} / r(x) = {response:.3f} on {how}"
    return float(curve.scale_usd_per_hour), "curve scale (share below 0.02, a share the curve pays nothing at, or unknown)"


def potential_from_running_hours(series: pd.DataFrame | None, curve: ResponseCurve,
                                 hours: int = OBSERVED_ALLOCATION_HOURS) -> tuple[float, str] | None:
    """Full-allocation potential of a protocol that is off, on the basis a running protocol's has.

    A running protocol's potential is f / r(a), its forecast f made from lags re-expressed at its share a
    (e_t r(a) / r(a_t)), so p = f / r(a) is a forecast of the lags' e_t / r(a_t). The protocol that is off
    gets the same quantity from its last ``hours`` running hours:

        p = mean_t e_t / r(a_t)   over its newest hours with r(a_t) >= 0.02, the first hour of each run
                                  (a restart, priced by the restart rule) left out

    The curve's scale k (the best level over 30 days, a maximum over noisy levels) is a different basis:
    against it whichever protocol is off looked better every hour (issue 12, seed 3). None without such
    hours (the caller then uses k)."""
    if series is None or not len(series) or not curve.learned:
        return None
    shares = series["allocation"].to_numpy(float)
    earnings = series["earnings_usd"].to_numpy(float)
    response = np.asarray(curve.at_share(shares), dtype=float)
    restart = np.r_[False, np.abs(np.diff(shares)) > RUN_CHANGE]
    usable = np.flatnonzero((response >= MIN_OBSERVED_ALLOCATION) & ~restart & np.isfinite(earnings) & (earnings >= 0))
    if not usable.size:
        return None
    last = usable[-hours:]
    since = pd.Timestamp(series["ts"].iloc[last[0]])
    return (float(np.mean(earnings[last] / response[last])),
            f"off: its last {last.size} running hours (from {_hour(since)}) / r(x) on the learned curve")


def assemble_inputs(
    catalog: Catalog,
    now: datetime,
    *,
    history: Mapping[str, pd.DataFrame],
    forecasts: Mapping[str, pd.DataFrame],
    state: Mapping[str, Mapping[str, Any]],
    degraded: Mapping[str, str],
    notes: list[str] | None = None,
    forecast_plans: Mapping[str, float] | None = None,
    confirmed: Mapping[str, Mapping[str, Any]] | None = None,
) -> CycleInputs:
    """Turn what the stores returned into the cycle's inputs (pure).

    ``history``: per protocol the last 30 days of telemetry (ts, earnings_usd, allocation);
    ``forecasts``: per protocol the rows of its newest forecast (target_ts, value, source, forecast_time,
    origin_ts); ``state``: per protocol the last applied plan's ``allocation_state`` row (allocation,
    updated_at, cycle_id); ``degraded``: protocol -> reason; ``forecast_plans``: per protocol the applied
    plan's share in force when its forecast was made.

    The current allocation is the one in force (:func:`allocation_in_force`). The potential divides the
    forecast by the response at the share the forecast was made for: the planned share it was conditioned
    on (``forecast_plans``), else the share reported at its origin hour (held); the seasonal-naive fallback
    repeats the last 24 hours, so it is divided at their mean reported share.
    """
    from earnopt_assets.forecasting.warmup import prior_forecast, young_forecast, young_history
    from earnopt_assets.numerics.baselines import fallback_forecast

    device = catalog.host.device
    settings = catalog.allocation
    names = [catalog.require(name).name for name in catalog.enabled_names]
    notes = list(notes or [])
    initial = initial_allocation(catalog)

    protocols: dict[str, ProtocolInputs] = {}
    for name in names:
        series = history.get(name)
        if series is not None and len(series):
            curve = learn_response_curve(series["ts"], series["allocation"].to_numpy(float), series["earnings_usd"].to_numpy(float))
            recent_alloc = series["allocation"].to_numpy(float)[-OBSERVED_ALLOCATION_HOURS:]
            observed: float | None = float(np.mean(recent_alloc))
        else:
            curve, observed = ResponseCurve(method="no_data"), None

        forecast = forecasts.get(name)
        basis = observed  # the share the expected earnings were made for (see the docstring)
        last_target = forecast["target_ts"].max() if forecast is not None and len(forecast) else None
        lower = None  # the 80 % interval's lower end on the same basis as the value (allocation.risk)
        if last_target is not None and pd.Timestamp(last_target) >= pd.Timestamp(now) - pd.Timedelta(hours=1):
            values = forecast["value"].to_numpy(float)
            value = _expected_from_forecast(values, forecast["target_ts"].to_numpy("datetime64[us]"), now, settings.expected_earnings)
            if "lower_80" in forecast and forecast["lower_80"].notna().all():
                lower = _expected_from_forecast(forecast["lower_80"].to_numpy(float), forecast["target_ts"].to_numpy("datetime64[us]"), now, settings.expected_earnings)
            sources = set(forecast["source"].astype(str))
            # the forecast's true source (lstm, lstm_base_only, mstl, ets, seasonal_naive_*, a warm-up step (#17), ...)
            source: ForecastSource = "+".join(sorted(sources))
            detail = f"forecast of {pd.Timestamp(forecast['forecast_time'].iloc[0])} ({', '.join(sorted(sources))})"
            planned = (forecast_plans or {}).get(name)
            origin = forecast["origin_ts"].iloc[0] if "origin_ts" in forecast else None
            held = _reported_at(series, origin)
            if planned is not None:
                basis, detail = planned, f"{detail}, conditioned on the planned share {_pct(planned)}"
            elif held is not None:
                basis, detail = held, f"{detail}, share held at {_pct(held)} from its origin hour"
        elif series is not None and len(series):
            why = "no forecast" if last_target is None else f"latest forecast ends {pd.Timestamp(last_target)}, before now"
            if young_history(series):  # the warm-up step, with its widened interval (#17)
                step = young_forecast(series["ts"], series["earnings_usd"].to_numpy(float), why=why)
                values, source, detail = step.values, step.source, step.reason
                lower = float(step.intervals["lower_80"][0] if settings.expected_earnings == "next_hour" else np.mean(step.intervals["lower_80"]))
            else:
                _, values = fallback_forecast(series["ts"], series["earnings_usd"].to_numpy(float))
                source = "seasonal_naive_fallback"
                detail = f"{why}: seasonal naive from raw_earnings up to {pd.Timestamp(series['ts'].iloc[-1])}"
            value = float(values[0] if settings.expected_earnings == "next_hour" else np.mean(values))
        else:
            # no telemetry yet: the catalog's prior at the initial share, with its wide interval (#17)
            step = prior_forecast(catalog.require(name).prior_expected_usd_per_hour, initial[name], pd.Timestamp(now))
            value, source, detail = float(step.values[0]), "prior", "no forecast and no telemetry: " + step.reason
            lower, basis = float(step.intervals["lower_80"][0]), initial[name]
        if not math.isfinite(value) or value < 0:
            what = "is not a number" if math.isnan(value) else f"of {value:.6g} $/h is not a finite non-negative earning"
            notes.append(f"{name}: forecast {what}; 0 used")
            value = 0.0

        potential, _ = potential_from_forecast(value, basis if source != "no_data" else None, curve)
        if basis is None or basis < MIN_OBSERVED_ALLOCATION or float(curve.at_share(basis)) < MIN_OBSERVED_ALLOCATION:
            running = potential_from_running_hours(series, curve)  # off: the running protocols' basis, not k
            if running is not None:
                potential, off_detail = running
                detail = f"{detail}; {off_detail}"
        if source == "prior":
            potential = catalog.require(name).prior_expected_usd_per_hour
        current, current_source, current_detail, disagreement = allocation_in_force(state.get(name), series, initial[name], now,
                                                                                    (confirmed or {}).get(name))
        if disagreement:
            notes.append(f"{name}: {disagreement}")
        protocols[name] = ProtocolInputs(
            name=name,
            forecast_usd_per_hour=value,
            forecast_source=source,
            forecast_detail=detail,
            observed_allocation=observed,
            curve=curve,
            potential_usd_per_hour=float(potential),
            current_allocation=current,
            state_source="state" if name in state else "initial",
            degraded_reason=degraded.get(name),
            current_source=current_source,
            current_detail=current_detail,
            disagreement=disagreement,
            forecast_sd_usd_per_hour=downside_sd(value, lower),
        )
    unknown_degraded = sorted(set(degraded) - set(names))
    if unknown_degraded:
        notes.append(f"degraded protocols not enabled in the catalog ignored: {', '.join(unknown_degraded)}")
    return CycleInputs(device=device, now=now, protocols=protocols, notes=notes)


def empty_inputs(catalog: Catalog, now: datetime, reason: str) -> CycleInputs:
    """Inputs when nothing can be read (no warehouse yet): prior curves, catalog initial shares, no data."""
    initial = initial_allocation(catalog)
    protocols = {
        name: ProtocolInputs(
            name=name, forecast_usd_per_hour=0.0, forecast_source="no_data", forecast_detail=reason,
            observed_allocation=None, curve=ResponseCurve(method="no_data"), potential_usd_per_hour=0.0,
            current_allocation=initial[name], state_source="initial",
        )
        for name in catalog.enabled_names
    }
    return CycleInputs(device=catalog.host.device, now=now, protocols=protocols,
                       notes=[f"{reason}: prior response curves, catalog initial allocations"])


def request_inputs(
    inputs: CycleInputs,
    mode: str,
    current_allocations: Mapping[str, float],
    predictions: Mapping[str, list[float]],
    basis: EarningsBasis = "current_allocation",
) -> CycleInputs:
    """The API's inputs: posted current shares and earnings predictions override the stored ones (pure).

    A prediction (values per future hour; ``mode`` 'next_hour' takes the first, else the mean) f_i at the
    current share x_i gives p_i = f_i / x_i**beta_i; with ``basis='full_allocation'`` p_i = f_i. Below
    x = 0.02 the fitted curve's scale is used, or, with no telemetry, the prediction itself.
    """
    notes = list(inputs.notes)
    protocols: dict[str, ProtocolInputs] = {}
    for name, item in inputs.protocols.items():
        current = float(current_allocations.get(name, item.current_allocation))
        if name in predictions:
            values = predictions[name]
            predicted = float(values[0] if mode == "next_hour" else sum(values) / len(values))
            if basis == "full_allocation":
                potential, detail = predicted, "request (at full allocation)"
            elif current >= MIN_OBSERVED_ALLOCATION and float(item.curve.at_share(current)) >= MIN_OBSERVED_ALLOCATION:
                potential = predicted / float(item.curve.at_share(current))
                detail = f"request at allocation {current:.3f} / r(x) = {float(item.curve.at_share(current)):.3f}"
            elif item.curve.method != "no_data" and item.curve.scale_usd_per_hour > 0:
                potential, detail = item.curve.scale_usd_per_hour, "request at ~0 allocation: fitted curve scale"
            else:
                potential, detail = predicted, "request at ~0 allocation, no curve: prediction taken as full-allocation"
                notes.append(f"{name}: prediction at allocation ~0 without telemetry treated as its full-allocation potential")
            item = replace(item, forecast_usd_per_hour=predicted, forecast_source="request", forecast_detail=detail,
                           potential_usd_per_hour=float(potential))
        if name in current_allocations:
            item = replace(item, current_source="request", current_detail="posted in the request")
        protocols[name] = replace(item, current_allocation=current)
    return replace(inputs, protocols=protocols, notes=notes)


def has_predictions(inputs: CycleInputs) -> bool:
    """False when no protocol has a forecast, telemetry or posted prediction: nothing to optimise."""
    return any(p.forecast_source not in ("no_data", "prior") for p in inputs.protocols.values())


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ProtocolPlan:
    name: str
    current: float
    proposed: float | None
    target: float
    action: Action
    reason: str
    degraded: bool
    expected_current_usd_per_hour: float
    expected_proposed_usd_per_hour: float
    potential_usd_per_hour: float
    response_beta: float
    forecast_source: str
    restart_minutes: float


@dataclass(frozen=True)
class AllocationPlan:
    cycle_id: str
    device: str
    created_at: datetime
    status: PlanStatus
    applied: bool
    result: AllocationResult
    decision: ReallocationDecision
    checks: dict[str, CheckOutcome]
    protocols: dict[str, ProtocolPlan]
    target_utilization: dict[str, float]
    inputs: CycleInputs
    gain_sd_usd_per_hour: float = 0.0  # sd of the expected gain (allocation.risk.gain_sd)
    risk_aversion: float = 0.0

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks.values())

    @property
    def target(self) -> dict[str, float]:
        return {n: p.target for n, p in self.protocols.items()}

    @property
    def restarts(self) -> list[str]:
        """The protocols this cycle restarts: the ONE list behind the actions, the metadata and the prose."""
        return [n for n, p in self.protocols.items() if p.action == "restart"]

    @property
    def expected_gain_usd_per_hour(self) -> float:
        """Expected $/h gained by what runs after the cycle (0 unless the plan is applied)."""
        return self.decision.improvement_usd_per_hour if self.applied else 0.0

    @property
    def gain_interval_80(self) -> tuple[float, float]:
        """80 % interval of the proposed move's gain ($/h): G -/+ 1.2816 sd (allocation.risk)."""
        gain = self.decision.improvement_usd_per_hour
        return gain - Z_80_LOWER * self.gain_sd_usd_per_hour, gain + Z_80_LOWER * self.gain_sd_usd_per_hour

    @property
    def expected_target_usd_per_hour(self) -> float:
        return self.decision.proposed_usd_per_hour if self.applied else self.decision.current_usd_per_hour

    def to_json(self) -> dict[str, Any]:
        """The document the orchestrator consumes (``data/allocation/latest.json``)."""
        return {
            "version": PLAN_VERSION,
            "cycle_id": self.cycle_id,
            "device": self.device,
            "created_at": self.created_at.isoformat() + "Z",
            "status": self.status,
            "applied": self.applied,
            "decision": "reallocate" if self.decision.reallocate else "keep",
            # Only shares known to run after the cycle: a catalog initial share nobody applied is not in force.
            "allocations": {n: p.target for n, p in self.protocols.items() if self.applied or self.inputs.protocols[n].in_force},
            "actions": {
                n: {
                    "action": p.action,
                    "allocation": p.target,
                    "previous": p.current,
                    "proposed": p.proposed,
                    "restart_minutes": p.restart_minutes if p.action == "restart" else 0.0,
                    "reason": p.reason,
                }
                for n, p in self.protocols.items()
            },
            "expected_usd_per_hour": {
                "current": self.decision.current_usd_per_hour,
                "proposed": self.decision.proposed_usd_per_hour,
                "target": self.expected_target_usd_per_hour,
            },
            "expected_gain_usd_per_hour": self.expected_gain_usd_per_hour,
            "expected_gain_interval_80_usd_per_hour": list(self.gain_interval_80),
            "risk_aversion": self.risk_aversion,
            "restarts": self.restarts,
            "resource_utilization_pct": {"target": self.target_utilization, "proposed": self.result.resource_utilization},
            "solver": {
                "name": self.result.solver,
                "status": self.result.solver_status,
                "solve_seconds": self.result.solve_seconds,
                "fallback_reason": self.result.fallback_reason,
                "diagnosis": self.result.diagnosis,
            },
            "checks": {n: asdict(c) for n, c in self.checks.items()},
            "decision_analysis": self.decision.to_dict(),
            "inputs": {
                n: {
                    "forecast_usd_per_hour": p.forecast_usd_per_hour,
                    "forecast_source": p.forecast_source,
                    "forecast_detail": p.forecast_detail,
                    "observed_allocation": p.observed_allocation,
                    "potential_usd_per_hour": p.potential_usd_per_hour,
                    "response_curve": p.curve.to_dict(),
                    "state_source": p.state_source,
                    "current_source": p.current_source,
                    "current_detail": p.current_detail,
                    "degraded_reason": p.degraded_reason,
                }
                for n, p in self.inputs.protocols.items()
            },
            "notes": self.inputs.notes,
        }


_ALLOCATORS: dict[ResourceConstraints, ResourceAllocator] = {}


def shared_allocator(constraints: ResourceConstraints) -> ResourceAllocator:
    """One allocator per host totals in this process, so a long-lived process (the API service, a
    benchmark) re-solves its cached DPP problem instead of rebuilding it every cycle."""
    allocator = _ALLOCATORS.get(constraints)
    if allocator is None:
        if len(_ALLOCATORS) >= 8:
            _ALLOCATORS.clear()
        allocator = _ALLOCATORS[constraints] = ResourceAllocator(constraints)
    return allocator


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _action(
    current: float,
    target: float,
    proposed: float | None,
    degraded_reason: str | None,
    threshold: float,
    status: PlanStatus,
) -> tuple[Action, str]:
    """What the orchestrator does with one protocol after the cycle, and a reason that is true for it.

    A change |target - current| above ``threshold`` restarts the protocol; a smaller one adjusts its limits
    in place; a degraded protocol restarts in any case (at its minimum share only when the plan is applied).
    """
    change = target - current
    if degraded_reason is not None:
        where = (f"at its minimum share {_pct(target)}" if status == "applied"
                 else f"in place at {_pct(current)} (plan {status}, share unchanged)")
        return "restart", f"degraded ({degraded_reason}): restart {where}"
    if abs(change) > threshold + 1e-9:
        return "restart", f"{_pct(current)} -> {_pct(target)} ({100 * change:+.1f} pp) is above {100 * threshold:g} pp: restart"
    if abs(change) > NO_CHANGE:
        return "adjust", f"{_pct(current)} -> {_pct(target)} ({100 * change:+.1f} pp) is within {100 * threshold:g} pp: adjust limits in place"
    if proposed is not None and abs(proposed - current) > NO_CHANGE:
        return "keep", f"stays at {_pct(current)}: plan {status}, the proposed {_pct(proposed)} is not applied"
    return "keep", f"stays at {_pct(current)}: the optimum is the current share"


def raw_constraints_check(
    result: AllocationResult,
    requirements: Mapping[str, ProtocolRequirements],
    constraints: ResourceConstraints,
    degraded: frozenset[str],
) -> CheckOutcome:
    """``constraints_satisfied`` on the solver's raw solution (before clipping to the bounds); the
    clipping applied to reach the proposed shares is recorded apart as ``max_clip_share``."""
    raw = result.raw_allocations or result.allocations
    outcome = check_constraints(raw, requirements, constraints, degraded)
    return replace(outcome, metadata={**outcome.metadata, "max_clip_share": float(result.max_clip)})


def _snapped_share(curve: ResponseCurve, share: float, requirement: ProtocolRequirements, upper: float) -> float:
    """s_down = min{observed s_j : r(s_j) >= r(share)} within the protocol's bounds (module docstring)."""
    if not curve.learned:
        return share
    start = curve.plateau_start(share)
    target = requirement.min_allocation if start is None else start
    return float(min(max(target, requirement.min_allocation), upper, share))


def snap_to_observed(
    allocator: ResourceAllocator,
    result: AllocationResult,
    requirements: Mapping[str, ProtocolRequirements],
    potentials: Mapping[str, float],
    current: Mapping[str, float],
    degraded: frozenset[str],
    curves: Mapping[str, ResponseCurve],
    change_penalty: float,
) -> AllocationResult:
    """Move the optimiser's answer onto observed-good shares of the learned curves (module docstring).

    Protocols whose share moves down are fixed there and the rest re-solved; the returned result keeps the
    last solve's status and raw solution (what the constraints check reads) with the snapped shares, which
    use no more of any resource than that solution. A step up (the next lease, a storage minimum) is the
    exact discrete check's part (:func:`discrete_check`)."""
    fixed: dict[str, float] = {}
    for _ in range(SNAP_ROUNDS):
        if not result.allocations:
            return result
        moved = False
        for name, share in result.allocations.items():
            requirement = requirements[name]
            upper = requirement.min_allocation if name in degraded else requirement.max_allocation
            target = _snapped_share(curves[name], share, requirement, upper)
            if name not in fixed and target < share - NO_CHANGE:
                fixed[name] = target
                moved = True
        if not moved:
            break
        bounded = {n: replace(r, min_allocation=fixed[n], max_allocation=fixed[n]) if n in fixed else r for n, r in requirements.items()}
        resolved = allocator.optimize_allocation(bounded, potentials, current, degraded, response_curves=curves, change_penalty=change_penalty)
        if not resolved.allocations:  # keep the first feasible answer rather than none
            break
        result = resolved
    shares = {}
    for name, share in result.allocations.items():
        requirement = requirements[name]
        upper = requirement.min_allocation if name in degraded else requirement.max_allocation
        shares[name] = fixed.get(name, _snapped_share(curves[name], share, requirement, upper))
    by_protocol = {n: float(potentials[n] * curves[n].relative(s)) for n, s in shares.items()}
    return replace(result, allocations=shares, expected_earnings=float(sum(by_protocol.values())),
                   expected_earnings_by_protocol=by_protocol,
                   resource_utilization=utilization_pct(resource_use(shares, requirements), allocator.constraints))


def _options(curve: ResponseCurve, low: float, high: float) -> np.ndarray:
    """The shares a protocol may run at in the discrete check: its observed shares within [low, high] and low
    (learned curve), else a 0.01 grid."""
    if curve.learned:
        knots = np.asarray(curve.knots)
        return np.unique(np.r_[low, knots[(knots >= low - 1e-9) & (knots <= high + 1e-9)]])
    return np.unique(np.r_[np.arange(low, high + 1e-9, 0.01), high])


def discrete_check(
    result: AllocationResult,
    requirements: Mapping[str, ProtocolRequirements],
    potentials: Mapping[str, float],
    current: Mapping[str, float],
    degraded: frozenset[str],
    curves: Mapping[str, ResponseCurve],
    change_penalty: float,
    totals: Mapping[str, float],
    restart_cost_per_hour: Mapping[str, float] | None = None,
    threshold: float = 0.05,
) -> AllocationResult:
    """Evaluate a second candidate plan on the learned (non-concave) curves and keep the better one.

    The candidate is the exact optimum over the observed shares,

        max sum_i [p_i r_i(s) - lambda |s - c_i| - [|s - c_i| > threshold] C_i]

    over one option s per protocol (:func:`_options`) subject to the resource totals, a small mixed-integer
    program (scipy ``milp``/HiGHS, one binary per protocol and option). C_i (``restart_cost_per_hour``) is
    the restart cost the decision rule charges, amortised over its horizon: E_i(c_i) restart_minutes_i / 60
    / h, so near-equal plans are not swapped for restarts. It replaces the snapped convex answer only if it
    is worth more by the same measure; a failed solve keeps the convex answer."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if not result.allocations:
        return result
    costs = restart_cost_per_hour or {}

    def _option_worth(name: str, share: float) -> float:
        change = abs(share - current.get(name, 0.0))
        restart = costs.get(name, 0.0) if change > threshold + 1e-9 else 0.0
        return potentials[name] * float(curves[name].relative(share)) - change_penalty * change - restart

    names = list(result.allocations)
    columns: list[tuple[str, float]] = []
    values: list[float] = []
    for name in names:
        requirement = requirements[name]
        upper = requirement.min_allocation if name in degraded else requirement.max_allocation
        for share in _options(curves[name], requirement.min_allocation, upper):
            columns.append((name, float(share)))
            values.append(_option_worth(name, float(share)))

    def worth(shares: Mapping[str, float]) -> float:
        return sum(_option_worth(n, x) for n, x in shares.items())

    owner = np.array([names.index(n) for n, _ in columns])
    usage = np.array([[share * requirements[n].as_vector()[k] for n, share in columns] for k in range(len(RESOURCES))])
    pick_one = np.zeros((len(names), len(columns)))
    pick_one[owner, np.arange(len(columns))] = 1.0
    limits = np.array([totals[r] for r in RESOURCES]) * (1 - 1e-9)
    try:
        solved = milp(-np.array(values), constraints=[LinearConstraint(usage, -np.inf, limits), LinearConstraint(pick_one, 1, 1)],
                      integrality=np.ones(len(columns)), bounds=Bounds(0, 1), options={"time_limit": 2.0})
    except Exception:  # pragma: no cover - HiGHS failing is not a reason to lose the convex plan
        return result
    if not solved.success or solved.x is None:
        return result
    chosen = {columns[k][0]: columns[k][1] for k in np.flatnonzero(solved.x > 0.5)}
    if set(chosen) != set(names) or worth(chosen) <= worth(result.allocations) + 1e-12:
        return result
    by_protocol = {n: float(potentials[n] * curves[n].relative(s)) for n, s in chosen.items()}
    return replace(result, allocations=chosen, expected_earnings=float(sum(by_protocol.values())),
                   expected_earnings_by_protocol=by_protocol,
                   resource_utilization=utilization_pct(resource_use(chosen, requirements), ResourceConstraints.from_totals(totals)),
                   diagnosis=[*result.diagnosis, "the exact optimum over the observed shares (HiGHS) earns more on the learned "
                              "curves than the snapped convex answer and is proposed instead"])


def compute_plan(
    inputs: CycleInputs,
    catalog: Catalog,
    allocator: ResourceAllocator | None = None,
    *,
    cycle_id: str | None = None,
    log: logging.Logger | Any | None = None,
) -> AllocationPlan:
    """Phase 2 (pure): optimise, check, decide and derive the per-protocol actions."""
    settings = catalog.allocation
    # protocols share what earnopt's own reserve leaves of the host (catalog host.reserved)
    constraints = ResourceConstraints.from_totals(catalog.host.available())
    allocator = allocator or shared_allocator(constraints)
    specs = {n: catalog.require(n) for n in inputs.protocols}
    requirements = {n: ProtocolRequirements.from_spec(s) for n, s in specs.items()}
    degraded = frozenset(n for n, p in inputs.protocols.items() if p.degraded)
    potentials = {n: p.potential_usd_per_hour for n, p in inputs.protocols.items()}
    curves = {n: p.curve for n, p in inputs.protocols.items()}
    current = {n: p.current_allocation for n, p in inputs.protocols.items()}
    # plan on mean - lambda x downside (allocation.risk)
    sds = {n: potential_sd(p.potential_usd_per_hour, p.forecast_usd_per_hour, p.forecast_sd_usd_per_hour) for n, p in inputs.protocols.items()}

    planned = planning_potentials(potentials, sds, settings.risk_aversion)
    result = allocator.optimize_allocation(
        requirements, planned, current, degraded, response_curves=curves, change_penalty=settings.change_penalty
    )
    result = snap_to_observed(allocator, result, requirements, planned, current, degraded, curves, settings.change_penalty)
    horizon_hours = settings.horizon_minutes / 60.0
    restart_costs = {n: (0.0 if n in degraded else
                         (potentials[n] * float(curves[n].relative(current[n])) * requirements[n].restart_minutes / 60.0
                          + settings.fixed_restart_cost_usd) / horizon_hours) for n in inputs.protocols}
    result = discrete_check(result, requirements, planned, current, degraded, curves, settings.change_penalty, catalog.host.available(),
                            restart_costs, settings.change_threshold)
    checks = {
        "solver_status_optimal": check_solver_status(result),
        # the solver's raw x, not the clipped shares: clipping would hide an out-of-bounds answer
        "constraints_satisfied": raw_constraints_check(result, requirements, constraints, degraded),
    }
    proposed = result.allocations or dict(current)

    def earnings(allocation: Mapping[str, float]) -> dict[str, float]:
        return {n: float(potentials[n] * curves[n].relative(allocation[n])) for n in inputs.protocols}

    current_check = check_constraints(current, requirements, constraints)
    force = None if current_check.passed else f"the current allocation breaks the catalog ({current_check.description})"
    decision = should_reallocate(
        current,
        proposed,
        current_earnings=earnings(current),
        proposed_earnings=earnings(proposed),
        restart_minutes={n: r.restart_minutes for n, r in requirements.items()},
        thresholds=DecisionThresholds.from_settings(settings),
        exempt_from_cost=degraded,
        force_reason=force,
        log=log,
    )
    gain_spread = gain_sd(sds, curves, current, proposed)
    decision = apply_risk_rule(decision, gain_spread, settings.risk_aversion)
    checks_passed = all(c.passed for c in checks.values())
    applied = decision.reallocate and checks_passed
    status: PlanStatus = "applied" if applied else ("kept" if checks_passed else "rejected")
    target = proposed if applied else current

    current_earnings, proposed_earnings = earnings(current), earnings(proposed)
    protocols: dict[str, ProtocolPlan] = {}
    for name, item in inputs.protocols.items():
        action, reason = _action(
            current[name], target[name], result.allocations.get(name), item.degraded_reason, settings.change_threshold, status
        )
        if not applied and not item.in_force and action == "keep":
            reason = (f"share not known (nothing reported, no plan applied): nothing to keep; the catalog initial "
                      f"{_pct(current[name])} was only the optimiser's starting point")
        protocols[name] = ProtocolPlan(
            name=name,
            current=current[name],
            proposed=result.allocations.get(name),
            target=target[name],
            action=action,
            reason=reason,
            degraded=item.degraded,
            expected_current_usd_per_hour=current_earnings[name],
            expected_proposed_usd_per_hour=proposed_earnings[name],
            potential_usd_per_hour=potentials[name],
            response_beta=curves[name].beta,
            forecast_source=item.forecast_source,
            restart_minutes=requirements[name].restart_minutes,
        )
    return AllocationPlan(
        cycle_id=cycle_id or f"{inputs.now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        device=inputs.device,
        created_at=inputs.now,
        status=status,
        applied=applied,
        result=result,
        decision=decision,
        checks=checks,
        protocols=protocols,
        target_utilization=utilization_pct(resource_use(target, requirements), constraints),
        inputs=inputs,
        gain_sd_usd_per_hour=gain_spread,
        risk_aversion=settings.risk_aversion,
    )
