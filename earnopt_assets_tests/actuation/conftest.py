"""A real Docker Engine for the actuator's tests (never a mock), and helpers to build plans and containers.

The engine: one that answers already, else ``scripts/docker_engine.sh`` starts dockerd (root) and builds
``earnopt/busybox:local`` from Debian's static busybox with ``docker import`` (nothing is pulled). Outside
CI a missing engine skips the docker tests with the exact reason; under ``CI=1`` it fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "docs" / "plan.schema.json"
IMAGE = os.environ.get("EARNOPT_TEST_IMAGE", "earnopt/busybox:local")


def plan_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_plan(document: Mapping[str, Any]) -> None:
    import jsonschema

    jsonschema.Draft202012Validator(plan_schema()).validate(document)


def make_plan(catalog, shares: Mapping[str, float], actions: Mapping[str, str] | None = None,
              cycle_id: str | None = None) -> dict[str, Any]:
    """A schema-valid plan document with the given after-cycle shares and per-protocol actions."""
    from earnopt_assets.actuation.limits import plan_limits

    actions = dict(actions or {})
    document = {
        "version": 1,
        "cycle_id": cycle_id or f"test-{uuid.uuid4().hex[:8]}",
        "device": catalog.host.device,
        "created_at": "2026-11-20T12:20:00Z",
        "status": "applied",
        "applied": True,
        "decision": "reallocate",
        "allocations": dict(shares),
        "actions": {n: {"action": actions.get(n, "adjust"), "allocation": s, "previous": s, "proposed": s,
                        "restart_minutes": 0.0, "reason": "test"} for n, s in shares.items()},
        "restarts": [n for n in shares if actions.get(n) == "restart"],
        "limits": plan_limits(catalog, shares),
    }
    validate_plan(document)
    return document


def _engine_error() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(IMAGE)
        client.close()
        return None
    except Exception as exc:  # report exactly what failed
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of a running Docker Engine with the test image present."""
    error = _engine_error()
    if error is not None:
        script = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "docker_engine.sh")], capture_output=True, text=True,
                                timeout=240, check=False)
        error = _engine_error()
        if error is not None:
            reason = (f"no usable Docker Engine: {error}; scripts/docker_engine.sh exited {script.returncode}: "
                      f"{(script.stderr or script.stdout).strip()[-800:]}")
            if os.environ.get("CI"):
                pytest.fail(f"CI: {reason}")
            pytest.skip(reason)
    import docker

    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture
def start_container(docker_client) -> Iterator[Any]:
    """Start busybox containers (no network) with given limits; every one is removed after the test."""
    created: list[Any] = []

    def start(name: str, *, cpu_cores: float = 0.5, memory_mb: int = 64, labels: Mapping[str, str] | None = None):
        container = docker_client.containers.run(
            IMAGE, detach=True, name=name, network_mode="none", nano_cpus=int(cpu_cores * 1e9),
            mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m", labels=dict(labels or {}), stop_signal="SIGKILL",
        )
        created.append(container)
        return container

    yield start
    for container in created:
        with contextlib.suppress(Exception):  # removed by the test itself
            container.remove(force=True)


def inspect(docker_client, name: str) -> dict[str, Any]:
    attrs = docker_client.api.inspect_container(name)
    host = attrs["HostConfig"]
    return {"nano_cpus": host["NanoCpus"], "memory": host["Memory"], "memory_swap": host["MemorySwap"],
            "running": attrs["State"]["Running"], "started_at": attrs["State"]["StartedAt"]}
