"""The catalog's ``host.reserved`` block: earnopt's own footprint, kept out of the allocator's reach."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from earnopt_assets.catalog import (
    DEFAULT_RESERVED_CPU_CORES,
    DEFAULT_RESERVED_MEMORY_GB,
    CatalogError,
    load_catalog,
    parse_catalog,
)
from earnopt_assets_tests.conftest import DEFAULT_CATALOG


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CATALOG.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_shipped_catalog_reserves_earnopts_footprint():
    catalog = load_catalog(DEFAULT_CATALOG)
    reserved = catalog.host.reserved
    assert 0 < reserved.cpu_cores < catalog.host.cpu_cores
    assert 0 < reserved.memory_gb < catalog.host.memory_gb
    available, totals = catalog.host.available(), catalog.host.totals()
    assert available["cpu_cores"] == pytest.approx(totals["cpu_cores"] - reserved.cpu_cores)
    assert available["memory_gb"] == pytest.approx(totals["memory_gb"] - reserved.memory_gb)
    # only CPU and memory are reserved
    assert available["bandwidth_mbps"] == totals["bandwidth_mbps"]
    assert available["storage_gb"] == totals["storage_gb"]


def test_a_catalog_without_the_block_gets_the_measured_defaults():
    raw = _raw()
    raw["host"].pop("reserved", None)
    host = parse_catalog(raw).host
    assert (host.reserved.cpu_cores, host.reserved.memory_gb) == (DEFAULT_RESERVED_CPU_CORES, DEFAULT_RESERVED_MEMORY_GB)


def test_a_zero_reserve_gives_the_allocator_the_whole_machine():
    raw = _raw()
    raw["host"]["reserved"] = {"cpu_cores": 0, "memory_gb": 0}
    host = parse_catalog(raw).host
    assert host.available() == host.totals()


@pytest.mark.parametrize(
    ("reserved", "field", "message"),
    [
        ({"cpu_cores": -0.5}, "host.reserved.cpu_cores", "greater than or equal to 0"),
        ({"memory_gb": "lots"}, "host.reserved.memory_gb", "valid number"),
        ({"disk_gb": 1}, "host.reserved.disk_gb", "Extra inputs are not permitted"),
        ({"cpu_cores": 8}, "host", "reserved.cpu_cores (8) must be below the host's cpu_cores (8)"),
        ({"memory_gb": 32}, "host", "reserved.memory_gb (32) must be below the host's memory_gb (16)"),
    ],
)
def test_invalid_reserve_names_the_field(tmp_path, reserved, field, message):
    raw = _raw()
    raw["host"]["reserved"] = reserved
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(_write(tmp_path, raw))
    text = str(excinfo.value)
    assert f"  {field}: " in text
    assert message in text


# --- the allocator plans over what the reserve leaves ---------------------------------------------------


def _with_host(catalog, **host):
    """``host`` fields replaced and validated again (model_copy alone would skip the validators)."""
    return parse_catalog({**catalog.model_dump(exclude={"source"}, mode="json"), "host": {**catalog.host.model_dump(mode="json"), **host}})


def test_initial_allocation_leaves_the_reserve_free(small_catalog):
    from earnopt_assets.allocation.allocator import ProtocolRequirements, ResourceConstraints, check_constraints
    from earnopt_assets.allocation.plan import initial_allocation

    # 3 protocols on 4 cores / 6 GB do not all fit at full allocation, so the initial shares fill a resource
    unreserved = _with_host(small_catalog, cpu_cores=4.0, memory_gb=6.0, reserved={"cpu_cores": 0, "memory_gb": 0})
    reserved = _with_host(small_catalog, cpu_cores=4.0, memory_gb=6.0, reserved={"cpu_cores": 1.0, "memory_gb": 1.5})
    requirements = {p.name: ProtocolRequirements.from_spec(p) for p in small_catalog.enabled}
    without, with_reserve = initial_allocation(unreserved), initial_allocation(reserved)
    assert sum(with_reserve.values()) < sum(without.values())
    # what fitted the whole machine does not fit what the reserve leaves; the new shares do
    assert not check_constraints(without, requirements, ResourceConstraints.from_totals(reserved.host.available())).passed
    assert check_constraints(with_reserve, requirements, ResourceConstraints.from_totals(reserved.host.available())).passed


def test_a_plan_that_fitted_the_machine_is_infeasible_within_the_reserve(data_dir, small_catalog):
    from earnopt_assets.allocation.cycle import run_allocation_cycle
    from earnopt_assets.ingestion.store import ensure_raw_earnings
    from earnopt_assets.simulator import simulate
    from earnopt_assets.warehouse import connect

    telemetry = simulate(small_catalog, days=3, seed=1, end="2026-11-20T12:00:00", inject_anomalies=False).telemetry
    db = data_dir / "earnopt.duckdb"
    with connect(db) as conn:
        ensure_raw_earnings(conn)
        conn.register("telemetry", telemetry)
        conn.execute(
            "INSERT INTO raw_earnings SELECT device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps,"
            " storage_gb, allocation, connection_failures, latency_ms, NULL, NULL FROM telemetry"
        )
    now = datetime(2026, 11, 20, 12, 20)
    # the minimum shares need 0.05 x 0.25 + 0.55 x 2.0 = 1.11 GB of memory: 2 GB fits them, 2 - 1 GB does not
    fits = _with_host(small_catalog, memory_gb=2.0, reserved={"cpu_cores": 0.25, "memory_gb": 0})
    squeezed = _with_host(small_catalog, memory_gb=2.0, reserved={"cpu_cores": 0.25, "memory_gb": 1.0})

    plan, _ = run_allocation_cycle(lambda: connect(db), fits, data_dir / "fits.json", now=now)
    assert plan.result.solver_status == "optimal" and plan.checks["constraints_satisfied"].passed

    plan, _ = run_allocation_cycle(lambda: connect(db), squeezed, data_dir / "squeezed.json", now=now)
    assert plan.status == "rejected" and not plan.applied
    assert plan.result.solver_status == "infeasible"
    assert "memory_gb" in plan.checks["solver_status_optimal"].description


def test_utilisation_table_shows_the_reserve_and_adds_up_to_the_machine(data_dir, small_catalog):
    from earnopt_assets.allocation.cycle import run_allocation_cycle
    from earnopt_assets.allocation.plan import initial_allocation
    from earnopt_assets.defs.render import utilisation_frame
    from earnopt_assets.warehouse import connect

    catalog = _with_host(small_catalog, cpu_cores=4.0, memory_gb=6.0, reserved={"cpu_cores": 0.5, "memory_gb": 1.25})
    plan, _ = run_allocation_cycle(lambda: connect(data_dir / "earnopt.duckdb"), catalog, data_dir / "latest.json")
    frame = utilisation_frame(plan, catalog)
    assert list(frame.columns) == ["resource", "part", "amount", "unit", "share_of_machine_%", "proposal"]
    for resource, rows in frame.groupby("resource"):
        amounts = dict(zip(rows["part"], rows["amount"]))
        assert set(amounts) == {"protocols", "earnopt reserve", "free", "machine total"}
        assert amounts["machine total"] == catalog.host.totals()[resource]
        assert amounts["protocols"] + amounts["earnopt reserve"] + amounts["free"] == pytest.approx(amounts["machine total"], abs=1e-3)
        assert amounts["earnopt reserve"] == catalog.host.reserved.vector()[resource]
        assert amounts["protocols"] <= catalog.host.available()[resource] + 1e-6
        assert rows.loc[rows["part"] == "machine total", "share_of_machine_%"].item() == 100.0
    # the initial shares fill what the reserve leaves of some resource, so that resource has nothing free
    initial = initial_allocation(catalog)
    assert plan.target == pytest.approx(initial)
    free = frame.loc[frame["part"] == "free"].set_index("resource")["amount"]
    assert free.min() == pytest.approx(0.0, abs=1e-3)


# --- training's share of the host -------------------------------------------------------------------------


def test_training_runs_niced_on_one_thread_by_default():
    catalog = load_catalog(DEFAULT_CATALOG)
    assert (catalog.training.threads, catalog.training.nice) == (1, 10)
    raw = _raw()
    raw.pop("training", None)
    assert parse_catalog(raw).training.threads == 1


@pytest.mark.parametrize(
    ("training", "field", "message"),
    [
        ({"threads": 0}, "training.threads", "greater than or equal to 1"),
        ({"nice": 25}, "training.nice", "less than or equal to 19"),
        ({"cores": 2}, "training.cores", "Extra inputs are not permitted"),
    ],
)
def test_invalid_training_settings_name_the_field(tmp_path, training, field, message):
    raw = _raw()
    raw["training"] = training
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(_write(tmp_path, raw))
    assert f"  {field}: " in str(excinfo.value) and message in str(excinfo.value)


@pytest.mark.slow
def test_training_step_runs_with_the_catalogs_limits(small_catalog_path, small_resources, data_dir):
    """The earnings_model step renices its worker by training.nice and saves a model whose config carries
    training.threads / training.nice (in-process here, so this pytest worker stays niced afterwards)."""
    import json
    import os

    import dagster as dg

    from earnopt_assets.defs import forecasting, ingestion
    from earnopt_assets.settings import EarnoptPaths
    from earnopt_assets.simulator import simulate_to_dir

    raw = yaml.safe_load(small_catalog_path.read_text())
    raw["training"] = {"threads": 2, "nice": 3}
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    catalog = load_catalog(small_catalog_path)
    paths = EarnoptPaths(data_dir).ensure()
    simulate_to_dir(catalog, days=42, seed=7, out_dir=paths.landing, end="2026-06-30T23:00")
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([ingestion.raw_earnings, ingestion.earnings_features], resources=small_resources, instance=instance).success
    niceness = os.nice(0)
    result = dg.materialize(
        [forecasting.earnings_model],
        partition_key="honeygain",
        resources=small_resources,
        instance=instance,
        run_config={"ops": {"earnings_model": {"config": {"epochs": 1, "lstm_units_1": 8, "lstm_units_2": 4}}}},
    )
    assert result.success
    assert os.nice(0) >= min(19, niceness + 3)
    saved = [json.loads(p.read_text()) for p in paths.models.rglob("config.json") if "honeygain" in p.parts]
    assert saved and all((c.get("train_threads"), c.get("train_nice")) == (2, 3) for c in saved), saved
