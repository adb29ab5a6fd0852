"""Asset group: allocation - the 15-minute resource allocation and its blocking checks.

Check ordering. The two blocking checks (``solver_status_optimal``, ``constraints_satisfied``) are
declared as ``check_specs`` of ``resource_allocation`` and evaluated INSIDE the asset, after the optimiser
and before anything is committed: the plan is recorded as ``applied`` (``allocation_state`` updated,
``latest.json`` allocations switched) only when the decision says reallocate AND both checks passed.
Otherwise the cycle is recorded as ``kept`` or ``rejected`` and ``latest.json`` keeps the running
allocation. A failed ERROR check then also fails the step (blocking), so nothing downstream runs and the
scheduled run shows red; ``optimal_inaccurate`` fails with WARN only: the plan is still not applied, and
the next tick 15 minutes later tries again.
"""


import dagster as dg
from dagster_duckdb import DuckDBResource

from earnopt_assets.allocation import store
from earnopt_assets.allocation.cycle import run_allocation_cycle
from earnopt_assets.allocation.plan import AllocationPlan
from earnopt_assets.defs import render
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL

RESOURCE_ALLOCATION = dg.AssetKey("resource_allocation")
SOLVER_CHECK = "solver_status_optimal"
CONSTRAINTS_CHECK = "constraints_satisfied"


def _check_results(plan: AllocationPlan) -> list[dg.AssetCheckResult]:
    results = []
    for name in (SOLVER_CHECK, CONSTRAINTS_CHECK):
        outcome = plan.checks[name]
        results.append(
            dg.AssetCheckResult(
                asset_key=RESOURCE_ALLOCATION,
                check_name=name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR,
                description=outcome.description,
                metadata={**outcome.metadata, "plan_status": plan.status, "cycle_id": plan.cycle_id},
            )
        )
    return results


@dg.asset(
    key=RESOURCE_ALLOCATION,
    group_name="allocation",
    pool=DUCKDB_POOL,
    deps=[dg.AssetKey("earnings_forecast"), dg.AssetKey("alerts")],
    kinds={"duckdb", "cvxpy"},
    check_specs=[
        dg.AssetCheckSpec(
            SOLVER_CHECK,
            asset=RESOURCE_ALLOCATION,
            blocking=True,
            description="The solver reached 'optimal' (WARN on 'optimal_inaccurate'); otherwise the plan is not applied.",
        ),
        dg.AssetCheckSpec(
            CONSTRAINTS_CHECK,
            asset=RESOURCE_ALLOCATION,
            blocking=True,
            description="Resource use recomputed from the proposed allocation fits every host total (1e-6 relative), "
            "and min/max/0-1/degraded caps hold; otherwise the plan is not applied.",
        ),
    ],
)
def resource_allocation(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Allocate the host's CPU, memory, bandwidth and storage across the enabled protocols.

    Expected earnings come from the latest `forecasts` (next hour or 24-h mean, `allocation.expected_earnings`
    in the catalog), else a seasonal-naive fallback from `raw_earnings`; each protocol's diminishing-returns
    curve E(x) = k x^beta is fitted to 30 days of (allocation, earnings). CVXPY/ECOS maximises the summed
    concave earnings under the host totals, min/max shares and degraded caps (degraded -> its minimum and a
    restart). The reallocation rule (improvement >= 10 %, net benefit after amortised restart cost above the
    threshold, L1 change within tolerance) decides; the plan is applied only if it says yes and both blocking
    checks pass. It never waits on its upstream assets (inputs are read through the stores; the 15-minute job
    selects only this asset and ``applied_allocation``): a missing or failed forecast falls back to the
    young-series steps or the catalog prior with wider intervals, missing alerts mean no degraded caps, and
    ``degraded_inputs`` says which (#17). The cycle starts from the allocation in force (the last applied plan telemetry confirms,
    else the last reported share). Writes `allocations`, `optimization_cycles` (with realised earnings of
    past cycles), `allocation_state` (applied plans only) and `data/allocation/latest.json`, all through
    `earnopt_assets.allocation.store` and `earnopt_assets.allocation.cycle`.
    """
    catalog = earnopt.catalog()
    paths = earnopt.paths
    plan, realised_updates = run_allocation_cycle(duckdb.get_connection, catalog, paths.latest_plan, log=context.log)
    with duckdb.get_connection() as conn:
        cycles = store.recent_cycles(conn, plan.device, limit=PLOTTED_CYCLES)
    context.log.info(f"allocation cycle {plan.cycle_id}: {plan.status} ({'; '.join(plan.decision.reasons)})")
    return dg.MaterializeResult(metadata=allocation_metadata(plan, catalog, cycles, realised_updates, paths.latest_plan),
                                check_results=_check_results(plan))


PLOTTED_CYCLES = 96  # one day of 15-minute cycles
# Forecast sources that mean the earnings_forecast input was missing, stale or still warming up (#17).
DEGRADED_FORECAST_SOURCES = ("prior", "recent_level", "seasonal_naive_24_level_blend", "seasonal_naive_fallback", "no_data")


def degraded_inputs_markdown(plan: AllocationPlan) -> str:
    """Which optional inputs the plan ran without (#17): the allocation never waits for them, it degrades
    them: priors or young-series steps (with wider intervals) for missing or failed forecasts, no degraded
    caps without alerts."""
    lines = [
        f"- {n}: forecast {p.forecast_source.replace('_', ' ')} — {p.forecast_detail}"
        for n, p in plan.inputs.protocols.items() if p.forecast_source in DEGRADED_FORECAST_SOURCES
    ]
    lines += [f"- {note}" for note in plan.inputs.notes if "protocol_state" in note or "alerts" in note]
    return "\n".join(lines) or "None: every protocol has a fresh forecast and the alert state is known."
RECENT_CYCLES_SHOWN = 8


def allocation_metadata(plan: AllocationPlan, catalog, cycles, realised_updates: int, latest_plan) -> dict[str, object]:
    """The asset's metadata. Each figure has one source: the restart list is ``plan.restarts`` (the actions),
    the expected gain is the plan's (0 unless applied), and the prose is built from the same numbers.
    ``plan_not_in_force`` says where telemetry contradicts the last applied plan (the orchestrator did not
    apply it), so the cycle started from the reported shares instead."""
    d = plan.decision
    degraded = [p.name for p in plan.protocols.values() if p.degraded]
    metadata: dict[str, object] = {
        "cycle_id": plan.cycle_id,
        "status": plan.status,
        "applied": plan.applied,
        "decision": "reallocate" if d.reallocate else "keep",
        "protocols": len(plan.protocols),
        "degraded": ", ".join(degraded) or "none",
        "plan_not_in_force": dg.MetadataValue.md(
            "\n".join(f"- {n}: {p.disagreement}" for n, p in plan.inputs.protocols.items() if p.disagreement)
            or "The last applied plan and telemetry agree (or no plan has been applied yet)."
        ),
        "restarts": len(plan.restarts),
        "restarted_protocols": ", ".join(plan.restarts) or "none",
        "solver": plan.result.solver or "no solver ran",
        "solver_status": plan.result.solver_status,
        "solve_ms": dg.MetadataValue.float(1000 * plan.result.solve_seconds),
        "expected_current_usd_per_h": dg.MetadataValue.float(d.current_usd_per_hour),
        "expected_proposed_usd_per_h": dg.MetadataValue.float(d.proposed_usd_per_hour),
        "expected_after_cycle_usd_per_h": dg.MetadataValue.float(plan.expected_target_usd_per_hour),
        "expected_gain_usd_per_h": dg.MetadataValue.float(plan.expected_gain_usd_per_hour),
        # the proposal's gain with its 80 % interval (allocation.risk) and the risk setting that gated it
        "proposal_gain_interval_80_usd_per_h": dg.MetadataValue.text("{:+.6f} .. {:+.6f}".format(*plan.gain_interval_80)),
        "risk_aversion": dg.MetadataValue.float(plan.risk_aversion),
        "proposal_net_benefit_usd_per_h": dg.MetadataValue.float(d.net_benefit_usd_per_hour),
        "proposal_restart_cost_usd": dg.MetadataValue.float(d.reallocation_cost.total_usd),
        "proposal_change_l1": dg.MetadataValue.float(d.change_l1),
        "realised_cycles_updated": realised_updates,
        "forecast_sources": dg.MetadataValue.json({n: p.forecast_source for n, p in plan.protocols.items()}),
        "degraded_inputs": dg.MetadataValue.md(degraded_inputs_markdown(plan)),
        "allocation_table": render.table_metadata(
            render.allocation_frame(plan, catalog), descriptions=render.ALLOCATION_COLUMN_DESCRIPTIONS
        ),
        "utilisation": render.table_metadata(render.utilisation_frame(plan, catalog)),
        "decision_analysis": dg.MetadataValue.md(render.allocation_decision_markdown(plan)),
        "recent_cycles": render.table_metadata(render.recent_cycles_frame(cycles.head(RECENT_CYCLES_SHOWN))),
        "realised_vs_expected": dg.MetadataValue.md(render.realised_vs_expected_markdown(cycles)),
        "latest_plan": dg.MetadataValue.path(str(latest_plan)),
    }
    if plan.result.diagnosis:
        metadata["diagnosis"] = dg.MetadataValue.md("\n".join(f"- {line}" for line in plan.result.diagnosis))
    return metadata


allocation_job = dg.define_asset_job(
    "allocation_job",
    # applied_allocation (defs/actuation.py) acts on the plan; the blocking checks keep it from a failed plan
    selection=dg.AssetSelection.assets(RESOURCE_ALLOCATION, dg.AssetKey("applied_allocation")),
    executor_def=dg.in_process_executor,
    description="Every 15 minutes: re-solve the allocation, apply it if the rule and the blocking checks allow, "
    "and act on the containers per actuation.mode.",
)

allocation_schedule = dg.ScheduleDefinition(
    name="allocation_schedule",
    job=allocation_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-allocate host resources every 15 minutes.",
)

assets: list = [resource_allocation]
asset_checks: list = []  # the checks are check_specs of resource_allocation (evaluated before committing)
jobs: list = [allocation_job]
schedules: list = [allocation_schedule]
sensors: list = []
