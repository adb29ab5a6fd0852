"""Policy benchmark (issue 12 s2): do earnopt's plans earn more than leaving things alone?

For each seed a hidden-response :class:`~earnopt_assets.environment.HostEnvironment` on the default catalog
runs ``--history-days`` (60) of its own random allocation path, then ``--loop-days`` (30) in which each
policy sets the shares every hour (see :mod:`earnopt_assets.closed_loop` for the policies):

* ``catalog_initial`` / ``equal_shares`` - held fixed (what money4band / income-generator do);
* ``earnopt_lambda_<x>`` - earnopt's full hourly loop (ingest, daily retrain of the statistical forecast
  candidates with the serving rule and conformal intervals, hourly forecasts, anomaly caps, the allocation
  with its restart rule and risk setting, the plan applied to the environment) at the catalog's
  ``allocation.risk_aversion`` (default) and at lambda = 0;
* ``oracle`` - the best fixed allocation knowing the true response curves, demand and prices.

Per policy and seed: total $ over the loop, uplift over the better static policy, the share of the oracle's
uplift captured (uplift / oracle uplift), restarts, downtime hours (restart minutes lost), wall time; then
per policy the mean and standard deviation of total $ across seeds. Target: earnopt captures >= 70 % of the
oracle's uplift on every seed.

    .venv/bin/python benchmarks/policy.py                       # 3 seeds x 60 + 30 days, 2 worker processes
    .venv/bin/python benchmarks/policy.py --seeds 1 --loop-days 3 --workers 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earnopt_assets.catalog import load_catalog

END = "2026-03-31T23:00:00"
STATIC = ("catalog_initial", "equal_shares")


def _outcome(data: dict):
    from earnopt_assets.closed_loop import PolicyOutcome

    return PolicyOutcome(**data, hourly_usd=None)


def run_one(task: tuple[str, int, int, int, float | None]):
    """One (policy, seed) replay in its own process (policies share nothing but the seed)."""
    from earnopt_assets import closed_loop as cl
    from earnopt_assets.allocation.plan import initial_allocation

    policy, seed, history_days, loop_days, risk = task
    catalog = load_catalog()
    env, history = cl.make_environment(catalog, seed, history_days, loop_days, END)
    if policy == "catalog_initial":
        return cl.static_policy(policy, env, initial_allocation(catalog), seed)
    if policy == "equal_shares":
        return cl.static_policy(policy, env, cl.equal_shares(catalog), seed)
    if policy == "oracle":
        started = time.perf_counter()
        shares = cl.oracle_allocation(env, catalog)
        outcome = cl.static_policy(policy, env, shares, seed)
        outcome.wall_seconds = time.perf_counter() - started  # the MILP included
        return outcome
    return cl.earnopt_policy(policy, env, catalog, history, seed, risk_aversion=risk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--history-days", type=int, default=60)
    parser.add_argument("--loop-days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policies", nargs="+", help="replay only these policies (default: all)")
    parser.add_argument("--save", type=Path, help="write each replay's outcome as JSON here as it finishes")
    parser.add_argument("--load", type=Path, help="print the table from outcomes saved by --save instead of replaying")
    args = parser.parse_args(argv)

    default_risk = load_catalog().allocation.risk_aversion
    earnopt = {f"earnopt_lambda_{default_risk:g}": None, "earnopt_lambda_0": 0.0}
    # long ones first, the default risk setting (the target figure) on every seed before lambda = 0
    tasks = [(p, s, args.history_days, args.loop_days, risk) for p, risk in earnopt.items() for s in args.seeds]
    tasks += [(p, s, args.history_days, args.loop_days, None) for s in args.seeds for p in (*STATIC, "oracle")]
    if args.policies:
        tasks = [t for t in tasks if t[0] in args.policies]
    started = time.perf_counter()
    outcomes = []
    if args.load:
        outcomes = [_outcome(json.loads(path.read_text())) for path in sorted(args.load.glob("*.json"))]
        outcomes = [o for o in outcomes if o.seed in args.seeds]
        total_wall = max(o.wall_seconds for o in outcomes)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_one, task) for task in tasks]
            for future in as_completed(futures):
                o = future.result()
                outcomes.append(o)
                print(f"  done: seed {o.seed} {o.policy}: {o.total_usd:.3f} $, {o.restarts} restarts, {o.wall_seconds:.0f} s", flush=True)
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    data = {k: v for k, v in vars(o).items() if k != "hourly_usd"}
                    (args.save / f"{o.policy}_seed{o.seed}.json").write_text(json.dumps(data))
        total_wall = time.perf_counter() - started
    by = {(o.policy, o.seed): o for o in outcomes}
    order = [p for p in (*STATIC, *earnopt, "oracle") if all((p, s) in by for s in args.seeds)]  # what was replayed

    print(f"policy benchmark: default catalog, hidden per-seed response curves, {args.history_days} days history + "
          f"{args.loop_days} days closed loop, seeds {args.seeds}, {args.workers} worker processes, {total_wall:.0f} s wall")
    header = f"{'seed':>4}  {'policy':<22} {'total_usd':>10} {'uplift_usd':>10} {'uplift_%':>8} {'oracle_uplift_captured_%':>24} {'restarts':>8} {'downtime_h':>10} {'wall_s':>7}"
    print(header)
    print("-" * len(header))
    captured: dict[str, list[float]] = {p: [] for p in order}
    for seed in args.seeds:
        best_static = max(by[(p, seed)].total_usd for p in STATIC)
        oracle_uplift = by[("oracle", seed)].total_usd - best_static
        for policy in order:
            o = by[(policy, seed)]
            uplift = o.total_usd - best_static
            share = 100.0 * uplift / oracle_uplift if oracle_uplift > 0 else float("nan")
            captured[policy].append(share)
            print(f"{seed:>4}  {policy:<22} {o.total_usd:>10.3f} {uplift:>+10.3f} {100 * uplift / best_static:>+8.1f} {share:>24.1f} "
                  f"{o.restarts:>8d} {o.downtime_hours:>10.2f} {o.wall_seconds:>7.1f}")
    print()
    print(f"{'policy':<22} {'mean_total_usd':>14} {'sd_total_usd':>12} {'min_captured_%':>14} {'mean_restarts':>13}")
    for policy in order:
        totals = [by[(policy, s)].total_usd for s in args.seeds]
        sd = statistics.stdev(totals) if len(totals) > 1 else 0.0
        restarts = statistics.mean(by[(policy, s)].restarts for s in args.seeds)
        print(f"{policy:<22} {statistics.mean(totals):>14.3f} {sd:>12.3f} {min(captured[policy]):>14.1f} {restarts:>13.1f}")
    print()
    for policy in (p for p in earnopt if p in order):
        for seed in args.seeds:
            print(f"{policy} seed {seed}: " + "; ".join(by[(policy, seed)].notes))
    default = next(iter(earnopt))
    if default not in order or not all(p in order for p in (*STATIC, "oracle")):
        return 0
    hit = all(share >= 70.0 for share in captured[default])
    print(f"\ntarget (>= 70 % of the oracle's uplift on every seed, {default}): {'met' if hit else 'NOT met'} "
          f"(captured: {', '.join(f'{s:.0f} %' for s in captured[default])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
