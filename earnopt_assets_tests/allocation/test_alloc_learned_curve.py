"""The response learned from telemetry (#12): monotone, conservative where the share was never seen, its concave
envelope for the optimiser, and the plan snapped onto observed-good shares of the (non-concave) learned curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.allocation.allocator import (
    AllocationResult,
    ProtocolRequirements,
    ResourceAllocator,
    ResourceConstraints,
)
from earnopt_assets.allocation.plan import discrete_check, potential_from_forecast, snap_to_observed
from earnopt_assets.numerics.response import ResponseCurve, learn_response_curve

HOURS = pd.date_range("2026-01-01", periods=24 * 60, freq="h")


def telemetry(response, shares=(0.2, 0.4, 0.6, 0.8, 1.0, 0.3, 0.5, 0.7, 0.9), days: int = 4, seed: int = 0,
              outage_hours: int = 0) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Runs of ``days`` at each share; earnings = response(share) x a daily rhythm x lognormal noise."""
    rng = np.random.default_rng(seed)
    allocation = np.repeat(np.asarray(shares, dtype=float), 24 * days)
    ts = HOURS[: len(allocation)]
    rhythm = 1.0 + 0.5 * np.sin(2 * np.pi * ts.hour.to_numpy() / 24)
    earnings = 0.01 * response(allocation) * rhythm * np.exp(rng.normal(0, 0.05, len(ts)))
    earnings[24 * days + 5: 24 * days + 5 + outage_hours] = 0.0  # an outage inside the second run
    return ts, allocation, earnings


def test_learns_a_saturating_curve_that_no_power_law_fits() -> None:
    ts, a, e = telemetry(lambda x: np.minimum(1.0, x / 0.4), outage_hours=6)
    curve = learn_response_curve(ts, a, e)
    assert curve.method == "learned" and curve.knots == pytest.approx((0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    assert np.all(np.diff(curve.levels) >= 0)  # monotone
    assert curve.relative(0.2) == pytest.approx(0.5, abs=0.04) and curve.relative(0.4) == pytest.approx(1.0, abs=0.04)
    assert curve.relative(0.95) == pytest.approx(curve.relative(0.9))  # no gain between observed shares
    assert curve.relative(0.1) == 0.0  # nothing believed below the smallest observed share
    assert curve.scale_usd_per_hour == pytest.approx(0.01, rel=0.05)  # the outage hours were left out
    # a power law through the same data puts beta well inside (0, 1) and keeps "earning" past saturation
    assert float(ResponseCurve(beta=curve.beta).relative(0.4)) < 0.9


def test_learns_a_minimum_and_whole_leases() -> None:
    ts, a, e = telemetry(lambda x: np.where(x >= 0.45, x, 0.0))
    storage = learn_response_curve(ts, a, e)
    assert storage.relative(0.4) == pytest.approx(0.0, abs=1e-3) and storage.relative(0.5) == pytest.approx(0.5, abs=0.05)
    ts, a, e = telemetry(lambda x: np.floor(x / 0.3 + 1e-9) / 3)
    leases = learn_response_curve(ts, a, e)
    assert leases.relative(0.5) == pytest.approx(1 / 3, abs=0.03) and leases.relative(0.6) == pytest.approx(2 / 3, abs=0.03)
    assert leases.plateau_start(0.5) == pytest.approx(0.3)  # the least observed share that earns what 0.5 earns
    assert leases.plateau_start(0.1) is None


def test_a_run_of_peak_hours_is_judged_by_the_hour_of_day_proxy_not_its_place_in_the_day() -> None:
    """A short run covering only the daily peak would look like a better share without the demand proxy."""
    ts, a, e = telemetry(lambda x: np.ones_like(x), shares=(0.5, 0.5, 0.5, 0.5))
    peak = (ts.hour >= 3) & (ts.hour <= 9) & (ts.day == 3)  # the rhythm's top: about 1.4x the daily mean
    a = np.where(peak, 0.9, a)
    curve = learn_response_curve(ts, a, e, min_hours=6)
    assert curve.knots == pytest.approx((0.5, 0.9))
    assert curve.levels[0] == pytest.approx(1.0, abs=0.1)  # flat: 0.9 earns what 0.5 earns at the same hour


def test_too_little_variation_falls_back_to_the_power_fit() -> None:
    ts, a, e = telemetry(lambda x: x**0.5, shares=(0.5, 0.5))
    curve = learn_response_curve(ts, a, e)
    assert curve.method in ("fit", "prior") and not curve.learned
    with pytest.raises(ValueError, match="same length"):
        learn_response_curve(ts[:3], a, e)
    with pytest.raises(ValueError, match="non-decreasing"):
        ResponseCurve(knots=(0.2, 0.5), levels=(1.0, 0.5))


def test_the_envelope_is_the_least_concave_majorant_and_the_chords_are_exactly_it() -> None:
    curve = ResponseCurve(method="learned", knots=(0.3, 0.5, 0.6, 0.9), levels=(0.4, 0.4, 0.75, 1.0), scale_usd_per_hour=0.01)
    grid = np.linspace(0, 1, 1001)
    envelope = curve.envelope_value(grid)
    assert np.all(envelope >= curve.relative(grid) - 1e-12)  # a majorant of the step curve
    assert np.all(np.diff(envelope, 2) <= 1e-9)  # concave
    z, r = curve.envelope()
    assert r[-1] == 1.0
    assert z.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0]) and 0.5 not in z  # 0.5 lies under the chord
    a, b = curve.chords()
    assert len(a) == 12 and np.all(b >= 0)
    assert np.min(a[:, None] + b[:, None] * grid[None, :], axis=0) == pytest.approx(envelope, abs=1e-12)
    assert curve.at_share(0.45) == pytest.approx(0.4) and curve.at_share(0.15) == pytest.approx(0.2)
    assert potential_from_forecast(0.002, 0.3, curve)[0] == pytest.approx(0.005)
    assert potential_from_forecast(0.0, 0.01, curve)[0] == curve.scale_usd_per_hour  # below 2 %: the curve's scale


def test_snapping_moves_a_between_leases_answer_onto_a_lease_and_gives_the_rest_away() -> None:
    """The envelope makes 0.45 of a 0.3-lease protocol look worth half a lease; on the learned curve it earns what
    0.3 earns, so the plan runs 0.3 and the freed cores go to the protocol that earns from them."""
    host = ResourceConstraints(total_cpu_cores=0.85, total_memory_gb=100, total_bandwidth_mbps=100, total_storage_gb=100)
    cpu = {"cpu_per_unit": 1.0, "memory_per_unit": 0.0, "bandwidth_per_unit": 0.0, "storage_per_unit": 0.0}
    requirements = {"leases": ProtocolRequirements(**cpu), "diminishing": ProtocolRequirements(**cpu)}
    curves = {
        "leases": ResponseCurve(method="learned", knots=(0.3, 0.6, 0.9), levels=(1 / 3, 2 / 3, 1.0)),
        "diminishing": ResponseCurve(method="learned", knots=(0.1, 0.2, 0.4, 0.55, 0.7, 1.0), levels=(0.3, 0.5, 0.75, 0.85, 0.9, 1.0)),
    }
    potentials = {"leases": 1.0, "diminishing": 1.0}
    allocator = ResourceAllocator(host)
    current = {"leases": 0.3, "diminishing": 0.4}
    first = allocator.optimize_allocation(requirements, potentials, current, response_curves=curves)
    assert first.allocations["leases"] == pytest.approx(0.45, abs=1e-4)  # the envelope's answer: between two leases
    snapped = snap_to_observed(allocator, first, requirements, potentials, current, frozenset(), curves, 0.0)
    assert snapped.allocations["leases"] == pytest.approx(0.3)
    assert snapped.allocations["diminishing"] == pytest.approx(0.55, abs=1e-6)  # the freed share, onto an observed share
    assert sum(snapped.allocations.values()) <= 0.85 + 1e-9
    earned = sum(potentials[n] * curves[n].relative(x) for n, x in snapped.allocations.items())
    assert snapped.expected_earnings == pytest.approx(earned)
    assert earned > sum(potentials[n] * curves[n].relative(x) for n, x in first.allocations.items())


def test_the_discrete_check_steps_up_to_a_storage_minimum_the_snap_would_fall_below() -> None:
    """The envelope prices 0.55 of a storage node at most of what 0.6 earns; the learned curve pays 0 below its
    smallest observed share 0.6, so snapping down gives it nothing. The exact optimum over the observed shares
    runs it at 0.6 and is proposed because it earns more on the learned curves."""
    host = ResourceConstraints(total_cpu_cores=0.85, total_memory_gb=100, total_bandwidth_mbps=100, total_storage_gb=100)
    cpu = {"cpu_per_unit": 1.0, "memory_per_unit": 0.0, "bandwidth_per_unit": 0.0, "storage_per_unit": 0.0}
    requirements = {"storage": ProtocolRequirements(**cpu, min_allocation=0.5), "bandwidth": ProtocolRequirements(**cpu)}
    curves = {
        "storage": ResponseCurve(method="learned", knots=(0.6, 0.8, 1.0), levels=(0.6, 0.8, 1.0)),
        "bandwidth": ResponseCurve(method="learned", knots=(0.1, 0.3, 0.5), levels=(0.5, 0.9, 1.0)),
    }
    potentials = {"storage": 1.0, "bandwidth": 1.0}
    current = {"storage": 0.6, "bandwidth": 0.3}
    allocator = ResourceAllocator(host)
    first = allocator.optimize_allocation(requirements, potentials, current, response_curves=curves)
    assert first.allocations == pytest.approx({"storage": 0.55, "bandwidth": 0.3}, abs=1e-5)
    snapped = snap_to_observed(allocator, first, requirements, potentials, current, frozenset(), curves, 0.0)
    assert snapped.allocations["storage"] == pytest.approx(0.5) and snapped.expected_earnings_by_protocol["storage"] == 0.0
    checked = discrete_check(snapped, requirements, potentials, current, frozenset(), curves, 0.0, host.totals())
    assert checked.allocations == pytest.approx({"storage": 0.6, "bandwidth": 0.1})
    assert checked.expected_earnings == pytest.approx(0.6 + 0.5) and checked.expected_earnings > snapped.expected_earnings
    assert "exact optimum over the observed shares" in checked.diagnosis[-1]
    assert discrete_check(checked, requirements, potentials, current, frozenset(), curves, 0.0, host.totals()) is checked


def test_the_discrete_check_does_not_swap_a_near_equal_plan_for_restarts() -> None:
    """Two plans that earn almost the same: without the restart cost the exact optimum would restart both
    protocols for a 1 % gain; priced as the decision rule prices a restart, it keeps what runs."""
    host = ResourceConstraints(total_cpu_cores=1.0, total_memory_gb=100, total_bandwidth_mbps=100, total_storage_gb=100)
    cpu = {"cpu_per_unit": 1.0, "memory_per_unit": 0.0, "bandwidth_per_unit": 0.0, "storage_per_unit": 0.0}
    requirements = {"a": ProtocolRequirements(**cpu), "b": ProtocolRequirements(**cpu)}
    curves = {"a": ResponseCurve(method="learned", knots=(0.3, 0.7), levels=(0.5, 1.0)),
              "b": ResponseCurve(method="learned", knots=(0.3, 0.7), levels=(0.5, 1.0))}
    potentials = {"a": 1.0, "b": 1.01}
    current = {"a": 0.7, "b": 0.3}  # earns 1.0 + 0.505; swapping to a 0.3 / b 0.7 earns 0.5 + 1.01
    kept = AllocationResult(allocations=dict(current), expected_earnings=1.505, resource_utilization={}, is_optimal=True,
                            solver_status="optimal", solve_seconds=0.0)
    swapped = discrete_check(kept, requirements, potentials, current, frozenset(), curves, 0.0, host.totals())
    assert swapped.allocations == pytest.approx({"a": 0.3, "b": 0.7})
    costs = {"a": 0.01, "b": 0.01}  # each restart costs more than the 0.005 $/h the swap gains
    assert discrete_check(kept, requirements, potentials, current, frozenset(), curves, 0.0, host.totals(), costs) is kept
