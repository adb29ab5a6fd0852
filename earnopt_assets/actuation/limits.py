"""From shares to absolute limits (pure).

A protocol at share ``x`` is entitled to ``x`` times its catalog resource vector::

    cpu_cores      = x * cpu_cores_i          -> Docker NanoCpus = round(1e9 * cpu_cores)
    memory_bytes   = x * memory_gb_i * 2**30  -> Docker Memory = MemorySwap (no swap beyond the limit)
    bandwidth_mbps = x * bandwidth_mbps_i     (entitlement only: Docker cannot enforce it)
    storage_gb     = x * storage_gb_i         (entitlement only: Docker cannot enforce it)

Docker refuses CPU limits under 0.01 cores and memory limits under 6 MiB, so a running protocol gets at
least those. A share of 0 means the container is stopped (its limits are left as they were).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from earnopt_assets.catalog import Catalog

NANO = 1_000_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
MIN_NANO_CPUS = 10_000_000  # 0.01 cores, Docker's minimum
MIN_MEMORY_BYTES = 6 * MIB  # Docker's minimum memory limit
STOPPED_BELOW = 1e-6  # a share at or below this stops the container

UNENFORCED_NOTE = (
    "Docker enforces cpu (NanoCpus) and memory (Memory, MemorySwap) only. bandwidth_mbps and storage_gb are the "
    "protocol's entitlement: Docker cannot cap a container's bandwidth or its disk use, so the app's own settings "
    "(or tc / a quota'd volume) must keep to them."
)


@dataclass(frozen=True)
class ContainerLimits:
    """What a container should run with (or runs with): Docker's own units plus its running state."""

    nano_cpus: int
    memory_bytes: int
    memory_swap_bytes: int
    running: bool

    @property
    def cpu_cores(self) -> float:
        return self.nano_cpus / NANO

    @property
    def memory_mb(self) -> float:
        return self.memory_bytes / MIB

    def same_limits(self, other: ContainerLimits) -> bool:
        """Equal CPU and memory limits (Docker stores exactly what it was given)."""
        return (self.nano_cpus, self.memory_bytes, self.memory_swap_bytes) == (
            other.nano_cpus, other.memory_bytes, other.memory_swap_bytes)

    def describe(self) -> str:
        state = "running" if self.running else "stopped"
        cpu = f"{self.cpu_cores:.3f} cores" if self.nano_cpus else "no CPU limit"
        mem = f"{self.memory_mb:.0f} MB" if self.memory_bytes else "no memory limit"
        return f"{cpu}, {mem}, {state}"


def limits_for_share(share: float, cpu_cores: float, memory_gb: float) -> ContainerLimits:
    """The Docker limits a share means (see the module docstring for the formulas and floors)."""
    if share <= STOPPED_BELOW:
        return ContainerLimits(0, 0, 0, running=False)
    nano = max(MIN_NANO_CPUS, round(NANO * share * cpu_cores))
    memory = max(MIN_MEMORY_BYTES, round(share * memory_gb * GIB))
    return ContainerLimits(nano, memory, memory, running=True)


def plan_limits(catalog: Catalog, allocations: Mapping[str, float]) -> dict[str, Any]:
    """The plan file's ``limits`` section: per protocol the absolute limits of its share after the cycle."""
    protocols: dict[str, Any] = {}
    for name, share in allocations.items():
        spec = catalog.require(name)
        limits = limits_for_share(float(share), spec.cpu_cores, spec.memory_gb)
        protocols[name] = {
            "share": float(share),
            "running": limits.running,
            "cpu_cores": float(share) * spec.cpu_cores,
            "nano_cpus": limits.nano_cpus,
            "memory_mb": limits.memory_mb,
            "memory_bytes": limits.memory_bytes,
            "memory_swap_bytes": limits.memory_swap_bytes,
            "bandwidth_mbps": float(share) * spec.bandwidth_mbps,
            "storage_gb": float(share) * spec.storage_gb,
        }
    return {
        "enforced_by_docker": {"cpu_cores": True, "memory_mb": True, "bandwidth_mbps": False, "storage_gb": False},
        "note": UNENFORCED_NOTE,
        "protocols": protocols,
    }


def target_from_plan(entry: Mapping[str, Any]) -> ContainerLimits:
    """The ContainerLimits of one ``limits.protocols`` entry of a plan file."""
    return ContainerLimits(int(entry["nano_cpus"]), int(entry["memory_bytes"]), int(entry["memory_swap_bytes"]),
                           bool(entry["running"]))
