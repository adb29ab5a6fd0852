"""The ``earnopt`` command: simulate telemetry, run the demo pipeline, serve the API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_simulate(args: argparse.Namespace) -> int:
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.simulator import simulate_to_dir

    catalog = load_catalog(args.catalog)
    summary = simulate_to_dir(
        catalog,
        days=args.days,
        seed=args.seed,
        out_dir=Path(args.out),
        labels_dir=Path(args.labels) if args.labels else None,
        end=args.end,
        file_format=args.format,
    )
    print(summary)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from earnopt_assets.service.app import run_server

    run_server(host=args.host, port=args.port)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from earnopt_assets.demo import run_demo

    return run_demo(Path(args.data_dir) if args.data_dir else None, days=args.days, seed=args.seed, full_training=args.full_training)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earnopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="write simulated hourly telemetry for the catalog")
    sim.add_argument("--days", type=int, default=90)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--out", required=True, help="directory for the telemetry files (e.g. data/landing)")
    sim.add_argument("--labels", default=None, help="directory for anomaly labels (default: <out>/../labels)")
    sim.add_argument("--catalog", default=None, help="catalog file (default: $EARNOPT_CATALOG or data/catalog.yaml)")
    sim.add_argument("--end", default=None, help="last simulated hour, ISO UTC (default: the current hour)")
    sim.add_argument("--format", choices=["csv", "parquet", "jsonl"], default="parquet")
    sim.set_defaults(func=_cmd_simulate)

    serve = sub.add_parser("serve", help="run the ML service (FastAPI on uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="simulate if landing is empty, then materialize every asset")
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("--days", type=int, default=90)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--full-training", action="store_true", help="train with the full profile (100 max epochs) instead of the demo's")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
