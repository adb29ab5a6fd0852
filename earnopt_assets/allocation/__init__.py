"""Resource allocation: response curves, the convex allocator, the reallocation decision and the plan.

Plain Python (numpy, CVXPY, DuckDB); the Dagster wiring lives in ``earnopt_assets.defs.allocation``.
Nothing here imports TensorFlow.
"""
