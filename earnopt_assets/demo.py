"""``earnopt demo``: bring a fresh data dir to a fully materialized state on embedded defaults.

Steps: simulate telemetry when there is none yet, then materialize the whole asset graph in dependency
order against the persistent Dagster instance (``$DAGSTER_HOME``), so the UI shows every materialization
and check result. Partitioned model training runs one partition per protocol.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg

from earnopt_assets.settings import EarnoptPaths

# Asset groups in dependency order. Each stage is one run; the model stage runs once per partition.
INGEST_STAGE = ("raw_earnings", "earnings_features")
MODEL_STAGE = ("earnings_model",)
DOWNSTREAM_STAGE = ("earnings_forecast", "anomaly_model", "anomalies", "alerts")
# Its own run, like the 15-minute allocation_job: the plan never waits on an upstream step (#17).
ALLOCATION_STAGE = ("resource_allocation",)


def _landing_has_files(paths: EarnoptPaths) -> bool:
    if not paths.landing.exists():
        return False
    return any(p.is_file() and not p.name.startswith(".") for p in paths.landing.iterdir())


def _has_history(paths: EarnoptPaths) -> bool:
    return _landing_has_files(paths) or (paths.archive.exists() and any(paths.archive.iterdir()))


def _echo(message: str) -> None:
    print(f"==> {message}", flush=True)


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _selected(defs: dg.Definitions, keys: tuple[str, ...]) -> list[str]:
    known = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    return [key for key in keys if key in known]


def materialize_stage(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[str],
    partition_key: str | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize ``keys`` (and their checks) in one in-process run recorded on ``instance``."""
    assets_defs = list(defs.assets or []) + list(defs.asset_checks or [])
    selection = dg.AssetSelection.assets(*keys)
    return dg.materialize(
        assets_defs,
        selection=selection,
        instance=instance,
        resources=defs.resources,
        partition_key=partition_key,
        run_config=run_config,
        raise_on_error=False,
        tags={"earnopt/source": "demo"},
    )


def run_demo(
    data_dir: Path | None = None,
    *,
    days: int = 90,
    seed: int = 7,
    full_training: bool = False,
    model_config: dict | None = None,
) -> int:
    """Simulate if needed, then materialize everything. Returns 0 when every step and check passed.

    Training uses ``earnings_model``'s modest demo defaults; ``full_training`` uses the full profile
    (100 max epochs), and ``model_config`` overrides individual fields (tests use tiny models).
    """
    if data_dir is not None:
        os.environ["EARNOPT_DATA_DIR"] = str(data_dir)
    paths = EarnoptPaths.from_env().ensure()

    from earnopt_assets.catalog import load_catalog
    from earnopt_assets.definitions import build_definitions

    catalog = load_catalog()
    if not _has_history(paths):
        from earnopt_assets.simulator import simulate_to_dir

        _echo(f"no telemetry yet: simulating {days} days for {len(catalog.enabled)} protocols into {paths.landing}")
        print(simulate_to_dir(catalog, days=days, seed=seed, out_dir=paths.landing, labels_dir=paths.labels), flush=True)
    else:
        _echo(f"telemetry present under {paths.data_dir}; not simulating")

    defs = build_definitions()
    instance = _instance()
    failures: list[str] = []
    started = time.monotonic()

    from earnopt_assets.defs.forecasting import FULL_TRAINING_RUN_CONFIG

    model_fields = dict(FULL_TRAINING_RUN_CONFIG["ops"]["earnings_model"]["config"]) if full_training else {}
    model_fields.update(model_config or {})
    model_run_config = {"ops": {"earnings_model": {"config": model_fields}}} if model_fields else None

    def run(keys: list[str], partition_key: str | None = None, run_config: dict | None = None) -> None:
        if not keys:
            return
        label = ", ".join(keys) + (f" [{partition_key}]" if partition_key else "")
        t0 = time.monotonic()
        result = materialize_stage(defs, instance, keys, partition_key, run_config)
        evaluations = [e for e in result.get_asset_check_evaluations() if not e.passed]
        name = lambda e: f"{e.asset_key.to_user_string()}:{e.check_name}"  # noqa: E731
        # WARN = "not yet" (warming up on young history, #17): shown, never a failure
        failed_checks = [name(e) for e in evaluations if e.severity != dg.AssetCheckSeverity.WARN]
        warnings = [name(e) for e in evaluations if e.severity == dg.AssetCheckSeverity.WARN]
        status = "ok" if result.success and not failed_checks else "FAILED"
        _echo(f"{status:6s} {label} ({time.monotonic() - t0:.1f} s)" + (f" failed checks: {failed_checks}" if failed_checks else "")
              + (f" warnings: {warnings}" if warnings else ""))
        if status != "ok":
            failures.append(label)

    run(_selected(defs, INGEST_STAGE))
    for key in _selected(defs, MODEL_STAGE):
        for protocol in catalog.enabled_names:
            run([key], partition_key=protocol, run_config=model_run_config)
    run(_selected(defs, DOWNSTREAM_STAGE))
    run(_selected(defs, ALLOCATION_STAGE))

    _echo(f"pipeline finished in {time.monotonic() - started:.0f} s; data in {paths.data_dir}")
    if failures:
        _echo("some steps failed or had failing checks: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
