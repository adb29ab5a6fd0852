"""Convex resource allocator (CVXPY, ECOS with an explicit CLARABEL fallback) and the reallocation rule.

Optimisation model, for protocols i = 1..n with allocation shares x_i::

    maximise    sum_i t_i  -  lambda * sum_i d_i
    subject to  t_i <= p_i * (a_ik + b_ik x_i)        for every chord k   (epigraph of p_i * r_pwl,i(x_i))
                d_i >= x_i - c_i,  d_i >= c_i - x_i   (d_i = |x_i - c_i| at the optimum when lambda > 0)
                sum_i x_i * R_ir <= T_r               for r in cpu, memory, bandwidth, storage
                l_i <= x_i <= u_i,   0 <= x_i <= 1
                u_i = l_i                             if protocol i is degraded

p_i is the protocol's expected $/h at full allocation, r_i(x) its response curve
(earnopt_assets.numerics.response: the concave envelope of the curve learned from telemetry, or x**beta_i)
whose chords give (a_ik, b_ik), c_i the current allocation and
lambda >= 0 the reallocation friction in $/h per unit of change. The problem is built once per protocol
set with ``cp.Parameter`` for every number that changes between cycles (DPP), so a re-solve skips
canonicalisation. Coefficients are divided by max_i p_i before solving so that cents-per-hour
objectives do not sit at the solver's absolute tolerances.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from earnopt_assets.numerics.response import BREAKPOINTS, ResponseCurve

logger = logging.getLogger("earnopt.allocation")

RESOURCES: tuple[str, ...] = ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")
OPTIMAL = "optimal"
OPTIMAL_INACCURATE = "optimal_inaccurate"
INFEASIBLE = "infeasible"
# A restart is triggered by a change strictly above the threshold; this absorbs float noise at the boundary.
BOUNDARY_EPS = 1e-9
# Below a millionth of a cent per hour an expected earning is treated as zero.
MIN_EARNINGS_USD_PER_HOUR = 1e-8


def _finite_nonneg(owner: str, name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ResourceConstraints:
    """The host's totals: the right-hand sides of the resource constraints."""

    total_cpu_cores: float
    total_memory_gb: float
    total_bandwidth_mbps: float
    total_storage_gb: float

    def __post_init__(self) -> None:
        for name in ("total_cpu_cores", "total_memory_gb", "total_bandwidth_mbps", "total_storage_gb"):
            _finite_nonneg("ResourceConstraints", name, getattr(self, name))

    @classmethod
    def from_totals(cls, totals: Mapping[str, float]) -> ResourceConstraints:
        """From ``HostSpec.totals()`` (keys cpu_cores, memory_gb, bandwidth_mbps, storage_gb)."""
        return cls(*(float(totals[r]) for r in RESOURCES))

    def as_vector(self) -> np.ndarray:
        return np.array([self.total_cpu_cores, self.total_memory_gb, self.total_bandwidth_mbps, self.total_storage_gb])

    def totals(self) -> dict[str, float]:
        return dict(zip(RESOURCES, self.as_vector().tolist()))


@dataclass(frozen=True)
class ProtocolRequirements:
    """What one protocol uses per unit of allocation, and its allowed range."""

    cpu_per_unit: float
    memory_per_unit: float
    bandwidth_per_unit: float
    storage_per_unit: float
    min_allocation: float = 0.0
    max_allocation: float = 1.0
    restart_minutes: float = 5.0

    def __post_init__(self) -> None:
        for name in ("cpu_per_unit", "memory_per_unit", "bandwidth_per_unit", "storage_per_unit", "restart_minutes"):
            _finite_nonneg("ProtocolRequirements", name, getattr(self, name))
        for name in ("min_allocation", "max_allocation"):
            value = getattr(self, name)
            _finite_nonneg("ProtocolRequirements", name, value)
            if value > 1:
                raise ValueError(f"ProtocolRequirements.{name} must be between 0 and 1, got {value!r}")
        if self.min_allocation > self.max_allocation:
            raise ValueError(
                f"ProtocolRequirements.min_allocation ({self.min_allocation}) exceeds max_allocation ({self.max_allocation})"
            )

    @classmethod
    def from_spec(cls, spec: Any) -> ProtocolRequirements:
        """From a catalog ``ProtocolSpec``."""
        return cls(
            cpu_per_unit=spec.cpu_cores,
            memory_per_unit=spec.memory_gb,
            bandwidth_per_unit=spec.bandwidth_mbps,
            storage_per_unit=spec.storage_gb,
            min_allocation=spec.min_allocation,
            max_allocation=spec.max_allocation,
            restart_minutes=spec.restart_minutes,
        )

    def as_vector(self) -> np.ndarray:
        return np.array([self.cpu_per_unit, self.memory_per_unit, self.bandwidth_per_unit, self.storage_per_unit])


@dataclass(frozen=True)
class AllocationResult:
    """The optimizer's answer. ``allocations`` is empty when no solution exists."""

    allocations: dict[str, float]
    expected_earnings: float  # $/h at the proposed allocation, on the exact (not piecewise) curves
    resource_utilization: dict[str, float]  # resource -> % of the host total
    is_optimal: bool
    solver_status: str
    solve_seconds: float
    solver: str | None = None  # "ECOS" or "CLARABEL"
    expected_earnings_by_protocol: dict[str, float] = field(default_factory=dict)
    diagnosis: list[str] = field(default_factory=list)
    fallback_reason: str | None = None
    objective_value: float | None = None
    # the solver's own x before clipping to the bounds: the constraints check reads this, so a solver
    # answer outside its bounds fails the check instead of being silently clipped into a passing plan
    raw_allocations: dict[str, float] = field(default_factory=dict)
    max_clip: float = 0.0  # max |raw - clipped| share, recorded separately from the check

    def __post_init__(self) -> None:
        for name, share in self.allocations.items():
            if not math.isfinite(share) or not (0.0 <= share <= 1.0):
                raise ValueError(f"AllocationResult.allocations[{name!r}] must be in [0, 1], got {share!r}")
        if self.solve_seconds < 0:
            raise ValueError(f"AllocationResult.solve_seconds must be >= 0, got {self.solve_seconds!r}")
        if self.is_optimal and not self.allocations:
            raise ValueError("AllocationResult.is_optimal requires allocations")
        unknown = set(self.resource_utilization) - set(RESOURCES)
        if unknown:
            raise ValueError(f"AllocationResult.resource_utilization has unknown resources {sorted(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resource_use(
    allocation: Mapping[str, float], requirements: Mapping[str, ProtocolRequirements]
) -> dict[str, float]:
    """Resource use of an allocation: sum_i x_i * R_ir per resource."""
    used = np.zeros(len(RESOURCES))
    for name, share in allocation.items():
        used += float(share) * requirements[name].as_vector()
    return dict(zip(RESOURCES, used.tolist()))


def utilization_pct(used: Mapping[str, float], constraints: ResourceConstraints) -> dict[str, float]:
    totals = constraints.totals()
    return {r: (100.0 * used[r] / totals[r] if totals[r] > 0 else (0.0 if used[r] <= 0 else math.inf)) for r in RESOURCES}


def diagnose_infeasibility(
    requirements: Mapping[str, ProtocolRequirements],
    constraints: ResourceConstraints,
    degraded: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """Name the constraints that cannot hold together (empty when none is found).

    The lower bounds are the only way the problem can be infeasible (x = l is otherwise always a
    candidate), so the check is: sum_i l_i R_ir > T_r for some resource r.
    """
    problems: list[str] = []
    totals = constraints.totals()
    for r_index, resource in enumerate(RESOURCES):
        contributions = {n: req.min_allocation * req.as_vector()[r_index] for n, req in requirements.items()}
        need = sum(contributions.values())
        if need > totals[resource] * (1 + 1e-9) + 1e-12:
            top = sorted(contributions.items(), key=lambda item: -item[1])[:3]
            biggest = ", ".join(f"{n} {v:.4g}" for n, v in top if v > 0)
            problems.append(
                f"sum of min allocations needs {need:.4g} {resource} > {totals[resource]:.4g} {resource} total"
                f" (largest: {biggest})"
            )
    for name in sorted(set(degraded) - set(requirements)):
        problems.append(f"degraded protocol {name!r} is not in the requirements")
    return problems


def _validate_inputs(
    requirements: Mapping[str, ProtocolRequirements],
    expected_earnings: Mapping[str, float],
    current_allocation: Mapping[str, float] | None,
    curves: Mapping[str, ResponseCurve] | None,
) -> list[str]:
    """Return human-readable problems with the inputs (never raises)."""
    problems: list[str] = []
    if not requirements:
        problems.append("no protocols to allocate")
    for name in requirements:
        if not isinstance(requirements[name], ProtocolRequirements):
            problems.append(f"requirements[{name!r}] is not a ProtocolRequirements")
        value = expected_earnings.get(name)
        if value is None:
            problems.append(f"expected_earnings has no value for {name!r}")
        elif not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            problems.append(f"expected_earnings[{name!r}] must be a finite $/h >= 0, got {value!r}")
        if current_allocation is not None:
            share = current_allocation.get(name, 0.0)
            if not isinstance(share, (int, float)) or not math.isfinite(share) or not (0 <= share <= 1):
                problems.append(f"current_allocation[{name!r}] must be in [0, 1], got {share!r}")
        if curves is not None and name in curves and not isinstance(curves[name], ResponseCurve):
            problems.append(f"response_curves[{name!r}] is not a ResponseCurve")
    return problems


class _ParametrisedProblem:
    """One CVXPY problem for a fixed, ordered protocol set; every cycle-varying number is a Parameter."""

    def __init__(self, n: int, segments: int) -> None:
        import cvxpy as cp

        self.n = n
        self.x = cp.Variable(n, name="allocation")
        self.t = cp.Variable(n, name="earnings")
        # d_i >= |x_i - c_i| as two linear constraints: penalty * norm1(x - c) would multiply two
        # parameter-dependent expressions and break DPP.
        self.d = cp.Variable(n, nonneg=True, name="change")
        self.intercepts = [cp.Parameter(n, name=f"intercept_{k}") for k in range(segments)]
        self.slopes = [cp.Parameter(n, nonneg=True, name=f"slope_{k}") for k in range(segments)]
        self.usage = cp.Parameter((len(RESOURCES), n), nonneg=True, name="usage_per_unit")
        self.totals = cp.Parameter(len(RESOURCES), nonneg=True, name="totals")
        self.lower = cp.Parameter(n, nonneg=True, name="lower")
        self.upper = cp.Parameter(n, nonneg=True, name="upper")
        self.current = cp.Parameter(n, nonneg=True, name="current")
        self.penalty = cp.Parameter(nonneg=True, name="change_penalty")
        self.constraints = {
            **{f"earnings_chord_{k}": self.t <= self.intercepts[k] + cp.multiply(self.slopes[k], self.x) for k in range(segments)},
            "resources": self.usage @ self.x <= self.totals,
            "min_allocation": self.x >= self.lower,
            "max_allocation": self.x <= self.upper,
            "zero_one_low": self.x >= 0,
            "zero_one_high": self.x <= 1,
            "change_up": self.d >= self.x - self.current,
            "change_down": self.d >= self.current - self.x,
        }
        objective = cp.Maximize(cp.sum(self.t) - self.penalty * cp.sum(self.d))
        self.problem = cp.Problem(objective, list(self.constraints.values()))
        if not self.problem.is_dcp(dpp=True):  # pragma: no cover - guards a refactoring mistake
            raise RuntimeError("allocation problem is not DPP")


class ResourceAllocator:
    """Maximise expected earnings under the host's resource totals; see the module docstring."""

    def __init__(
        self,
        constraints: ResourceConstraints,
        *,
        breakpoints: tuple[float, ...] = BREAKPOINTS,
        solvers: tuple[str, str] = ("ECOS", "CLARABEL"),
    ) -> None:
        if not isinstance(constraints, ResourceConstraints):
            raise TypeError("ResourceAllocator needs a ResourceConstraints")
        self.constraints = constraints
        self.solvers = solvers  # (primary, explicit fallback); cp.ECOS == "ECOS", cp.CLARABEL == "CLARABEL"
        self.breakpoints = breakpoints
        self._problems: dict[tuple[str, ...], _ParametrisedProblem] = {}
        # A solve sets the cached problem's parameters, then reads its variables: one solve at a time.
        self._lock = threading.Lock()

    def _problem_for(self, names: tuple[str, ...]) -> _ParametrisedProblem:
        problem = self._problems.get(names)
        if problem is None:
            problem = _ParametrisedProblem(len(names), len(self.breakpoints) - 1)
            self._problems[names] = problem
        return problem

    def optimize_allocation(
        self,
        requirements: Mapping[str, ProtocolRequirements],
        expected_earnings: Mapping[str, float],
        current_allocation: Mapping[str, float] | None = None,
        degraded: frozenset[str] | set[str] = frozenset(),
        *,
        response_curves: Mapping[str, ResponseCurve] | None = None,
        change_penalty: float = 0.0,
    ) -> AllocationResult:
        """Solve the allocation problem. Never raises: problems come back in ``solver_status``/``diagnosis``.

        ``expected_earnings[name]`` is the protocol's expected $/h at FULL allocation (p_i); the earnings
        at share x are p_i * x**beta_i with beta_i from ``response_curves`` (default: square root).
        ``current_allocation`` (missing protocols count as 0) is the anchor of the L1 change penalty
        ``change_penalty`` ($/h per unit of total change). Protocols in ``degraded`` are capped at their
        minimum allocation.
        """
        started = time.perf_counter()
        names = tuple(requirements)

        def failed(status: str, diagnosis: list[str], solver: str | None = None, fallback: str | None = None) -> AllocationResult:
            return AllocationResult(
                allocations={},
                expected_earnings=0.0,
                resource_utilization=dict.fromkeys(RESOURCES, 0.0),
                is_optimal=False,
                solver_status=status,
                solve_seconds=time.perf_counter() - started,
                solver=solver,
                diagnosis=diagnosis,
                fallback_reason=fallback,
            )

        try:
            problems = _validate_inputs(requirements, expected_earnings, current_allocation, response_curves)
            if not (isinstance(change_penalty, (int, float)) and math.isfinite(change_penalty) and change_penalty >= 0):
                problems.append(f"change_penalty must be a finite number >= 0, got {change_penalty!r}")
            if problems:
                return failed("invalid_input", problems)

            curves = {n: (response_curves or {}).get(n) or ResponseCurve() for n in names}
            potentials = np.array([float(expected_earnings[n]) for n in names])
            potentials[potentials < MIN_EARNINGS_USD_PER_HOUR] = 0.0  # denormal dust would wreck the scaling
            # Normalise by the largest coefficient so every objective coefficient is <= 1.
            scale = max(float(potentials.max()), float(change_penalty)) or 1.0
            chords = [curves[n].chords(self.breakpoints) for n in names]
            intercepts = np.array([c[0] for c in chords]).T * (potentials / scale)  # (K, n)
            slopes = np.array([c[1] for c in chords]).T * (potentials / scale)
            lower = np.array([requirements[n].min_allocation for n in names])
            upper = np.array([requirements[n].min_allocation if n in degraded else requirements[n].max_allocation for n in names])
            current = np.array([float((current_allocation or {}).get(n, 0.0)) for n in names])
            usage = np.array([requirements[n].as_vector() for n in names]).T  # (4, n)

            with self._lock:
                built = self._problem_for(names)
                for k in range(len(built.intercepts)):
                    built.intercepts[k].value = intercepts[k]
                    built.slopes[k].value = slopes[k]
                built.usage.value = usage
                built.totals.value = self.constraints.as_vector()
                built.lower.value = lower
                built.upper.value = upper
                built.current.value = current
                built.penalty.value = float(change_penalty) / scale

                solver, status, fallback = self._solve(built)
                diagnosis = diagnose_infeasibility(requirements, self.constraints, frozenset(degraded))
                if status not in (OPTIMAL, OPTIMAL_INACCURATE) or built.x.value is None:
                    if not diagnosis:
                        diagnosis = [f"solver status {status!r}; no conflict between minimum allocations and totals was found"]
                    return failed(status, diagnosis, solver, fallback)

                raw = np.asarray(built.x.value, dtype=float)
                shares = np.clip(np.clip(raw, lower, upper), 0.0, 1.0)
                allocation = {n: float(s) for n, s in zip(names, shares)}
                by_protocol = {n: float(potentials[i] * curves[n].relative(shares[i])) for i, n in enumerate(names)}
                used = resource_use(allocation, requirements)
                objective = float(built.problem.value) * scale if built.problem.value is not None else None
                return AllocationResult(
                    allocations=allocation,
                    expected_earnings=float(sum(by_protocol.values())),
                    resource_utilization=utilization_pct(used, self.constraints),
                    is_optimal=status == OPTIMAL,
                    solver_status=status,
                    solve_seconds=time.perf_counter() - started,
                    solver=solver,
                    expected_earnings_by_protocol=by_protocol,
                    diagnosis=[] if status == OPTIMAL else [f"solver returned {status}"],
                    fallback_reason=fallback,
                    objective_value=objective,
                    raw_allocations={n: float(r) for n, r in zip(names, raw)},
                    max_clip=float(np.max(np.abs(raw - shares))) if len(raw) else 0.0,
                )
        except Exception as exc:
            logger.exception("allocation failed")
            return failed("error", [f"{type(exc).__name__}: {exc}"])

    def _solve(self, built: _ParametrisedProblem) -> tuple[str, str, str | None]:
        """Primary solver (ECOS); the fallback (CLARABEL) when it raises or ends anywhere but
        optimal/infeasible. Returns (solver used, status, why the fallback happened or None)."""
        primary, secondary = self.solvers
        primary_status: str | None = None
        try:
            built.problem.solve(solver=primary)
            primary_status = str(built.problem.status)
            if primary_status in (OPTIMAL, INFEASIBLE):
                return primary, primary_status, None
            reason = f"{primary} ended with status {primary_status!r}"
        except Exception as exc:
            reason = f"{primary} failed: {type(exc).__name__}: {exc}"
        logger.warning("%s; falling back to %s", reason, secondary)
        try:
            built.problem.solve(solver=secondary)
            status = str(built.problem.status)
            if status in (OPTIMAL, INFEASIBLE) or primary_status is None:
                return secondary, status, reason
        except Exception as exc:
            reason = f"{reason}; {secondary} failed: {type(exc).__name__}: {exc}"
            if primary_status is None:
                return secondary, "solver_error", reason
        # The fallback did no better than the primary's inexact answer: solve again to restore it.
        try:
            built.problem.solve(solver=primary)
        except Exception:  # pragma: no cover - it answered a moment ago
            return primary, "solver_error", reason
        return primary, str(built.problem.status), reason


# ---------------------------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class RestartCostItem:
    """One protocol's share of a reallocation's cost."""

    current: float
    new: float
    change: float  # |new - current|
    restarts: bool
    downtime_minutes: float
    downtime_cost_usd: float
    fixed_cost_usd: float

    @property
    def total_usd(self) -> float:
        return self.downtime_cost_usd + self.fixed_cost_usd


@dataclass(frozen=True)
class ReallocationCost:
    """Total and per-protocol cost of moving from one allocation to another."""

    total_usd: float
    items: dict[str, RestartCostItem]
    change_threshold: float

    @property
    def restarted(self) -> list[str]:
        return [n for n, item in self.items.items() if item.restarts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_usd": self.total_usd,
            "change_threshold": self.change_threshold,
            "restarted": self.restarted,
            "items": {n: {**asdict(item), "total_usd": item.total_usd} for n, item in self.items.items()},
        }


def calculate_reallocation_cost(
    current: Mapping[str, float],
    new: Mapping[str, float],
    restart_minutes: Mapping[str, float],
    hourly_earnings: Mapping[str, float],
    *,
    change_threshold: float = 0.05,
    fixed_cost_usd: float = 0.0,
    exempt: frozenset[str] | set[str] = frozenset(),
) -> ReallocationCost:
    """Cost of switching allocations.

    A protocol restarts when |new_i - current_i| > change_threshold (5 percentage points by default;
    exactly 5 pp does not restart). A restart costs the earnings lost while it is down plus an optional
    fixed infrastructure cost::

        cost_i = restarts_i * (hourly_earnings_i * restart_minutes_i / 60 + fixed_cost_usd)

    Protocols missing from ``current``/``new`` count as 0. ``exempt`` protocols (degraded ones, which
    restart anyway) are itemised but cost nothing here.
    """
    _finite_nonneg("calculate_reallocation_cost", "change_threshold", change_threshold)
    _finite_nonneg("calculate_reallocation_cost", "fixed_cost_usd", fixed_cost_usd)
    items: dict[str, RestartCostItem] = {}
    for name in sorted(set(current) | set(new)):
        before, after = float(current.get(name, 0.0)), float(new.get(name, 0.0))
        change = abs(after - before)
        restarts = change > change_threshold + BOUNDARY_EPS
        charged = restarts and name not in exempt
        minutes = float(restart_minutes.get(name, 0.0)) if restarts else 0.0
        earnings = max(float(hourly_earnings.get(name, 0.0)), 0.0)
        items[name] = RestartCostItem(
            current=before,
            new=after,
            change=change,
            restarts=restarts,
            downtime_minutes=minutes,
            downtime_cost_usd=earnings * minutes / 60.0 if charged else 0.0,
            fixed_cost_usd=fixed_cost_usd if charged else 0.0,
        )
    return ReallocationCost(
        total_usd=float(sum(item.total_usd for item in items.values())), items=items, change_threshold=change_threshold
    )


# ---------------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class DecisionThresholds:
    """The knobs of :func:`should_reallocate` (mirrors ``catalog.AllocationSettings``)."""

    min_improvement_pct: float = 10.0
    min_net_benefit_usd_per_hour: float = 0.50
    max_change_l1: float = 2.0
    change_threshold: float = 0.05
    fixed_restart_cost_usd: float = 0.0
    horizon_minutes: float = 15.0

    def __post_init__(self) -> None:
        for name in ("min_improvement_pct", "min_net_benefit_usd_per_hour", "max_change_l1", "change_threshold", "fixed_restart_cost_usd"):
            _finite_nonneg("DecisionThresholds", name, getattr(self, name))
        if not (math.isfinite(self.horizon_minutes) and self.horizon_minutes > 0):
            raise ValueError(f"DecisionThresholds.horizon_minutes must be > 0, got {self.horizon_minutes!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionThresholds:
        """From a ``catalog.AllocationSettings``."""
        return cls(
            min_improvement_pct=settings.min_improvement_pct,
            min_net_benefit_usd_per_hour=settings.min_net_benefit_usd_per_hour,
            max_change_l1=settings.max_change_l1,
            change_threshold=settings.change_threshold,
            fixed_restart_cost_usd=settings.fixed_restart_cost_usd,
            horizon_minutes=settings.horizon_minutes,
        )


@dataclass(frozen=True)
class ReallocationDecision:
    """The decision and everything it was based on."""

    reallocate: bool
    criteria: dict[str, bool]
    reasons: list[str]
    current_usd_per_hour: float
    proposed_usd_per_hour: float
    improvement_usd_per_hour: float
    improvement_pct: float
    change_l1: float
    reallocation_cost: ReallocationCost
    amortised_cost_usd_per_hour: float
    net_benefit_usd_per_hour: float
    thresholds: DecisionThresholds
    forced_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reallocation_cost"] = self.reallocation_cost.to_dict()
        if not math.isfinite(self.improvement_pct):
            data["improvement_pct"] = None if math.isnan(self.improvement_pct) else "inf"
        return data


def should_reallocate(
    current: Mapping[str, float],
    proposed: Mapping[str, float],
    *,
    current_earnings: Mapping[str, float],
    proposed_earnings: Mapping[str, float],
    restart_minutes: Mapping[str, float],
    thresholds: DecisionThresholds | None = None,
    exempt_from_cost: frozenset[str] | set[str] = frozenset(),
    force_reason: str | None = None,
    log: logging.Logger | Any | None = None,
) -> ReallocationDecision:
    """Decide whether to move from ``current`` to ``proposed`` (allocation shares per protocol).

    ``current_earnings``/``proposed_earnings`` are expected $/h per protocol at each allocation. With
    E_c, E_p their sums, C the reallocation cost ($, :func:`calculate_reallocation_cost` with
    hourly_earnings = current_earnings) and h the horizon in hours (15 min = 0.25 h)::

        improvement      = E_p - E_c                         ($/h)
        improvement_pct  = 100 * improvement / E_c           (+inf when E_c = 0 < E_p; 0 when both are 0)
        change_l1        = sum_i |proposed_i - current_i|
        amortised_cost   = C / h                             ($/h: the cost is recovered within one cycle)
        net_benefit      = improvement - amortised_cost      ($/h)

    Reallocate iff improvement_pct >= min_improvement_pct AND net_benefit > min_net_benefit_usd_per_hour
    AND change_l1 <= max_change_l1. ``force_reason`` (e.g. the current allocation breaks the host's
    totals) bypasses the economic criteria but is recorded.
    """
    limits = thresholds or DecisionThresholds()
    cost = calculate_reallocation_cost(
        current,
        proposed,
        restart_minutes,
        current_earnings,
        change_threshold=limits.change_threshold,
        fixed_cost_usd=limits.fixed_restart_cost_usd,
        exempt=frozenset(exempt_from_cost),
    )
    e_current = float(sum(current_earnings.get(n, 0.0) for n in set(current) | set(current_earnings)))
    e_proposed = float(sum(proposed_earnings.get(n, 0.0) for n in set(proposed) | set(proposed_earnings)))
    improvement = e_proposed - e_current
    if e_current > 0:
        improvement_pct = 100.0 * improvement / e_current
    else:
        improvement_pct = math.inf if improvement > 0 else 0.0
    change_l1 = float(sum(item.change for item in cost.items.values()))
    amortised = cost.total_usd / (limits.horizon_minutes / 60.0)
    net_benefit = improvement - amortised

    criteria = {
        "improvement_pct": improvement_pct >= limits.min_improvement_pct,
        "net_benefit": net_benefit > limits.min_net_benefit_usd_per_hour,
        "change_within_tolerance": change_l1 <= limits.max_change_l1 + BOUNDARY_EPS,
    }
    reasons = [
        f"improvement {improvement_pct:.2f}% {'>=' if criteria['improvement_pct'] else '<'} {limits.min_improvement_pct:g}%"
        f" ({e_current:.6f} -> {e_proposed:.6f} $/h)",
        f"net benefit {net_benefit:.6f} $/h {'>' if criteria['net_benefit'] else '<='} {limits.min_net_benefit_usd_per_hour:g} $/h"
        f" (gain {improvement:.6f} $/h - cost {cost.total_usd:.6f} $ over {limits.horizon_minutes:g} min"
        f" = {amortised:.6f} $/h; restarts: {', '.join(cost.restarted) or 'none'})",
        f"change L1 {change_l1:.4f} {'<=' if criteria['change_within_tolerance'] else '>'} max {limits.max_change_l1:g}",
    ]
    reallocate = all(criteria.values())
    if force_reason is not None and change_l1 > 0:
        reallocate = True
        reasons.append(f"forced: {force_reason}")
    sink = log or logger
    sink.info("reallocation %s: %s", "YES" if reallocate else "NO", "; ".join(reasons))
    return ReallocationDecision(
        reallocate=reallocate,
        criteria=criteria,
        reasons=reasons,
        current_usd_per_hour=e_current,
        proposed_usd_per_hour=e_proposed,
        improvement_usd_per_hour=improvement,
        improvement_pct=improvement_pct,
        change_l1=change_l1,
        reallocation_cost=cost,
        amortised_cost_usd_per_hour=amortised,
        net_benefit_usd_per_hour=net_benefit,
        thresholds=limits,
        forced_reason=force_reason,
    )


# ---------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckOutcome:
    """Plain-Python outcome of a plan check; the Dagster asset turns it into an AssetCheckResult."""

    name: str
    passed: bool
    severity: str  # "ERROR" | "WARN"
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_solver_status(result: AllocationResult) -> CheckOutcome:
    """Optimal passes; optimal_inaccurate fails with WARN; anything else fails with ERROR."""
    metadata = {"solver_status": result.solver_status, "solver": result.solver or "", "solve_seconds": result.solve_seconds}
    if result.solver_status == OPTIMAL:
        return CheckOutcome("solver_status_optimal", True, "ERROR", f"{result.solver} solved to optimality", metadata)
    if result.solver_status == OPTIMAL_INACCURATE:
        return CheckOutcome(
            "solver_status_optimal", False, "WARN", f"{result.solver} returned optimal_inaccurate; plan not applied", metadata
        )
    detail = "; ".join(result.diagnosis) or "no diagnosis"
    return CheckOutcome("solver_status_optimal", False, "ERROR", f"solver status {result.solver_status}: {detail}", metadata)


def check_constraints(
    allocation: Mapping[str, float],
    requirements: Mapping[str, ProtocolRequirements],
    constraints: ResourceConstraints,
    degraded: frozenset[str] | set[str] = frozenset(),
    *,
    rel_tol: float = 1e-6,
) -> CheckOutcome:
    """Recompute resource use from ``allocation`` and verify every constraint of the model.

    Resource r holds if used_r <= T_r * (1 + rel_tol); bounds hold within rel_tol (absolute on [0, 1]).
    """
    violations: list[str] = []
    missing = sorted(set(requirements) - set(allocation))
    if not allocation:
        violations.append("no proposed allocation to verify")
    elif missing:
        violations.append(f"no allocation for {', '.join(missing)}")
    unknown = sorted(set(allocation) - set(requirements))
    if unknown:
        violations.append(f"allocation for unknown protocols {', '.join(unknown)}")
    known = {n: float(s) for n, s in allocation.items() if n in requirements}
    for name, share in known.items():
        req = requirements[name]
        upper = req.min_allocation if name in degraded else req.max_allocation
        if not math.isfinite(share):
            violations.append(f"{name}: allocation {share!r} is not finite")
            continue
        if share < -rel_tol or share > 1 + rel_tol:
            violations.append(f"{name}: allocation {share:.6g} outside [0, 1]")
        if share < req.min_allocation - rel_tol:
            violations.append(f"{name}: allocation {share:.6g} < min {req.min_allocation:g}")
        if share > upper + rel_tol:
            kind = "degraded cap (min)" if name in degraded else "max"
            violations.append(f"{name}: allocation {share:.6g} > {kind} {upper:g}")
    used = resource_use({n: s for n, s in known.items() if math.isfinite(s)}, requirements)
    totals = constraints.totals()
    for resource in RESOURCES:
        if used[resource] > totals[resource] * (1 + rel_tol) + 1e-12:
            violations.append(f"{resource}: uses {used[resource]:.6g} > total {totals[resource]:.6g}")
    metadata: dict[str, Any] = {
        **{f"used_{r}": used[r] for r in RESOURCES},
        **{f"total_{r}": totals[r] for r in RESOURCES},
        "violations": len(violations),
    }
    if violations:
        return CheckOutcome("constraints_satisfied", False, "ERROR", "; ".join(violations), metadata)
    return CheckOutcome(
        "constraints_satisfied", True, "ERROR", f"all {len(RESOURCES)} resources, bounds and degraded caps hold (rel tol {rel_tol:g})", metadata
    )
