"""Shares -> limits, the plan file's schema on files the real cycle writes, the decision table, the catalog
settings, and the actuator's confirmation as the first source of the allocation in force (no Docker needed)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import jsonschema
import pandas as pd
import pytest
import yaml

from earnopt_assets.actuation import store
from earnopt_assets.actuation.actuator import decide_action
from earnopt_assets.actuation.cycle import effective_mode
from earnopt_assets.actuation.limits import (
    GIB,
    MIN_MEMORY_BYTES,
    MIN_NANO_CPUS,
    ContainerLimits,
    limits_for_share,
    plan_limits,
)
from earnopt_assets.allocation.cycle import run_allocation_cycle
from earnopt_assets.allocation.plan import allocation_in_force
from earnopt_assets.catalog import CatalogError, load_catalog, parse_catalog
from earnopt_assets.ingestion.store import ensure_raw_earnings
from earnopt_assets.simulator import simulate
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.actuation.conftest import make_plan, plan_schema, validate_plan

END = datetime(2026, 11, 20, 12)
NOW = END + timedelta(minutes=20)
LOOSE = {"min_improvement_pct": 1.0, "min_net_benefit_usd_per_hour": 0.0, "max_change_l1": 12.0, "horizon_minutes": 1440.0}


def test_limits_for_share_follow_the_catalog_vector_with_dockers_floors() -> None:
    half = limits_for_share(0.5, cpu_cores=0.25, memory_gb=0.25)
    assert half == ContainerLimits(125_000_000, int(0.125 * GIB), int(0.125 * GIB), running=True)
    assert half.cpu_cores == pytest.approx(0.125) and half.memory_mb == pytest.approx(128.0)
    tiny = limits_for_share(0.001, cpu_cores=0.25, memory_gb=0.25)
    assert tiny.nano_cpus == MIN_NANO_CPUS and tiny.memory_bytes == MIN_MEMORY_BYTES
    assert not limits_for_share(0.0, cpu_cores=4, memory_gb=6).running


def test_plan_limits_say_what_docker_cannot_enforce(small_catalog) -> None:
    section = plan_limits(small_catalog, {"honeygain": 0.4, "akash": 0.0})
    assert section["enforced_by_docker"] == {"cpu_cores": True, "memory_mb": True, "bandwidth_mbps": False, "storage_gb": False}
    assert "cannot" in section["note"]
    honeygain = section["protocols"]["honeygain"]
    assert honeygain["bandwidth_mbps"] == pytest.approx(4.0) and honeygain["storage_gb"] == pytest.approx(0.08)
    assert honeygain["nano_cpus"] == 100_000_000 and honeygain["memory_swap_bytes"] == honeygain["memory_bytes"]
    assert section["protocols"]["akash"]["running"] is False


def _seed(db: Path, catalog) -> None:
    frame = simulate(catalog, days=10, seed=5, end=END, inject_anomalies=False).telemetry
    with connect(db) as conn:
        ensure_raw_earnings(conn)
        conn.register("telemetry", frame)
        conn.execute(
            "INSERT INTO raw_earnings (device, protocol, ts, earnings_usd, cpu_cores, memory_gb, bandwidth_mbps, storage_gb,"
            " allocation, connection_failures, latency_ms) SELECT device, protocol, ts, earnings_usd, cpu_cores, memory_gb,"
            " bandwidth_mbps, storage_gb, allocation, connection_failures, latency_ms FROM telemetry"
        )


def test_plan_files_written_by_the_cycle_validate_and_carry_limits(data_dir: Path, small_catalog) -> None:
    tight = small_catalog.model_copy(update={
        "host": small_catalog.host.model_copy(update={"cpu_cores": 4.0, "memory_gb": 6.0}),
        "allocation": small_catalog.allocation.model_copy(update=LOOSE),
    })
    # an empty warehouse: a kept plan with nothing in force
    kept_path = data_dir / "kept" / "latest.json"
    run_allocation_cycle(lambda: connect(data_dir / "empty.duckdb"), tight, kept_path, now=NOW)
    kept = json.loads(kept_path.read_text())
    validate_plan(kept)
    assert kept["limits"]["protocols"] == {}
    # telemetry: an applied plan
    db = data_dir / "earnopt.duckdb"
    _seed(db, tight)
    path = data_dir / "allocation" / "latest.json"
    plan, _ = run_allocation_cycle(lambda: connect(db), tight, path, now=NOW)
    document = json.loads(path.read_text())
    validate_plan(document)
    assert plan.applied and set(document["limits"]["protocols"]) == set(document["allocations"])
    for name, share in document["allocations"].items():
        entry = document["limits"]["protocols"][name]
        assert entry["cpu_cores"] == pytest.approx(share * tight.require(name).cpu_cores)


def test_the_schema_rejects_a_broken_plan(small_catalog) -> None:
    document = make_plan(small_catalog, {"honeygain": 0.5})
    for broken in (
        {**document, "version": 2},
        {**document, "status": "maybe"},
        {**document, "limits": {**document["limits"], "protocols": {"honeygain": {"share": 0.5}}}},
        {**document, "allocations": {"../etc": 0.5}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_plan(broken)
    assert plan_schema()["properties"]["version"] == {"const": 1, "description": "Schema version of this document."}


RUN = ContainerLimits(500_000_000, 64 << 20, 64 << 20, True)
MORE = ContainerLimits(750_000_000, 96 << 20, 96 << 20, True)
STOP = ContainerLimits(0, 0, 0, False)


@pytest.mark.parametrize(
    ("target", "current", "plan_action", "restarts", "expected", "says"),
    [
        (MORE, RUN, "adjust", 0, "adjust", "no restart"),
        (RUN, RUN, "keep", 0, "keep", "already in force"),
        (MORE, RUN, "restart", 0, "restart", "restart"),
        (MORE, RUN, "restart", 2, "adjust", "cap of 2"),
        (RUN, RUN, "restart", 2, "keep", "cap of 2"),
        (STOP, RUN, "restart", 0, "stop", "share 0"),
        (STOP, ContainerLimits(500_000_000, 64 << 20, 64 << 20, False), "keep", 0, "keep", "already stopped"),
        (MORE, ContainerLimits(500_000_000, 64 << 20, 64 << 20, False), "adjust", 0, "start", "share returned"),
    ],
)
def test_decide_action(target, current, plan_action, restarts, expected, says) -> None:
    action, reason = decide_action(target, current, plan_action, restarts, max_restarts_per_day=2)
    assert action == expected and says in reason


def test_catalog_actuation_settings(small_catalog_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(small_catalog_path.read_text())
    assert load_catalog(small_catalog_path).actuation.mode == "off"
    assert parse_catalog({**raw, "actuation": yaml.safe_load("mode: off")}).actuation.mode == "off"  # YAML reads false
    mapped = parse_catalog({**raw, "actuation": {"mode": "apply", "containers": {"honeygain": {"name": "hg"}, "storj": {"label": "app=storj"}}}})
    assert mapped.actuation.containers["storj"].label == "app=storj"
    with pytest.raises(CatalogError, match="unknown protocol"):
        parse_catalog({**raw, "actuation": {"containers": {"nosuch": {"name": "x"}}}})
    with pytest.raises(CatalogError, match="exactly one of name or label"):
        parse_catalog({**raw, "actuation": {"containers": {"honeygain": {"name": "x", "label": "a=b"}}}})
    with pytest.raises(CatalogError, match="mode"):
        parse_catalog({**raw, "actuation": {"mode": "yolo"}})
    catalog = load_catalog(small_catalog_path)
    assert effective_mode(catalog, {}) == "off"
    assert effective_mode(catalog, {"EARNOPT_ACTUATION_MODE": "dry_run"}) == "dry_run"
    with pytest.raises(ValueError, match="expected off, dry_run or apply"):
        effective_mode(catalog, {"EARNOPT_ACTUATION_MODE": "on"})


def test_the_actuators_confirmation_comes_first_in_the_allocation_in_force() -> None:
    applied = datetime(2026, 11, 20, 12, 5)
    plan = {"allocation": 0.4, "updated_at": applied, "cycle_id": "c1"}
    # telemetry still reports the old share: without the confirmation telemetry would win
    series = pd.DataFrame({"ts": [datetime(2026, 11, 20, 13), datetime(2026, 11, 20, 14)], "allocation": [0.7, 0.7]})
    now = datetime(2026, 11, 20, 14, 30)
    assert allocation_in_force(plan, series, 0.9, now)[1] == "telemetry"
    share, source, detail, note = allocation_in_force(plan, series, 0.9, now, {"share": 0.4, "confirmed_at": applied + timedelta(seconds=5)})
    assert (share, source, note) == (0.4, "applied_plan", None) and "actuator" in detail
    # a confirmation older than the plan, or of another share, confirms nothing
    assert allocation_in_force(plan, series, 0.9, now, {"share": 0.4, "confirmed_at": applied - timedelta(hours=1)})[1] == "telemetry"
    assert allocation_in_force(plan, series, 0.9, now, {"share": 0.6, "confirmed_at": applied})[1] == "telemetry"


def _row(actuation_id: str, status: str, share: float, at: datetime) -> store.ActuationRecord:
    return store.ActuationRecord(actuation_id, "c1", "local", "honeygain", "hg", "id", "apply", "adjust", status, share,
                                 0.1, 64.0, True, 0.2, 96.0, True, "test", at)


def test_confirmed_shares_ignore_rolled_back_runs_and_restarts_are_counted(data_dir: Path) -> None:
    t = datetime(2026, 11, 20, 12)
    with connect(data_dir / "w.duckdb") as conn:
        assert store.confirmed_shares(conn, "local", ["honeygain"]) == {}
        store.write_actuations(conn, [_row("a1", "confirmed", 0.3, t), _row("a2", "confirmed", 0.5, t + timedelta(minutes=15)),
                                      _row("a2", "rolled_back", 0.5, t + timedelta(minutes=15))])
        assert store.confirmed_shares(conn, "local", ["honeygain"])["honeygain"]["share"] == 0.3
        restart = store.ActuationRecord("a3", "c2", "local", "honeygain", "hg", "id", "apply", "restart", "applied", 0.4,
                                        None, None, None, None, None, None, "r", t)
        store.write_actuations(conn, [restart])
        assert store.restarts_since(conn, "local", t - timedelta(hours=1)) == {"honeygain": 1}
        assert store.restarts_since(conn, "local", t + timedelta(minutes=1)) == {}


def test_applied_allocation_off_does_nothing_and_apply_without_engine_fails(small_resources, small_catalog, data_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from earnopt_assets.defs.actuation import applied_allocation

    monkeypatch.setenv("EARNOPT_ACTUATION_MODE", "off")
    result = dg.materialize([applied_allocation], resources=small_resources)
    assert result.success
    assert result.asset_materializations_for_node("applied_allocation")[0].metadata["mode"].value == "off"

    plan_path = data_dir / "allocation" / "latest.json"
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(make_plan(small_catalog, {"honeygain": 0.5})))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{data_dir}/no-such-docker.sock")
    monkeypatch.setenv("EARNOPT_ACTUATION_MODE", "dry_run")
    result = dg.materialize([applied_allocation], resources=small_resources)
    summary = result.asset_materializations_for_node("applied_allocation")[0].metadata["summary"].value
    assert result.success and "unreachable" in summary
    monkeypatch.setenv("EARNOPT_ACTUATION_MODE", "apply")
    result = dg.materialize([applied_allocation], resources=small_resources, raise_on_error=False)
    assert not result.success


def test_a_failed_blocking_check_keeps_applied_allocation_from_running(data_dir: Path, small_catalog_path: Path, small_catalog,
                                                                       small_resources, monkeypatch: pytest.MonkeyPatch) -> None:
    from earnopt_assets.defs.actuation import applied_allocation
    from earnopt_assets.defs.allocation import resource_allocation
    from earnopt_assets_tests.allocation.test_alloc_job import load_simulated, rewrite_catalog

    load_simulated(data_dir, small_catalog, days=3)
    rewrite_catalog(small_catalog_path, host={"memory_gb": 1.0, "reserved": {"cpu_cores": 0.25, "memory_gb": 0.5}},
                    allocation={"min_net_benefit_usd_per_hour": 0.0, "min_improvement_pct": 0.0})
    monkeypatch.setenv("EARNOPT_ACTUATION_MODE", "dry_run")
    result = dg.materialize([resource_allocation, applied_allocation], resources=small_resources, raise_on_error=False)
    assert not result.success
    assert not result.asset_materializations_for_node("applied_allocation")
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert store.read_actuations(conn, "local").empty
