"""Allocation optimisation on demand: the allocation asset's cycle, minus the writes.

The inputs (response curves fitted to the last 30 days, stored allocation state, degraded protocols,
latest forecasts) are read from the warehouse read-only with
:func:`earnopt_assets.allocation.cycle.read_cycle_inputs`; :func:`earnopt_assets.allocation.plan.request_inputs`
lets the request's current allocations and predictions override them (and computes the potentials);
:func:`compute_plan` (pure) optimises, checks and decides. Nothing is written: applying a plan is the
orchestrator's job.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from fastapi import APIRouter, Depends

from earnopt_assets.service import reads
from earnopt_assets.service.errors import ServiceUnavailable, UnprocessableData
from earnopt_assets.service.routers.deps import get_state
from earnopt_assets.service.schemas import (
    AllocationRequest,
    AllocationResponse,
    CostItem,
    ProtocolAllocation,
    ReallocationAnalysis,
)
from earnopt_assets.service.state import ServiceState
from earnopt_assets.service.telemetry import utc_now

router = APIRouter(tags=["allocation"])

# The allocator caches one parametrised CVXPY problem per protocol set; a solve sets its parameters, so
# concurrent requests take turns.
_SOLVE_LOCK = threading.Lock()
INF_STANDIN = 1e308


def _check_names(state: ServiceState, names: dict[str, Any], field: str) -> None:
    enabled = set(state.catalog.enabled_names)
    for name in names:
        if name not in enabled:
            known = ", ".join(state.catalog.enabled_names)
            raise UnprocessableData(f"{name!r} is not an enabled protocol of the catalog ({known})", field=f"{field}.{name}")


@router.post(
    "/predict/allocation",
    response_model=AllocationResponse,
    responses={422: {"description": "Invalid allocations or predictions (field named)."}, 503: {"description": "No predictions available, or the warehouse is busy."}},
)
def optimize_allocation(request: AllocationRequest, state: ServiceState = Depends(get_state)) -> AllocationResponse:
    """Optimise allocations for the given current allocations and earnings predictions.

    Potential p_i ($/h at allocation 1.0): a prediction f_i at the current share x_i gives
    p_i = f_i / x_i**beta_i (beta_i from the response curve fitted to telemetry, prior 0.5); below x = 0.02
    the curve's own scale is used. With ``earnings_basis: full_allocation``, p_i = f_i. The solver maximises
    sum_i p_i x_i**beta_i under the host's resource totals; the reallocation rule then compares the gain with
    the restart cost (full analysis in ``analysis``).
    """
    from earnopt_assets.allocation.cycle import read_cycle_inputs
    from earnopt_assets.allocation.plan import compute_plan, empty_inputs, has_predictions, request_inputs

    _check_names(state, request.current_allocations, "current_allocations")
    _check_names(state, request.earnings or {}, "earnings")
    try:
        with reads.read_connection(state.db_path) as conn:
            inputs = read_cycle_inputs(conn, state.catalog)
    except reads.WarehouseMissing:
        inputs = empty_inputs(state.catalog, utc_now().replace(tzinfo=None), "warehouse does not exist yet")
    except reads.WarehouseBusy as exc:
        raise ServiceUnavailable(str(exc), problem="warehouse-busy") from None

    posted = {} if request.use_latest_forecasts else (request.earnings or {})
    inputs = request_inputs(
        inputs, state.catalog.allocation.expected_earnings, request.current_allocations, posted, request.earnings_basis
    )
    if not has_predictions(inputs):
        raise ServiceUnavailable(
            "no earnings predictions: post 'earnings', or let the pipeline write forecasts/telemetry first",
            problem="no-predictions",
        )
    with _SOLVE_LOCK:
        plan = compute_plan(inputs, state.catalog, state.allocator())
    return _response(plan)


def _finite(value: float) -> float | None:
    if math.isnan(value):
        return None
    return INF_STANDIN if math.isinf(value) else value


def _response(plan: Any) -> AllocationResponse:
    decision = plan.decision
    cost = decision.reallocation_cost
    analysis = ReallocationAnalysis(
        decision="reallocate" if decision.reallocate else "keep",
        forced_reason=decision.forced_reason,
        criteria=dict(decision.criteria),
        reasons=list(decision.reasons),
        current_usd_per_hour=decision.current_usd_per_hour,
        proposed_usd_per_hour=decision.proposed_usd_per_hour,
        improvement_usd_per_hour=decision.improvement_usd_per_hour,
        improvement_pct=_finite(decision.improvement_pct),
        change_l1=decision.change_l1,
        reallocation_cost_usd=cost.total_usd,
        amortised_cost_usd_per_hour=decision.amortised_cost_usd_per_hour,
        net_benefit_usd_per_hour=decision.net_benefit_usd_per_hour,
        restarted=cost.restarted,
        cost_items=[
            CostItem(protocol=name, current=i.current, new=i.new, change=i.change, restarts=i.restarts,
                     downtime_minutes=i.downtime_minutes, downtime_cost_usd=i.downtime_cost_usd,
                     fixed_cost_usd=i.fixed_cost_usd, total_usd=i.total_usd)
            for name, i in cost.items.items()
        ],
        thresholds={k: float(v) for k, v in vars(decision.thresholds).items() if isinstance(v, (int, float))},
    )
    protocols = [
        ProtocolAllocation(
            protocol=p.name, current=p.current, optimal=p.proposed, recommended=p.target, action=p.action,
            reason=p.reason, degraded=p.degraded, potential_usd_per_hour=p.potential_usd_per_hour,
            expected_current_usd_per_hour=p.expected_current_usd_per_hour,
            expected_optimal_usd_per_hour=p.expected_proposed_usd_per_hour, response_beta=p.response_beta,
            earnings_source=p.forecast_source,
        )
        for p in plan.protocols.values()
    ]
    result = plan.result
    return AllocationResponse(
        allocations=plan.target,
        optimal_allocations=dict(result.allocations),
        status=plan.status,
        utilisation_pct={k: _finite(v) or 0.0 for k, v in plan.target_utilization.items()},
        optimal_utilisation_pct={k: _finite(v) or 0.0 for k, v in result.resource_utilization.items()},
        solver_status=result.solver_status,
        solver=result.solver,
        solve_seconds=result.solve_seconds,
        checks={name: check.passed for name, check in plan.checks.items()},
        diagnosis=list(result.diagnosis),
        protocols=protocols,
        analysis=analysis,
        notes=list(plan.inputs.notes),
    )
