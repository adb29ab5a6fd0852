"""Asset group: actuation - apply the 15-minute plan to the protocols' Docker containers and confirm it.

``applied_allocation`` runs after ``resource_allocation`` in the allocation job. The allocation's two
blocking checks gate it: when one fails, the allocation step fails and this asset does not run, so a
rejected plan never reaches a container.
"""

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from earnopt_assets.actuation.actuator import ActuationOutcome
from earnopt_assets.actuation.cycle import effective_mode, read_plan, run_actuation, sample_usage
from earnopt_assets.allocation.plan import utc_now
from earnopt_assets.defs import render
from earnopt_assets.resources import EarnoptResource
from earnopt_assets.warehouse import DUCKDB_POOL

APPLIED_ALLOCATION = dg.AssetKey("applied_allocation")


def limits_frame(outcome: ActuationOutcome) -> pd.DataFrame:
    """Before/after limits per container (units in the column names)."""
    rows = []
    for step in outcome.steps:
        before, after = step.before, outcome.after.get(step.protocol)
        rows.append({
            "protocol": step.protocol,
            "container": step.container.name if step.container else "(none)",
            "share_%": round(100 * step.share, 2),
            "action": step.action,
            "status": step.status,
            "before_cpu_cores": round(before.cpu_cores, 3) if before else float("nan"),
            "target_cpu_cores": round(step.target.cpu_cores, 3) if step.target.running else 0.0,
            "after_cpu_cores": round(after.cpu_cores, 3) if after else float("nan"),
            "before_memory_mb": round(before.memory_mb, 1) if before else float("nan"),
            "target_memory_mb": round(step.target.memory_mb, 1) if step.target.running else 0.0,
            "after_memory_mb": round(after.memory_mb, 1) if after else float("nan"),
            "before_running": ("yes" if before.running else "no") if before else "",
            "after_running": ("yes" if after.running else "no") if after else "",
            "reason": step.reason,
        })
    return pd.DataFrame(rows)


def actions_frame(outcome: ActuationOutcome) -> pd.DataFrame:
    return pd.DataFrame([{"protocol": r.protocol, "container": r.container or "(none)", "action": r.action,
                          "status": r.status, "reason": r.reason} for r in outcome.records])


@dg.asset(
    key=APPLIED_ALLOCATION,
    group_name="allocation",
    pool=DUCKDB_POOL,
    deps=[dg.AssetKey("resource_allocation")],
    kinds={"docker", "duckdb"},
)
def applied_allocation(context: dg.AssetExecutionContext, earnopt: EarnoptResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Apply the plan in `data/allocation/latest.json` to the protocols' Docker containers.

    Mode (`actuation.mode` in the catalog, or `EARNOPT_ACTUATION_MODE`): `off` does nothing, `dry_run`
    inspects the mapped containers and records what it would do, `apply` changes them: `docker update` of
    CPU (NanoCpus) and memory for `adjust`, a restart for `restart` (at most `max_restarts_per_day` per
    protocol), a stop at share 0 and a start when the share returns. Only containers mapped to a protocol
    (by name, or labelled `earnopt.protocol=<protocol>`) are touched. After applying, every container is read
    back with `docker inspect`; a failed step or a mismatch rolls every changed container back to its previous
    limits and raises a critical `actuation_rollback` alert. Each action is recorded in `actuations`; the
    confirmed limits are what the next cycle reads as the allocation in force. The mapped containers' CPU
    and memory use (Docker stats API) is folded into hourly `resource_usage`.
    """
    catalog = earnopt.catalog()
    mode = effective_mode(catalog)
    if mode == "off":
        return dg.MaterializeResult(metadata={
            "mode": "off",
            "summary": dg.MetadataValue.md("Actuation is **off** (catalog `actuation.mode`): the plan file is written, "
                                           "no container is inspected or changed."),
        })
    plan = read_plan(earnopt.paths.latest_plan)
    now = utc_now()
    from earnopt_assets.actuation.docker_runtime import DockerRuntime

    try:
        runtime = DockerRuntime.connect(catalog.actuation)
    except Exception as exc:
        if mode == "apply":
            raise dg.Failure(f"actuation mode apply, but the Docker Engine is unreachable: {exc}") from exc
        context.log.warning(f"dry_run: Docker Engine unreachable ({exc}); nothing inspected")
        return dg.MaterializeResult(metadata={
            "mode": mode, "cycle_id": plan["cycle_id"],
            "summary": dg.MetadataValue.md(f"Dry run: the Docker Engine is unreachable, so nothing was inspected.\n\n`{exc}`"),
        })
    try:
        outcome = run_actuation(duckdb.get_connection, catalog, plan, runtime, mode, now=now)
        usage = sample_usage(duckdb.get_connection, catalog, runtime, now=now)
    finally:
        runtime.close()
    if outcome.failure:
        context.log.error(f"actuation rolled back: {outcome.failure}")
    counts = pd.Series([s.status for s in outcome.steps]).value_counts().to_dict() if outcome.steps else {}
    summary = (f"Mode **{mode}**, plan `{outcome.cycle_id}`: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no protocol in the plan")
               + (f".\n\n**Rolled back** because {outcome.failure}; a critical `actuation_rollback` alert was raised." if outcome.failure else "."))
    return dg.MaterializeResult(metadata={
        "mode": mode,
        "cycle_id": outcome.cycle_id,
        "actuation_id": outcome.actuation_id,
        "confirmed": len(outcome.confirmed),
        "rolled_back": len(outcome.rolled_back),
        "failure": outcome.failure or "none",
        "summary": dg.MetadataValue.md(summary),
        "limits": render.table_metadata(limits_frame(outcome)),
        "actions": render.table_metadata(actions_frame(outcome)),
        "usage_samples": len(usage),
    })


assets: list = [applied_allocation]
asset_checks: list = []
jobs: list = []
schedules: list = []
sensors: list = []
