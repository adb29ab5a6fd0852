"""Allocator solve-time benchmark: 20 and 500 protocols, first solve vs DPP re-solve.

For each size, random but feasible instances (per-unit resources, min/max shares, response exponents and
full-allocation earnings drawn from a seeded RNG; host totals at 45 % of what every protocol at max
would need) are solved by one ``ResourceAllocator``:

* import       - ``import cvxpy`` in this process (paid once per process, before any solve);
* first solve  - problem build + DPP compile + ECOS solve (a new protocol set);
* re-solve     - the same protocol set with new expected earnings, current allocation and change
                 penalty (parameters only): what every 15-minute tick pays once the process is warm.

Prints medians over ``--repeats`` first solves and ``--resolves`` re-solves per size, and the solver and
status seen. Targets (issue 5): re-solve < 50 ms for 20 protocols, < 1 s for 500.

    .venv/bin/python benchmarks/allocator.py
    .venv/bin/python benchmarks/allocator.py --sizes 20 100 500 --resolves 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earnopt_assets.allocation.allocator import (
    RESOURCES,
    ProtocolRequirements,
    ResourceAllocator,
    ResourceConstraints,
    check_constraints,
)
from earnopt_assets.numerics.response import ResponseCurve

TARGET_SECONDS = {20: 0.050, 500: 1.0}


def instance(n: int, rng: np.random.Generator):
    reqs: dict[str, ProtocolRequirements] = {}
    curves: dict[str, ResponseCurve] = {}
    for i in range(n):
        low = float(rng.choice([0.0, 0.0, 0.05, 0.1]))
        reqs[f"p{i:03d}"] = ProtocolRequirements(
            cpu_per_unit=float(rng.uniform(0.1, 4.0)),
            memory_per_unit=float(rng.uniform(0.1, 6.0)),
            bandwidth_per_unit=float(rng.uniform(1, 25)),
            storage_per_unit=float(rng.uniform(0.1, 1000)),
            min_allocation=low,
            max_allocation=float(rng.uniform(max(low, 0.5), 1.0)),
            restart_minutes=float(rng.uniform(1, 30)),
        )
        curves[f"p{i:03d}"] = ResponseCurve(beta=float(rng.uniform(0.3, 0.9)))
    need = np.sum([r.as_vector() * r.max_allocation for r in reqs.values()], axis=0)
    floor = np.sum([r.as_vector() * r.min_allocation for r in reqs.values()], axis=0)
    totals = np.maximum(0.45 * need, 1.05 * floor)
    return reqs, curves, ResourceConstraints(*totals.tolist())


def earnings(reqs, rng: np.random.Generator) -> dict[str, float]:
    return {n: float(rng.lognormal(np.log(0.005), 1.0)) for n in reqs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--repeats", type=int, default=3, help="first solves per size (fresh allocator each)")
    parser.add_argument("--resolves", type=int, default=30, help="parameter-only re-solves per size")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    started = time.perf_counter()
    import cvxpy  # noqa: F401

    print(f"import cvxpy: {time.perf_counter() - started:.3f} s")
    rng = np.random.default_rng(args.seed)
    print(f"{'protocols':>9} | {'first solve median':>18} | {'re-solve median':>15} | {'re-solve p90':>12} | target | solvers/statuses")
    ok = True
    for n in args.sizes:
        reqs, curves, totals = instance(n, rng)
        firsts, resolves, seen = [], [], Counter()
        allocator = None
        for _ in range(args.repeats):
            allocator = ResourceAllocator(totals)
            t0 = time.perf_counter()
            result = allocator.optimize_allocation(reqs, earnings(reqs, rng), response_curves=curves)
            firsts.append(time.perf_counter() - t0)
            seen[f"{result.solver}:{result.solver_status}"] += 1
        current = result.allocations
        for _ in range(args.resolves):
            t0 = time.perf_counter()
            result = allocator.optimize_allocation(
                reqs, earnings(reqs, rng), current, response_curves=curves, change_penalty=float(rng.uniform(0, 0.002))
            )
            resolves.append(time.perf_counter() - t0)
            seen[f"{result.solver}:{result.solver_status}"] += 1
            if not check_constraints(result.allocations, reqs, totals).passed:
                seen["CONSTRAINT_VIOLATION"] += 1
            current = result.allocations
        median = statistics.median(resolves)
        p90 = sorted(resolves)[int(0.9 * (len(resolves) - 1))]
        target = TARGET_SECONDS.get(n)
        verdict = "-" if target is None else ("ok" if median < target else "MISSED") + f" (<{target * 1000:.0f} ms)"
        ok &= target is None or median < target
        print(
            f"{n:>9} | {statistics.median(firsts) * 1000:>15.1f} ms | {median * 1000:>12.1f} ms | {p90 * 1000:>9.1f} ms"
            f" | {verdict} | {dict(seen)}"
        )
    print(f"resources: {', '.join(RESOURCES)}; chords per protocol: {len(allocator.breakpoints) - 1}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
