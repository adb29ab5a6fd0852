"""The Docker Engine, through the ``docker`` SDK: find the mapped containers, read and change their limits.

Every mutating call checks that the container was resolved through the catalog's mapping in this run
(:meth:`DockerRuntime.resolve`): an unmapped container can never be touched, whatever the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earnopt_assets.actuation.limits import MIB, ContainerLimits
from earnopt_assets.catalog import ActuationSettings


class UnmappedContainerError(RuntimeError):
    """A mutating call on a container the mapping did not resolve in this run."""


@dataclass(frozen=True)
class MappedContainer:
    protocol: str
    name: str
    id: str


def _limits(attrs: dict[str, Any]) -> ContainerLimits:
    host = attrs.get("HostConfig") or {}
    return ContainerLimits(
        nano_cpus=int(host.get("NanoCpus") or 0),
        memory_bytes=int(host.get("Memory") or 0),
        memory_swap_bytes=int(host.get("MemorySwap") or 0),
        running=bool((attrs.get("State") or {}).get("Running")),
    )


class DockerRuntime:
    """A thin, guarded wrapper over ``docker.DockerClient``."""

    def __init__(self, client: Any, stop_timeout_seconds: int = 10) -> None:
        self.client = client
        self.stop_timeout_seconds = stop_timeout_seconds
        self._mapped: set[str] = set()
        self._host: dict[str, Any] | None = None

    @classmethod
    def connect(cls, settings: ActuationSettings, timeout_seconds: int = 60) -> DockerRuntime:
        """Connect to ``settings.docker_host``, else ``DOCKER_HOST`` / the local socket; fails if unreachable."""
        import docker

        client = (docker.DockerClient(base_url=settings.docker_host, timeout=timeout_seconds) if settings.docker_host
                  else docker.from_env(timeout=timeout_seconds))
        client.ping()
        return cls(client, settings.stop_timeout_seconds)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ reads
    def resolve(self, protocol: str, settings: ActuationSettings) -> tuple[list[MappedContainer], str]:
        """The containers mapped to ``protocol`` and how they were looked up (for the record)."""
        ref = settings.containers.get(protocol)
        if ref is not None and ref.name is not None:
            wanted = ref.name.lstrip("/")
            found = [c for c in self.client.containers.list(all=True, filters={"name": wanted}) if c.name == wanted]
            how = f"container named {wanted}"
        else:
            label = ref.label if ref is not None else (f"{settings.label_key}={protocol}" if settings.label_key else None)
            if label is None:
                return [], "no container mapped (actuation.containers, label_key off)"
            found = self.client.containers.list(all=True, filters={"label": label})
            how = f"container labelled {label}"
        mapped = [MappedContainer(protocol, c.name, c.id) for c in found]
        self._mapped.update(m.id for m in mapped)
        return mapped, how

    def inspect(self, container: MappedContainer) -> ContainerLimits:
        return _limits(self.client.api.inspect_container(container.id))

    def host_totals(self) -> dict[str, Any]:
        if self._host is None:
            info = self.client.info()
            self._host = {"ncpu": int(info.get("NCPU") or 1), "mem_total": int(info.get("MemTotal") or 0)}
        return self._host

    # ------------------------------------------------------------------ writes (mapped containers only)
    def _guard(self, container: MappedContainer) -> None:
        if container.id not in self._mapped:
            raise UnmappedContainerError(f"refusing to touch {container.name}: not mapped to a protocol in this run")

    def update(self, container: MappedContainer, limits: ContainerLimits) -> None:
        """``docker update`` of CPU and memory (no restart). Docker reads 0 as 'unchanged' and cannot clear a
        limit in place, so restoring 'no limit' sets the host's totals (the same thing in effect)."""
        self._guard(container)
        nano, memory, swap = limits.nano_cpus, limits.memory_bytes, limits.memory_swap_bytes
        if nano == 0:
            nano = self.host_totals()["ncpu"] * 1_000_000_000
        if memory == 0:
            memory, swap = max(self.host_totals()["mem_total"], 6 * MIB), -1
        elif swap == 0:
            swap = -1
        api = self.client.api
        # The SDK's update_container has no NanoCpus argument; this is the same endpoint it calls, with it.
        response = api._post_json(api._url("/containers/{0}/update", container.id),
                                  data={"NanoCpus": nano, "Memory": memory, "MemorySwap": swap})
        api._result(response, True)

    def restart(self, container: MappedContainer) -> None:
        self._guard(container)
        self.client.api.restart(container.id, timeout=self.stop_timeout_seconds)

    def stop(self, container: MappedContainer) -> None:
        self._guard(container)
        self.client.api.stop(container.id, timeout=self.stop_timeout_seconds)

    def start(self, container: MappedContainer) -> None:
        self._guard(container)
        self.client.api.start(container.id)

    # ------------------------------------------------------------------ stats
    def stats(self, container: MappedContainer) -> dict[str, float]:
        """One stats reading: CPU cores used over the API's ~1 s window and memory MB without page cache.

        cpu_cores = (cpu_total - precpu_total) / (system - presystem) * online_cpus
        """
        raw = self.client.api.stats(container.id, stream=False)
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
        system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
        online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
        cores = cpu_delta / system_delta * online if system_delta > 0 and cpu_delta > 0 else 0.0
        memory = raw.get("memory_stats") or {}
        details = memory.get("stats") or {}
        cache = details.get("inactive_file", details.get("total_inactive_file", details.get("cache", 0)))
        used = max(0, int(memory.get("usage") or 0) - int(cache or 0))
        return {"cpu_cores": float(cores), "memory_mb": used / MIB}
