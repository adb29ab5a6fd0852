"""The convex allocator, response curves, restart cost and reallocation rule (plain Python, no Dagster)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earnopt_assets.allocation.allocator import (
    RESOURCES,
    AllocationResult,
    DecisionThresholds,
    ProtocolRequirements,
    ResourceAllocator,
    ResourceConstraints,
    calculate_reallocation_cost,
    check_constraints,
    check_solver_status,
    diagnose_infeasibility,
    resource_use,
    should_reallocate,
)
from earnopt_assets.numerics.response import ResponseCurve, fit_response_curve

HOST = ResourceConstraints(total_cpu_cores=8, total_memory_gb=16, total_bandwidth_mbps=100, total_storage_gb=2000)


def requirements(**overrides: float) -> ProtocolRequirements:
    base = {"cpu_per_unit": 1.0, "memory_per_unit": 2.0, "bandwidth_per_unit": 10.0, "storage_per_unit": 100.0}
    base.update(overrides)
    return ProtocolRequirements(**base)


def pwl_objective(allocation: dict[str, float], potentials: dict[str, float], curves: dict[str, ResponseCurve]) -> float:
    total = 0.0
    for name, x in allocation.items():
        a, b = curves[name].chords()
        total += potentials[name] * float(np.min(a + b * x))
    return total


# ---------------------------------------------------------------------------------------------- dataclasses


def test_dataclasses_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="total_memory_gb"):
        ResourceConstraints(8, -1, 100, 10)
    with pytest.raises(ValueError, match="total_cpu_cores"):
        ResourceConstraints(float("nan"), 1, 1, 1)
    with pytest.raises(ValueError, match=r"min_allocation .* exceeds max_allocation"):
        requirements(min_allocation=0.6, max_allocation=0.5)
    with pytest.raises(ValueError, match="max_allocation must be between 0 and 1"):
        requirements(max_allocation=1.5)
    with pytest.raises(ValueError, match="cpu_per_unit"):
        requirements(cpu_per_unit=-0.1)
    with pytest.raises(ValueError, match="restart_minutes"):
        requirements(restart_minutes=float("inf"))
    with pytest.raises(ValueError, match=r"allocations\['a'\]"):
        AllocationResult({"a": 1.2}, 0.0, {}, True, "optimal", 0.01)
    with pytest.raises(ValueError, match="is_optimal requires allocations"):
        AllocationResult({}, 0.0, {}, True, "optimal", 0.01)
    with pytest.raises(ValueError, match="solve_seconds"):
        AllocationResult({}, 0.0, {}, False, "infeasible", -1.0)
    with pytest.raises(ValueError, match="unknown resources"):
        AllocationResult({}, 0.0, {"gpu": 1.0}, False, "infeasible", 0.01)
    with pytest.raises(ValueError, match="beta"):
        ResponseCurve(beta=0.0)
    with pytest.raises(TypeError):
        ResourceAllocator({"cpu": 1})  # type: ignore[arg-type]


def test_from_catalog_specs(catalog) -> None:
    constraints = ResourceConstraints.from_totals(catalog.host.totals())
    assert constraints.totals() == catalog.host.totals()
    storj = ProtocolRequirements.from_spec(catalog.require("storj"))
    assert (storj.memory_per_unit, storj.min_allocation, storj.restart_minutes) == (2.0, 0.55, 10)


# ---------------------------------------------------------------------------------------------- optimiser


def test_result_format_on_the_default_catalog(catalog) -> None:
    allocator = ResourceAllocator(ResourceConstraints.from_totals(catalog.host.totals()))
    reqs = {p.name: ProtocolRequirements.from_spec(p) for p in catalog.protocols}
    potentials = {p.name: p.simulation.base_hourly_usd for p in catalog.protocols}
    result = allocator.optimize_allocation(reqs, potentials)
    assert isinstance(result, AllocationResult)
    assert result.is_optimal and result.solver_status == "optimal" and result.solver == "ECOS"
    assert set(result.allocations) == set(reqs)
    assert all(reqs[n].min_allocation - 1e-9 <= x <= reqs[n].max_allocation + 1e-9 for n, x in result.allocations.items())
    assert set(result.resource_utilization) == set(RESOURCES)
    assert max(result.resource_utilization.values()) <= 100 + 1e-4
    assert result.expected_earnings == pytest.approx(sum(result.expected_earnings_by_protocol.values()))
    assert result.solve_seconds > 0 and result.fallback_reason is None and result.diagnosis == []
    # The concave curve spreads the budget: not a corner where one protocol takes everything it can.
    interior = [x for n, x in result.allocations.items() if reqs[n].min_allocation + 0.01 < x < reqs[n].max_allocation - 0.01]
    assert interior
    assert check_constraints(result.allocations, reqs, allocator.constraints).passed
    assert result.to_dict()["solver"] == "ECOS"


@st.composite
def feasible_instances(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    reqs, potentials, curves, current = {}, {}, {}, {}
    for i in range(n):
        usage = [draw(st.floats(0.0, 4.0)) for _ in RESOURCES]
        low = draw(st.floats(0.0, 0.3))
        high = draw(st.floats(low, 1.0))
        reqs[f"p{i}"] = ProtocolRequirements(*usage, min_allocation=low, max_allocation=high, restart_minutes=5)
        potentials[f"p{i}"] = draw(st.floats(0.0, 0.1))
        curves[f"p{i}"] = ResponseCurve(beta=draw(st.floats(0.1, 0.95)))
        current[f"p{i}"] = draw(st.floats(0.0, 1.0))
    need = resource_use({k: r.min_allocation for k, r in reqs.items()}, reqs)
    slack = draw(st.floats(1.0, 3.0))
    totals = ResourceConstraints(*(need[r] * slack + draw(st.floats(0.01, 5.0)) for r in RESOURCES))
    degraded = frozenset(k for k in reqs if draw(st.booleans()) and draw(st.booleans()))
    penalty = draw(st.sampled_from([0.0, 0.0, 0.001, 0.05]))
    return reqs, potentials, curves, current, totals, degraded, penalty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feasible_instances(), st.integers(0, 2**31 - 1))
def test_random_feasible_instances_converge_and_satisfy_constraints(instance, seed) -> None:
    reqs, potentials, curves, current, totals, degraded, penalty = instance
    allocator = ResourceAllocator(totals)
    result = allocator.optimize_allocation(reqs, potentials, current, degraded, response_curves=curves, change_penalty=penalty)
    assert result.solver_status in ("optimal", "optimal_inaccurate"), result
    assert check_constraints(result.allocations, reqs, totals, degraded).passed
    for name in degraded:
        assert result.allocations[name] == pytest.approx(reqs[name].min_allocation, abs=1e-6)

    # Optimality: no random feasible point scores better on the model's objective.
    def objective(allocation: dict[str, float]) -> float:
        change = sum(abs(allocation[n] - current[n]) for n in allocation)
        return pwl_objective(allocation, potentials, curves) - penalty * change

    best = objective(result.allocations)
    rng = np.random.default_rng(seed)
    lows = {n: r.min_allocation for n, r in reqs.items()}
    highs = {n: (r.min_allocation if n in degraded else r.max_allocation) for n, r in reqs.items()}
    for _ in range(30):
        candidate = {n: float(rng.uniform(lows[n], highs[n])) for n in reqs}
        used = resource_use(candidate, reqs)
        scale = min(
            [1.0]
            + [
                (totals.totals()[r] - resource_use(lows, reqs)[r]) / (used[r] - resource_use(lows, reqs)[r])
                for r in RESOURCES
                if used[r] > totals.totals()[r]
            ]
        )
        candidate = {n: lows[n] + max(scale, 0.0) * (candidate[n] - lows[n]) for n in reqs}
        assert objective(candidate) <= best + 1e-6 * max(1.0, abs(best)) + 1e-7


def test_problem_is_built_once_per_protocol_set_and_re_solved_with_new_parameters() -> None:
    allocator = ResourceAllocator(HOST)
    reqs = {"a": requirements(), "b": requirements(), "c": requirements(storage_per_unit=1500)}
    first = allocator.optimize_allocation(reqs, {"a": 0.01, "b": 0.01, "c": 0.01})
    second = allocator.optimize_allocation(reqs, {"a": 0.05, "b": 0.001, "c": 0.01})
    assert len(allocator._problems) == 1
    assert first.is_optimal and second.is_optimal
    assert second.allocations["a"] > first.allocations["a"] and second.allocations["b"] < first.allocations["b"]
    allocator.optimize_allocation({"a": requirements()}, {"a": 0.01})
    assert len(allocator._problems) == 2


def test_concavity_balances_identical_protocols() -> None:
    # Two identical protocols competing for 8 cores: the optimum splits 50/50 instead of a corner.
    reqs = {"a": requirements(cpu_per_unit=8.0), "b": requirements(cpu_per_unit=8.0)}
    result = ResourceAllocator(HOST).optimize_allocation(reqs, {"a": 0.02, "b": 0.02})
    assert result.allocations["a"] == pytest.approx(0.5, abs=0.02)
    assert result.allocations["b"] == pytest.approx(0.5, abs=0.02)


def test_change_penalty_keeps_the_current_allocation_when_friction_dominates() -> None:
    reqs = {"a": requirements(cpu_per_unit=8.0), "b": requirements(cpu_per_unit=8.0)}
    current = {"a": 0.2, "b": 0.8}
    free = ResourceAllocator(HOST).optimize_allocation(reqs, {"a": 0.02, "b": 0.02}, current)
    sticky = ResourceAllocator(HOST).optimize_allocation(reqs, {"a": 0.02, "b": 0.02}, current, change_penalty=1.0)
    assert free.allocations["a"] == pytest.approx(0.5, abs=0.02)
    assert sticky.allocations == pytest.approx(current, abs=1e-6)


def test_degraded_protocols_are_capped_at_their_minimum() -> None:
    reqs = {"a": requirements(min_allocation=0.1), "b": requirements()}
    result = ResourceAllocator(HOST).optimize_allocation(reqs, {"a": 1.0, "b": 0.001}, degraded={"a"})
    assert result.is_optimal
    assert result.allocations["a"] == pytest.approx(0.1, abs=1e-7)
    assert result.allocations["b"] > 0.5
    assert check_constraints(result.allocations, reqs, HOST, {"a"}).passed
    breaking = {**result.allocations, "a": 0.3}
    outcome = check_constraints(breaking, reqs, HOST, {"a"})
    assert not outcome.passed and "degraded cap" in outcome.description


def test_infeasible_instance_returns_status_and_names_the_conflict() -> None:
    reqs = {
        "storj": requirements(memory_per_unit=20.0, min_allocation=0.9),
        "akash": requirements(memory_per_unit=6.0, min_allocation=0.3),
    }
    result = ResourceAllocator(HOST).optimize_allocation(reqs, {"storj": 0.01, "akash": 0.04})
    assert not result.is_optimal
    assert result.solver_status == "infeasible"
    assert result.allocations == {} and result.expected_earnings == 0.0
    assert any("sum of min allocations needs 19.8 memory_gb > 16 memory_gb total" in line for line in result.diagnosis)
    assert "storj 18" in result.diagnosis[0]
    check = check_solver_status(result)
    assert not check.passed and check.severity == "ERROR" and "memory_gb" in check.description
    assert not check_constraints(result.allocations, reqs, HOST).passed


@pytest.mark.parametrize(
    ("potentials", "current", "penalty", "status"),
    [
        ({"a": float("nan")}, None, 0.0, "invalid_input"),
        ({"a": -1.0}, None, 0.0, "invalid_input"),
        ({}, None, 0.0, "invalid_input"),
        ({"a": 0.01}, {"a": 2.0}, 0.0, "invalid_input"),
        ({"a": 0.01}, None, -1.0, "invalid_input"),
    ],
)
def test_bad_inputs_never_raise(potentials, current, penalty, status) -> None:
    result = ResourceAllocator(HOST).optimize_allocation({"a": requirements()}, potentials, current, change_penalty=penalty)
    assert result.solver_status == status and not result.is_optimal and result.diagnosis


def test_empty_problem_and_unexpected_errors_never_raise() -> None:
    assert ResourceAllocator(HOST).optimize_allocation({}, {}).solver_status == "invalid_input"
    # A requirements object of the wrong type reaches CVXPY code paths: still a status, not an exception.
    result = ResourceAllocator(HOST).optimize_allocation({"a": object()}, {"a": 0.1})  # type: ignore[dict-item]
    assert not result.is_optimal and result.diagnosis


def test_falls_back_to_clarabel_when_the_first_solver_fails() -> None:
    allocator = ResourceAllocator(HOST, solvers=("NOT_A_SOLVER", "CLARABEL"))
    result = allocator.optimize_allocation({"a": requirements(), "b": requirements()}, {"a": 0.01, "b": 0.02})
    assert result.is_optimal and result.solver == "CLARABEL"
    assert "NOT_A_SOLVER failed" in (result.fallback_reason or "")
    both_bad = ResourceAllocator(HOST, solvers=("NOT_A_SOLVER", "NOR_THIS"))
    failed = both_bad.optimize_allocation({"a": requirements()}, {"a": 0.01})
    assert failed.solver_status == "solver_error" and not failed.is_optimal and failed.diagnosis


def test_ecos_and_clarabel_agree(catalog) -> None:
    reqs = {p.name: ProtocolRequirements.from_spec(p) for p in catalog.protocols}
    potentials = {p.name: p.simulation.base_hourly_usd for p in catalog.protocols}
    ecos = ResourceAllocator(HOST).optimize_allocation(reqs, potentials)
    clarabel = ResourceAllocator(HOST, solvers=("CLARABEL", "ECOS")).optimize_allocation(reqs, potentials)
    assert ecos.solver == "ECOS" and clarabel.solver == "CLARABEL"
    assert ecos.objective_value == pytest.approx(clarabel.objective_value, rel=1e-5)


def test_solver_status_check_severity() -> None:
    inaccurate = AllocationResult({"a": 0.5}, 0.01, {}, False, "optimal_inaccurate", 0.01, solver="ECOS")
    outcome = check_solver_status(inaccurate)
    assert not outcome.passed and outcome.severity == "WARN"
    optimal = AllocationResult({"a": 0.5}, 0.01, {}, True, "optimal", 0.01, solver="ECOS")
    assert check_solver_status(optimal).passed


def test_constraints_check_recomputes_resource_use() -> None:
    reqs = {"a": requirements(cpu_per_unit=8.0), "b": requirements(cpu_per_unit=8.0)}
    ok = check_constraints({"a": 0.5, "b": 0.5 * (1 + 5e-7)}, reqs, HOST)
    assert ok.passed, ok.description
    over = check_constraints({"a": 0.5, "b": 0.5 * (1 + 1e-5)}, reqs, HOST)
    assert not over.passed and "cpu_cores: uses" in over.description
    assert over.metadata["used_cpu_cores"] == pytest.approx(8.00004)
    missing = check_constraints({"a": 0.5}, reqs, HOST)
    assert not missing.passed and "no allocation for b" in missing.description
    weird = check_constraints({"a": 0.5, "b": float("nan"), "zz": 0.1}, reqs, HOST)
    assert "not finite" in weird.description and "unknown protocols zz" in weird.description
    bounds = check_constraints({"a": -0.1, "b": 0.0}, {"a": requirements(min_allocation=0.2), "b": requirements(max_allocation=0.0)}, HOST)
    assert "outside [0, 1]" in bounds.description and "< min 0.2" in bounds.description


def test_diagnosis_is_empty_for_a_feasible_catalog(catalog) -> None:
    reqs = {p.name: ProtocolRequirements.from_spec(p) for p in catalog.protocols}
    assert diagnose_infeasibility(reqs, HOST) == []
    assert "not in the requirements" in diagnose_infeasibility(reqs, HOST, {"ghost"})[0]


# ---------------------------------------------------------------------------------------------- curves


def test_fit_recovers_the_exponent_of_diminishing_returns() -> None:
    rng = np.random.default_rng(3)
    x = rng.choice(np.arange(0.1, 1.01, 0.05), size=600)
    e = 0.004 * x**0.6 * np.exp(rng.normal(0, 0.05, x.size))
    curve = fit_response_curve(x, e)
    assert curve.method == "fit"
    assert curve.beta == pytest.approx(0.6, abs=0.03)
    assert curve.scale_usd_per_hour == pytest.approx(0.004, rel=0.03)
    assert curve.r2 is not None and curve.r2 > 0.9
    assert curve.earnings(1.0) == pytest.approx(curve.scale_usd_per_hour)


def test_fit_falls_back_to_the_prior_without_allocation_variation() -> None:
    constant = fit_response_curve(np.full(100, 0.5), np.full(100, 0.002))
    assert constant.method == "prior" and constant.beta == 0.5
    assert constant.scale_usd_per_hour == pytest.approx(0.002 / 0.5**0.5)
    few = fit_response_curve([0.2, 0.8], [0.001, 0.002])
    assert few.method == "prior" and few.n_points == 2
    nothing = fit_response_curve([0.5, 0.0, np.nan], [0.0, 0.01, 0.01])
    assert nothing.method == "no_data" and nothing.scale_usd_per_hour == 0.0
    with pytest.raises(ValueError, match="same length"):
        fit_response_curve([0.1], [0.1, 0.2])


def test_fit_clips_linear_or_inverted_data_to_a_strictly_concave_curve() -> None:
    x = np.linspace(0.1, 1.0, 50)
    linear = fit_response_curve(x, 0.01 * x**1.4)
    assert linear.beta == 0.95
    inverted = fit_response_curve(x, 0.01 / x)
    assert inverted.beta == 0.1


def test_chords_never_overestimate_and_match_at_breakpoints() -> None:
    curve = ResponseCurve(beta=0.6)
    a, b = curve.chords()
    grid = np.linspace(0, 1, 1001)
    pwl = np.min(a[:, None] + b[:, None] * grid[None, :], axis=0)
    assert np.all(pwl <= curve.relative(grid) + 1e-12)
    assert np.max(curve.relative(grid) - pwl) < 0.03
    assert pwl[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- cost


def test_cost_of_no_change_is_zero() -> None:
    cost = calculate_reallocation_cost({"a": 0.4, "b": 0.6}, {"a": 0.4, "b": 0.6}, {"a": 5, "b": 10}, {"a": 0.1, "b": 0.2}, fixed_cost_usd=1.0)
    assert cost.total_usd == 0.0 and cost.restarted == []
    assert set(cost.items) == {"a", "b"}


def test_five_point_boundary_restarts_only_above_it() -> None:
    at = calculate_reallocation_cost({"a": 0.30}, {"a": 0.35}, {"a": 6}, {"a": 0.6})
    assert not at.items["a"].restarts and at.total_usd == 0.0
    below = calculate_reallocation_cost({"a": 0.25}, {"a": 0.30}, {"a": 6}, {"a": 0.6})  # 0.0499999.. in floats
    assert not below.items["a"].restarts
    above = calculate_reallocation_cost({"a": 0.30}, {"a": 0.3501}, {"a": 6}, {"a": 0.6})
    assert above.items["a"].restarts
    assert above.total_usd == pytest.approx(0.6 * 6 / 60)


def test_cost_is_itemised_per_protocol() -> None:
    cost = calculate_reallocation_cost(
        {"a": 0.2, "b": 0.5, "c": 0.5},
        {"a": 0.6, "b": 0.52, "d": 0.3},
        {"a": 10, "b": 5, "c": 3, "d": 2},
        {"a": 0.12, "b": 0.3, "c": 0.06, "d": 0.0},
        fixed_cost_usd=0.01,
        exempt={"c"},
    )
    assert cost.restarted == ["a", "c", "d"]
    assert cost.items["a"].downtime_cost_usd == pytest.approx(0.12 * 10 / 60)
    assert cost.items["a"].fixed_cost_usd == 0.01
    assert cost.items["b"].total_usd == 0.0 and cost.items["b"].change == pytest.approx(0.02)
    assert cost.items["c"].restarts and cost.items["c"].total_usd == 0.0  # degraded: restarts anyway
    assert cost.items["d"].downtime_cost_usd == 0.0 and cost.items["d"].fixed_cost_usd == 0.01
    assert cost.total_usd == pytest.approx(0.02 + 0.01 + 0.01)
    assert cost.to_dict()["items"]["a"]["total_usd"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="change_threshold"):
        calculate_reallocation_cost({}, {}, {}, {}, change_threshold=-1)


# ---------------------------------------------------------------------------------------------- decision


def decide(current_e: float, proposed_e: float, *, change: float = 0.2, restart_minutes: float = 0.0, **limits):
    current = {"a": 0.5, "b": 0.5}
    proposed = {"a": 0.5 + change / 2, "b": 0.5 - change / 2}
    return should_reallocate(
        current,
        proposed,
        current_earnings={"a": current_e / 2, "b": current_e / 2},
        proposed_earnings={"a": proposed_e / 2, "b": proposed_e / 2},
        restart_minutes={"a": restart_minutes, "b": restart_minutes},
        thresholds=DecisionThresholds(**limits),
    )


def test_all_criteria_pass() -> None:
    decision = decide(2.0, 3.0)
    assert decision.reallocate and all(decision.criteria.values())
    assert decision.improvement_usd_per_hour == pytest.approx(1.0) and decision.improvement_pct == pytest.approx(50.0)
    assert decision.change_l1 == pytest.approx(0.2)


def test_improvement_below_ten_percent_alone_blocks() -> None:
    decision = decide(10.0, 10.9)  # +0.9 $/h net benefit but only 9 %
    assert not decision.reallocate
    assert decision.criteria == {"improvement_pct": False, "net_benefit": True, "change_within_tolerance": True}


def test_net_benefit_alone_blocks() -> None:
    decision = decide(1.0, 1.4)  # 40 % but only 0.40 $/h
    assert not decision.reallocate
    assert decision.criteria == {"improvement_pct": True, "net_benefit": False, "change_within_tolerance": True}


def test_restart_cost_amortised_over_the_horizon_alone_blocks() -> None:
    # Gain 1 $/h; each of two restarts loses 1 $/h * 10 min = 0.1667 $ -> 0.333 $ / 0.25 h = 1.333 $/h.
    decision = decide(2.0, 3.0, restart_minutes=10)
    assert decision.reallocation_cost.total_usd == pytest.approx(2 * 1.0 * 10 / 60)
    assert decision.amortised_cost_usd_per_hour == pytest.approx(decision.reallocation_cost.total_usd / 0.25)
    assert decision.net_benefit_usd_per_hour == pytest.approx(1.0 - 4 / 3)
    assert not decision.reallocate and decision.criteria["improvement_pct"] and not decision.criteria["net_benefit"]
    assert decide(2.0, 3.0, restart_minutes=10, horizon_minutes=60).reallocate  # amortised over an hour it pays


def test_change_beyond_tolerance_alone_blocks() -> None:
    decision = decide(2.0, 3.0, change=0.8, max_change_l1=0.5)
    assert not decision.reallocate
    assert decision.criteria == {"improvement_pct": True, "net_benefit": True, "change_within_tolerance": False}


def test_thresholds_are_configurable_for_cent_scale_earnings() -> None:
    assert not decide(0.05, 0.08).reallocate
    assert decide(0.05, 0.08, min_net_benefit_usd_per_hour=0.001).reallocate


def test_zero_current_earnings_and_forced_reallocation(caplog: pytest.LogCaptureFixture) -> None:
    assert decide(0.0, 1.0).improvement_pct == math.inf
    assert decide(0.0, 0.0).improvement_pct == 0.0
    with caplog.at_level(logging.INFO, logger="earnopt.allocation"):
        forced = should_reallocate(
            {"a": 0.9},
            {"a": 0.5},
            current_earnings={"a": 0.01},
            proposed_earnings={"a": 0.009},
            restart_minutes={"a": 1},
            force_reason="the current allocation breaks the catalog",
        )
    assert forced.reallocate and not forced.criteria["improvement_pct"]
    assert "forced" in forced.reasons[-1] and "reallocation YES" in caplog.text
    assert forced.to_dict()["reallocation_cost"]["restarted"] == ["a"]
    assert decide(0.0, 1.0).to_dict()["improvement_pct"] == "inf"
    with pytest.raises(ValueError, match="horizon_minutes"):
        DecisionThresholds(horizon_minutes=0)


@pytest.mark.parametrize("potential", [0.0, 2.5e-263, 1e-9, 1e-5])
@pytest.mark.parametrize("penalty", [0.0, 0.001, 5.0])
def test_tiny_earnings_and_large_penalties_stay_well_scaled(potential: float, penalty: float) -> None:
    reqs = {"a": requirements(), "b": requirements(max_allocation=0.0), "c": requirements(min_allocation=0.1)}
    current = {"a": 0.3, "b": 0.0, "c": 0.4}
    result = ResourceAllocator(HOST).optimize_allocation(
        reqs, {"a": potential, "b": potential, "c": potential}, current, change_penalty=penalty
    )
    assert result.solver_status == "optimal", result
    assert check_constraints(result.allocations, reqs, HOST).passed
    if penalty >= 0.001 and potential < 1e-8:
        assert result.allocations == pytest.approx(current, abs=1e-6)  # nothing to gain: do not move


def test_concurrent_solves_on_one_allocator_do_not_mix_parameters() -> None:
    from concurrent.futures import ThreadPoolExecutor

    reqs = {"a": requirements(cpu_per_unit=8.0), "b": requirements(cpu_per_unit=8.0)}
    allocator = ResourceAllocator(HOST)
    cases = [{"a": 0.01 * (i + 1), "b": 0.05} for i in range(8)]
    expected = [ResourceAllocator(HOST).optimize_allocation(reqs, case).allocations for case in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: allocator.optimize_allocation(reqs, case).allocations, cases))
    for got, want in zip(results, expected):
        assert got == pytest.approx(want, abs=1e-6)
