"""The actuator against a REAL Docker Engine (scripts/docker_engine.sh): busybox containers named after
catalog protocols, limits asserted through ``docker inspect``. Nothing here is mocked; the only thing
outside the machine, the alert receiver, is a local HTTP server."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest
import yaml

from earnopt_assets.actuation import store
from earnopt_assets.actuation.cycle import run_actuation, sample_usage
from earnopt_assets.actuation.docker_runtime import DockerRuntime, MappedContainer, UnmappedContainerError
from earnopt_assets.actuation.limits import ContainerLimits
from earnopt_assets.catalog import load_catalog
from earnopt_assets.warehouse import connect
from earnopt_assets_tests.actuation.conftest import inspect, make_plan

pytestmark = [pytest.mark.slow, pytest.mark.docker]

NOW = datetime(2026, 11, 20, 12, 20)
PROTOCOLS = ("honeygain", "storj", "akash")


@pytest.fixture
def tag() -> str:
    return f"eo{uuid.uuid4().hex[:8]}"


def actuation_catalog(small_catalog_path: Path, tag: str, **settings):
    """The small catalog with each protocol mapped to the container named <tag>-<protocol>."""
    raw = yaml.safe_load(small_catalog_path.read_text())
    raw["actuation"] = {"mode": "apply", "max_restarts_per_day": 1, "stop_timeout_seconds": 1, "label_key": None,
                        "containers": {p: {"name": f"{tag}-{p}"} for p in PROTOCOLS}, **settings}
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_catalog(small_catalog_path)


@pytest.fixture
def mapped(docker_client, start_container, small_catalog_path: Path, tag: str):
    """Three running containers, one per protocol, at 0.5 cores / 64 MB; returns the catalog mapping them."""
    for protocol in PROTOCOLS:
        start_container(f"{tag}-{protocol}", cpu_cores=0.5, memory_mb=64)
    return actuation_catalog(small_catalog_path, tag)


def opener(data_dir: Path):
    return lambda: connect(data_dir / "earnopt.duckdb")


def act(catalog, plan, docker_client, data_dir: Path, mode="apply", now=NOW, **kwargs):
    runtime = DockerRuntime(docker_client, catalog.actuation.stop_timeout_seconds)
    return run_actuation(opener(data_dir), catalog, plan, runtime, mode, now=now, **kwargs)


def rows(data_dir: Path, actuation_id: str):
    with connect(data_dir / "earnopt.duckdb") as conn:
        return store.read_actuations(conn, "local", actuation_id)


SHARES = {"honeygain": 0.6, "storj": 0.7, "akash": 0.25}  # akash 0.25 x 4 cores = 1 core: within a 2-core host


def test_apply_sets_the_limits_and_confirms_them_with_docker_inspect(docker_client, mapped, tag: str, data_dir: Path) -> None:
    plan = make_plan(mapped, SHARES)
    outcome = act(mapped, plan, docker_client, data_dir)
    assert outcome.failure is None and sorted(outcome.confirmed) == sorted(PROTOCOLS)
    for protocol, share in SHARES.items():
        seen = inspect(docker_client, f"{tag}-{protocol}")
        entry = plan["limits"]["protocols"][protocol]
        assert seen["nano_cpus"] == entry["nano_cpus"] == round(1e9 * share * mapped.require(protocol).cpu_cores)
        assert seen["memory"] == seen["memory_swap"] == entry["memory_bytes"]
        assert seen["running"]
    recorded = rows(data_dir, outcome.actuation_id)
    assert set(recorded["status"]) == {"planned", "applied", "confirmed"}
    assert set(recorded.loc[recorded["status"] == "applied", "action"]) == {"adjust"}
    with connect(data_dir / "earnopt.duckdb") as conn:
        confirmed = store.confirmed_shares(conn, "local", list(PROTOCOLS))
    assert {p: c["share"] for p, c in confirmed.items()} == pytest.approx(SHARES)


def test_restarts_only_for_restart_actions_and_within_the_daily_cap(docker_client, mapped, tag: str, data_dir: Path) -> None:
    started = {p: inspect(docker_client, f"{tag}-{p}")["started_at"] for p in PROTOCOLS}
    first = act(mapped, make_plan(mapped, SHARES, {"storj": "restart"}), docker_client, data_dir)
    assert first.failure is None
    after = {p: inspect(docker_client, f"{tag}-{p}")["started_at"] for p in PROTOCOLS}
    assert after["storj"] != started["storj"]  # restarted
    assert after["honeygain"] == started["honeygain"] and after["akash"] == started["akash"]  # adjusted in place
    # the cap is 1 per day: the second restart of storj becomes an in-place adjust, and says why
    second = act(mapped, make_plan(mapped, {**SHARES, "storj": 0.8}, {"storj": "restart"}), docker_client, data_dir,
                 now=NOW + timedelta(minutes=15))
    assert second.failure is None
    assert inspect(docker_client, f"{tag}-storj")["started_at"] == after["storj"]
    storj = next(s for s in second.steps if s.protocol == "storj")
    assert storj.action == "adjust" and "cap of 1" in storj.reason
    assert inspect(docker_client, f"{tag}-storj")["nano_cpus"] == 800_000_000
    # a day later the budget is back
    third = act(mapped, make_plan(mapped, {**SHARES, "storj": 0.9}, {"storj": "restart"}), docker_client, data_dir,
                now=NOW + timedelta(hours=25))
    assert next(s for s in third.steps if s.protocol == "storj").action == "restart"


def test_share_zero_stops_the_container_and_a_later_share_starts_it(docker_client, mapped, tag: str, data_dir: Path) -> None:
    stopped = act(mapped, make_plan(mapped, {**SHARES, "akash": 0.0}), docker_client, data_dir)
    assert stopped.failure is None
    assert not inspect(docker_client, f"{tag}-akash")["running"]
    assert inspect(docker_client, f"{tag}-honeygain")["running"]
    back = act(mapped, make_plan(mapped, {**SHARES, "akash": 0.3}), docker_client, data_dir, now=NOW + timedelta(minutes=15))
    assert back.failure is None and next(s for s in back.steps if s.protocol == "akash").action == "start"
    seen = inspect(docker_client, f"{tag}-akash")
    assert seen["running"] and seen["nano_cpus"] == 1_200_000_000


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_container_removed_mid_cycle_rolls_back_the_others_and_raises_an_alert(
        docker_client, start_container, small_catalog_path: Path, tag: str, data_dir: Path) -> None:
    for protocol in PROTOCOLS:
        start_container(f"{tag}-{protocol}", cpu_cores=0.5, memory_mb=64)
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    raw = yaml.safe_load(small_catalog_path.read_text())
    raw["alerts"] = {"channels": [{"kind": "webhook", "url": f"http://127.0.0.1:{server.server_port}/hook"}]}
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    catalog = actuation_catalog(small_catalog_path, tag)
    before = {p: inspect(docker_client, f"{tag}-{p}") for p in PROTOCOLS}
    order = list(make_plan(catalog, SHARES)["limits"]["protocols"])

    def remove_last(step) -> None:  # the engine loses the last container just before its turn
        if step.protocol == order[-1]:
            docker_client.containers.get(f"{tag}-{step.protocol}").remove(force=True)

    try:
        outcome = act(catalog, make_plan(catalog, SHARES), docker_client, data_dir, before_step=remove_last,
                      environ={})
    finally:
        server.shutdown()
    assert outcome.failure is not None and order[-1] in outcome.failure
    assert sorted(outcome.rolled_back) == sorted(order[:-1])
    for protocol in order[:-1]:  # back to exactly what they ran with
        seen = inspect(docker_client, f"{tag}-{protocol}")
        assert {k: seen[k] for k in ("nano_cpus", "memory", "memory_swap", "running")} == {
            k: before[protocol][k] for k in ("nano_cpus", "memory", "memory_swap", "running")}
    recorded = rows(data_dir, outcome.actuation_id)
    rolled = recorded[recorded["status"] == "rolled_back"]
    assert sorted(rolled["protocol"]) == sorted(order[:-1]) and rolled["reason"].str.contains("previous limits restored").all()
    assert (recorded[recorded["status"] == "failed"]["protocol"] == order[-1]).all()
    with connect(data_dir / "earnopt.duckdb") as conn:
        alert = conn.execute("SELECT protocol, severity, message, notify_status FROM alerts WHERE rule = 'actuation_rollback'").fetchall()
        assert store.confirmed_shares(conn, "local", list(PROTOCOLS)) == {}  # a rolled-back run confirms nothing
    assert len(alert) == 1 and alert[0][0] == order[-1] and alert[0][1] == "critical" and alert[0][3] == "sent"
    assert "rolled back" in alert[0][2]
    assert len(_Receiver.received) == 1


def test_dry_run_changes_nothing_and_records_what_it_would_do(docker_client, mapped, tag: str, data_dir: Path) -> None:
    before = {p: inspect(docker_client, f"{tag}-{p}") for p in PROTOCOLS}
    outcome = act(mapped, make_plan(mapped, {**SHARES, "akash": 0.0}, {"storj": "restart"}), docker_client, data_dir, mode="dry_run")
    assert {p: inspect(docker_client, f"{tag}-{p}") for p in PROTOCOLS} == before
    recorded = rows(data_dir, outcome.actuation_id).set_index("protocol")
    assert set(recorded["status"]) == {"dry_run"}
    assert recorded.loc["storj", "action"] == "restart" and recorded.loc["storj", "reason"].startswith("would restart")
    assert recorded.loc["akash", "action"] == "stop"
    assert recorded.loc["honeygain", "after_cpu_cores"] == pytest.approx(0.6 * 0.25)
    with connect(data_dir / "earnopt.duckdb") as conn:
        assert store.confirmed_shares(conn, "local", list(PROTOCOLS)) == {}
        assert store.restarts_since(conn, "local", NOW - timedelta(days=1)) == {}


def test_unmapped_containers_are_never_touched(docker_client, start_container, small_catalog_path: Path, tag: str,
                                               data_dir: Path) -> None:
    """Label mapping: only containers labelled <label_key>=<protocol> are touched; strangers, containers with
    another label, and a second label match (ambiguous) are left alone."""
    key = f"earnopt.test-{tag}"
    start_container(f"{tag}-hg", labels={key: "honeygain"})
    strangers = [
        start_container(f"{tag}-stranger").name,  # no label
        start_container(f"{tag}-other-key", labels={"earnopt.protocol": "storj"}).name,  # another key
        start_container(f"{tag}-storj-a", labels={key: "storj"}).name,  # two matches: ambiguous
        start_container(f"{tag}-storj-b", labels={key: "storj"}).name,
        start_container(f"{tag}-unknown", labels={key: "not-in-the-plan"}).name,
    ]
    raw = yaml.safe_load(small_catalog_path.read_text())
    raw["actuation"] = {"mode": "apply", "label_key": key, "stop_timeout_seconds": 1}
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    catalog = load_catalog(small_catalog_path)
    before = {n: inspect(docker_client, n) for n in strangers}
    outcome = act(catalog, make_plan(catalog, {"honeygain": 0.6, "storj": 0.7, "akash": 0.0}, {"storj": "restart"}),
                  docker_client, data_dir)
    assert outcome.failure is None
    assert {n: inspect(docker_client, n) for n in strangers} == before
    assert inspect(docker_client, f"{tag}-hg")["nano_cpus"] == 150_000_000
    steps = {s.protocol: s for s in outcome.steps}
    assert steps["storj"].status == "skipped" and "2 containers match" in steps["storj"].reason
    assert steps["akash"].status == "skipped" and "no container" in steps["akash"].reason
    # and the runtime refuses a container the mapping did not resolve, whatever the caller passes
    runtime = DockerRuntime(docker_client)
    stranger = docker_client.containers.get(strangers[0])
    with pytest.raises(UnmappedContainerError):
        runtime.update(MappedContainer("honeygain", stranger.name, stranger.id), ContainerLimits(10**8, 8 << 20, 8 << 20, True))
    assert inspect(docker_client, strangers[0]) == before[strangers[0]]


def test_stats_fold_into_hourly_resource_usage(docker_client, mapped, tag: str, data_dir: Path) -> None:
    runtime = DockerRuntime(docker_client)
    first = sample_usage(opener(data_dir), mapped, runtime, now=NOW)
    sample_usage(opener(data_dir), mapped, runtime, now=NOW + timedelta(minutes=15))
    sample_usage(opener(data_dir), mapped, runtime, now=NOW + timedelta(hours=1))
    assert sorted(first["protocol"]) == sorted(PROTOCOLS)
    with connect(data_dir / "earnopt.duckdb") as conn:
        usage = store.read_resource_usage(conn, "local")
    assert len(usage) == 2 * len(PROTOCOLS)
    noon = usage[usage["hour"] == datetime(2026, 11, 20, 12)]
    assert set(noon["samples"]) == {2} and (noon["memory_mb_mean"] > 0).all() and (noon["cpu_cores_mean"] >= 0).all()
    assert set(noon["cpu_limit_cores"]) == {0.5} and set(noon["memory_limit_mb"]) == {64.0}


def test_applied_allocation_asset_acts_on_the_cycles_plan_and_the_next_cycle_reads_it(
        docker_client, start_container, small_catalog_path: Path, tag: str, data_dir: Path, monkeypatch) -> None:
    """dg.materialize of resource_allocation + applied_allocation: the real plan, applied and confirmed; the
    next cycle starts from the actuator's confirmation."""
    from earnopt_assets.allocation.cycle import read_cycle_inputs
    from earnopt_assets.defs.actuation import applied_allocation
    from earnopt_assets.defs.allocation import resource_allocation
    from earnopt_assets.resources import resources_for
    from earnopt_assets_tests.actuation.test_limits_plan import LOOSE, _seed

    raw = yaml.safe_load(small_catalog_path.read_text())
    raw["host"].update({"cpu_cores": 2.0, "memory_gb": 6.0, "reserved": {"cpu_cores": 0.1, "memory_gb": 0.5}})
    raw["allocation"] = {**raw.get("allocation", {}), **LOOSE}
    for protocol in raw["protocols"]:  # scaled to a 2-core test host: Docker refuses more cores than the host has
        protocol["cpu_cores"] = min(protocol["cpu_cores"], 1.0)
    raw["actuation"] = {"mode": "apply", "label_key": None, "stop_timeout_seconds": 1,
                        "containers": {p: {"name": f"{tag}-{p}"} for p in PROTOCOLS}}
    small_catalog_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    catalog = load_catalog(small_catalog_path)
    for protocol in PROTOCOLS:
        start_container(f"{tag}-{protocol}", cpu_cores=0.5, memory_mb=64)
    _seed(data_dir / "earnopt.duckdb", catalog)
    monkeypatch.delenv("EARNOPT_ACTUATION_MODE", raising=False)
    result = dg.materialize([resource_allocation, applied_allocation], resources=resources_for(data_dir, small_catalog_path))
    assert result.success
    plan = json.loads((data_dir / "allocation" / "latest.json").read_text())
    metadata = result.asset_materializations_for_node("applied_allocation")[0].metadata
    assert metadata["failure"].value == "none" and metadata["confirmed"].value == len(plan["limits"]["protocols"]) > 0
    columns = {c.name for c in metadata["limits"].schema.columns}
    assert {"before_cpu_cores", "after_cpu_cores", "before_memory_mb", "after_memory_mb", "share_%"} <= columns
    for protocol, entry in plan["limits"]["protocols"].items():
        seen = inspect(docker_client, f"{tag}-{protocol}")
        assert seen["running"] == entry["running"]
        if entry["running"]:
            assert (seen["nano_cpus"], seen["memory"]) == (entry["nano_cpus"], entry["memory_bytes"])
    assert plan["applied"]  # the loose rule moves away from the simulated shares
    with connect(data_dir / "earnopt.duckdb") as conn:
        inputs = read_cycle_inputs(conn, catalog, datetime.utcnow() + timedelta(minutes=15))
    for protocol in plan["allocations"]:
        assert inputs.protocols[protocol].current_source == "applied_plan"
        assert "actuator" in inputs.protocols[protocol].current_detail
