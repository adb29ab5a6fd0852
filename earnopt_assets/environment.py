"""A steppable host: it takes the allocation in force each hour and returns that hour's telemetry.

:class:`HostEnvironment` is the closed-loop form of the simulator (:mod:`earnopt_assets.simulator`, whose
module docstring gives the demand, price, lease, block-reward, usage, outage and anomaly model).
Everything that does NOT depend on the allocation (token price walk, demand, compute leases, noise,
usage noise, failures, latency, outage and anomaly windows with their magnitudes) is drawn when the
environment is built, from the same per-protocol random stream and in the same order as before, so a
seed is the same world whatever allocation a policy feeds in. :func:`earnopt_assets.simulator.simulate`
is a thin driver that feeds the environment its own random allocation path (``random_allocation``), so
the open-loop telemetry and the closed loop can never drift apart.

Per hour t, protocol p at share a (the allocation in force that hour)::

    earnings = base_hourly_usd * response_p(a, demand_t) * price_t * noise_t        (+ block rewards)
             * (1 - restart_minutes / 60   if |a_t - a_{t-1}| > allocation.change_threshold)
             * outage / anomaly factor (0 in an outage, 1 - m in an earnings drop, 0.85 in a failure burst)

Responses (``response=``):

* ``"power"``: the shared ``a^0.6 * demand`` of the original simulator (what ``simulate`` uses by default,
  so every existing seed keeps its telemetry apart from the restart hours);
* ``"hidden"``: one curve per protocol drawn per seed from a separate stream and kept in a private
  attribute (only :func:`oracle_view` reads it), in shapes real apps have:

  - bandwidth: ``min(demand_t, a / s_p) * v_p`` - traffic saturates once demand is served
    (``s_p ~ U(0.25, 0.7)`` is the share that serves a mean hour; extra bandwidth earns nothing);
  - storage: ``0 if a < m_p else a^g_p * demand_t * v_p`` - pays nothing below the network's minimum
    capacity ``m_p = l_p + (1 - l_p) U(0.05, 0.3)`` (l_p the catalog minimum), then ~linear (``g ~ U(0.9, 1)``);
  - compute: ``floor(a / L_p) / floor(1 / L_p) * demand_t * v_p`` - lumpy in whole leases of
    ``L_p ~ U(0.15, 0.4)`` of the host's share;
  - ``v_p = exp(N(0, 0.25))``: how much more or less a protocol pays than its catalog figure.

Restarts: a share change above the catalog's ``allocation.change_threshold`` restarts the protocol,
which earns nothing for its ``restart_minutes`` in that hour (``restarts`` and ``downtime_hours`` count
them). Telemetry reports the share actually in force (``allocation``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from earnopt_assets.catalog import Catalog, ProtocolKind, ProtocolSpec
from earnopt_assets.warehouse import TELEMETRY_COLUMNS

ResponseModel = Literal["power", "hidden"]
HIDDEN_STREAM = 104_729  # the hidden curves come from their own stream: the world's draws are unchanged


@dataclass(frozen=True)
class HiddenResponse:
    """One protocol's true response to its share (see the module docstring). Not for the allocator."""

    shape: Literal["power", "saturating", "threshold_linear", "lumpy"]
    value_factor: float = 1.0
    exponent: float = 0.6
    saturation_share: float = 1.0
    minimum_share: float = 0.0
    lease_share: float = 1.0

    def factor(self, share: np.ndarray, demand: np.ndarray) -> np.ndarray:
        """response(a, demand): multiplies base_hourly_usd * price * noise."""
        share = np.clip(np.asarray(share, dtype=float), 0.0, 1.0)
        if self.shape == "power":
            return share**self.exponent * demand
        if self.shape == "saturating":
            return np.minimum(demand, share / self.saturation_share) * self.value_factor
        if self.shape == "threshold_linear":
            return np.where(share + 1e-9 >= self.minimum_share, share**self.exponent, 0.0) * demand * self.value_factor
        leases = np.floor(share / self.lease_share + 1e-9)
        return leases / np.floor(1.0 / self.lease_share + 1e-9) * demand * self.value_factor


def name_key(name: str) -> int:
    """Per-protocol stream key: adding a protocol does not change the others' data."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def draw_hidden_response(spec: ProtocolSpec, seed: int) -> HiddenResponse:
    """The per-seed hidden curve of one protocol (module docstring)."""
    rng = np.random.default_rng([seed, name_key(spec.name), HIDDEN_STREAM])
    value = float(np.exp(rng.normal(0.0, 0.25)))
    if spec.kind is ProtocolKind.bandwidth:
        return HiddenResponse("saturating", value, saturation_share=float(rng.uniform(0.25, 0.7)))
    if spec.kind is ProtocolKind.storage:
        minimum = spec.min_allocation + (1 - spec.min_allocation) * float(rng.uniform(0.05, 0.3))
        return HiddenResponse("threshold_linear", value, exponent=float(rng.uniform(0.9, 1.0)), minimum_share=minimum)
    return HiddenResponse("lumpy", value, lease_share=float(rng.uniform(0.15, 0.4)))


@dataclass
class _World:
    """Everything about one protocol that does not depend on its allocation (drawn at construction)."""

    spec: ProtocolSpec
    price: np.ndarray
    demand: np.ndarray
    noise: np.ndarray
    activity: np.ndarray
    fill: np.ndarray
    usage_noise: dict[str, np.ndarray]
    failures: np.ndarray
    latency: np.ndarray
    earnings_factor: np.ndarray  # outages and anomalies
    outage: np.ndarray  # bool
    spike: np.ndarray  # resource-spike magnitude, NaN outside a spike
    block_draws: np.ndarray | None  # uniforms of the block-reward lottery (sealed storage only)
    labels: list[pd.DataFrame]


class HostEnvironment:
    """The host over ``hours`` hourly steps ending at ``end`` (module docstring). Step it with
    :meth:`step` (one hour, a share per protocol) or :meth:`run` (several hours at once)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        hours: int,
        seed: int,
        end: object = None,
        protocols: list[str] | None = None,
        inject_anomalies: bool = True,
        response: ResponseModel = "hidden",
        restart_costs: bool = True,
    ):
        from earnopt_assets import simulator as sim

        if hours < 1:
            raise ValueError(f"hours must be >= 1, got {hours}")
        if response not in ("power", "hidden"):
            raise ValueError(f"response must be 'power' or 'hidden', got {response!r}")
        self.catalog = catalog
        self.specs = [catalog.require(name) for name in protocols] if protocols is not None else list(catalog.enabled)
        self.names = [s.name for s in self.specs]
        self.seed = seed
        self.ts = pd.date_range(end=sim._resolve_end(end), periods=hours, freq="h", unit="us")
        local = self.ts.tz_localize("UTC").tz_convert(catalog.host.timezone)
        local_hour, local_dow = local.hour.to_numpy(), local.dayofweek.to_numpy()
        self.device = catalog.host.device
        self.change_threshold = catalog.allocation.change_threshold
        self.restart_costs = restart_costs
        self.response_model: ResponseModel = response
        self.hour = 0  # index of the next hour to step
        self._worlds: list[_World] = []
        paths = []
        for spec in self.specs:
            rng = np.random.default_rng([seed, name_key(spec.name)])
            world, path = _draw_world(spec, self.ts, local_hour, local_dow, self.device, rng, inject_anomalies)
            self._worlds.append(world)
            paths.append(path)
        #: the simulator's own random allocation path (hours x protocols): piecewise constant, 2-6 days
        self.random_allocation = np.column_stack(paths) if paths else np.empty((hours, 0))
        power = HiddenResponse("power")
        self.__responses = [draw_hidden_response(s, seed) if response == "hidden" else power for s in self.specs]
        n, p = hours, len(self.specs)
        self.applied = np.full((n, p), np.nan)  # the share in force each stepped hour
        self.restarted = np.zeros((n, p), dtype=bool)
        self._vesting = np.zeros((n + sim.BLOCK_REWARD_VESTING_HOURS + 2, p))  # vest-rate changes (block rewards)

    # ------------------------------------------------------------------ stepping

    @property
    def hours(self) -> int:
        return len(self.ts)

    @property
    def done(self) -> bool:
        return self.hour >= self.hours

    @property
    def now(self) -> pd.Timestamp:
        """The hour the next step simulates."""
        return self.ts[min(self.hour, self.hours - 1)]

    def step(self, allocation: Mapping[str, float]) -> pd.DataFrame:
        """Run one hour with ``allocation`` (share per protocol, every protocol named) in force; returns
        that hour's telemetry (one row per protocol, landing contract columns)."""
        missing = [n for n in self.names if n not in allocation]
        if missing:
            raise ValueError(f"allocation has no share for {', '.join(missing)}")
        return self.run(np.array([[float(allocation[n]) for n in self.names]]))

    def run(self, allocations: np.ndarray) -> pd.DataFrame:
        """Run ``len(allocations)`` hours; row k holds the shares (catalog order of ``names``) in force in hour k."""
        shares = np.asarray(allocations, dtype=float)
        if shares.ndim != 2 or shares.shape[1] != len(self.specs):
            raise ValueError(f"allocations must be (hours, {len(self.specs)}), got {shares.shape}")
        if not np.isfinite(shares).all() or (shares < 0).any() or (shares > 1).any():
            raise ValueError("every share must be a finite number in [0, 1]")
        a, b = self.hour, self.hour + len(shares)
        if b > self.hours:
            raise ValueError(f"the environment ends after {self.hours} hours; {b - self.hours} too many")
        parts = []
        for j, (world, response) in enumerate(zip(self._worlds, self.__responses)):
            spec, alloc = world.spec, shares[:, j]
            previous = np.r_[self.applied[a - 1, j] if a > 0 else alloc[0], alloc[:-1]]
            restarted = np.abs(alloc - previous) > self.change_threshold + 1e-9
            self.applied[a:b, j] = alloc
            self.restarted[a:b, j] = restarted
            window = slice(a, b)
            earnings = spec.simulation.base_hourly_usd * response.factor(alloc, world.demand[window]) * world.price[window] * world.noise[window]
            if response.shape == "power":  # the original expression order, so old seeds keep their digits
                earnings = spec.simulation.base_hourly_usd * alloc**response.exponent * world.demand[window] * world.price[window] * world.noise[window]
            if world.block_draws is not None:
                earnings = earnings + self._block_rewards(j, a, earnings, alloc, world.block_draws[window])
            earnings = earnings * world.earnings_factor[window]
            if self.restart_costs:
                earnings = earnings * np.where(restarted, max(0.0, 1.0 - spec.restart_minutes / 60.0), 1.0)

            def usage(per_unit: float, shape: np.ndarray, key: str, alloc=alloc, world=world, window=window) -> np.ndarray:
                return alloc * per_unit * shape * world.usage_noise[key][window]

            activity = world.activity[window]
            cpu = usage(spec.cpu_cores, activity, "cpu")
            memory = usage(spec.memory_gb, 0.8 + 0.15 * activity, "memory")
            bandwidth = usage(spec.bandwidth_mbps, activity, "bandwidth")
            storage = usage(spec.storage_gb, world.fill[window], "storage")
            outage = world.outage[window]
            cpu = np.where(outage, cpu * 0.02, cpu)
            bandwidth = np.where(outage, 0.0, bandwidth)
            spike = world.spike[window]
            spiking = np.isfinite(spike)
            cpu = np.where(spiking, alloc * spec.cpu_cores * spike, cpu)
            memory = np.where(spiking, alloc * spec.memory_gb * spike, memory)
            bandwidth = np.where(spiking, alloc * spec.bandwidth_mbps * spike, bandwidth)
            parts.append(
                pd.DataFrame(
                    {
                        "device": self.device,
                        "protocol": spec.name,
                        "ts": self.ts[window],
                        "earnings_usd": np.round(earnings, 8),
                        "cpu_cores": np.round(cpu, 6),
                        "memory_gb": np.round(memory, 6),
                        "bandwidth_mbps": np.round(bandwidth, 6),
                        "storage_gb": np.round(storage, 6),
                        "allocation": alloc,
                        "connection_failures": world.failures[window],
                        "latency_ms": np.round(world.latency[window], 3),
                    }
                )
            )
        self.hour = b
        if not parts:
            return pd.DataFrame(columns=list(TELEMETRY_COLUMNS))
        frame = pd.concat(parts, ignore_index=True)[list(TELEMETRY_COLUMNS)]
        frame["connection_failures"] = frame["connection_failures"].astype("int64")
        return frame

    def _block_rewards(self, j: int, a: int, deal_income: np.ndarray, alloc: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Block rewards as in :func:`earnopt_assets.simulator._block_rewards`, carried across steps:
        a win in hour w pays 25 % at once and 0.75 / V of the reward in each of hours w+1 .. w+V."""
        from earnopt_assets.simulator import BLOCK_REWARD_HOURS, BLOCK_REWARD_VESTING_HOURS, BLOCK_WINS_PER_60_DAYS

        wins = draws < BLOCK_WINS_PER_60_DAYS / (60 * 24) * alloc
        reward = np.where(wins, BLOCK_REWARD_HOURS * deal_income, 0.0)
        vest_rate = 0.75 * reward / BLOCK_REWARD_VESTING_HOURS
        hours = a + np.arange(len(alloc))
        for w, rate in zip(hours[wins], vest_rate[wins]):
            self._vesting[w + 1, j] += rate
            self._vesting[w + 1 + BLOCK_REWARD_VESTING_HOURS, j] -= rate
        vested = np.cumsum(self._vesting[: a + len(alloc), j])[a:]
        return 0.25 * reward + vested

    # ------------------------------------------------------------------ what the run did

    def labels(self) -> pd.DataFrame:
        """Labelled hours (outages and injected anomalies) of the whole horizon, in the labels contract."""
        from earnopt_assets.simulator import LABEL_COLUMNS

        parts = [frame for world in self._worlds for frame in world.labels]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LABEL_COLUMNS, ["str", "str", "datetime64[us]", "str", "float64"])})
        labels = pd.concat(parts, ignore_index=True).sort_values(["protocol", "ts"], ignore_index=True)
        labels["ts"] = pd.to_datetime(labels["ts"]).astype("datetime64[us]")
        return labels[list(LABEL_COLUMNS)]

    def restarts(self, start: int = 0) -> int:
        """Restarts from hour index ``start`` on (share changes above the catalog's change threshold)."""
        return int(self.restarted[start : self.hour].sum())

    def downtime_hours(self, start: int = 0) -> float:
        """Hours without earnings caused by restarts from hour index ``start`` on."""
        minutes = np.array([s.restart_minutes for s in self.specs])
        return float((self.restarted[start : self.hour] * np.minimum(minutes, 60.0) / 60.0).sum())


def oracle_view(env: HostEnvironment) -> dict[str, dict[str, object]]:
    """What only an oracle may know: per protocol the hidden response and the noise-free world
    (price, demand) - used by ``benchmarks/policy.py``'s oracle policy, never by earnopt's loop."""
    responses = env._HostEnvironment__responses  # name-mangled on purpose: out of a policy's reach
    return {
        spec.name: {"spec": spec, "response": response, "price": world.price, "demand": world.demand,
                    "factor": world.earnings_factor}
        for spec, world, response in zip(env.specs, env._worlds, responses)
    }


def _draw_world(
    spec: ProtocolSpec,
    ts: pd.DatetimeIndex,
    local_hour: np.ndarray,
    local_dow: np.ndarray,
    device: str,
    rng: np.random.Generator,
    inject_anomalies: bool,
) -> tuple[_World, np.ndarray]:
    """Draw one protocol's world in the simulator's original order (price, allocation path, leases,
    noise, block lottery, usage, failures, latency, outages, anomalies)."""
    from earnopt_assets import simulator as sim

    n = len(ts)
    z = np.empty(n)
    shocks = rng.normal(0.0, spec.simulation.price_volatility, n)
    level = 0.0
    for i in range(n):  # AR(1) token price walk
        level = sim.PRICE_MEAN_REVERSION * level + shocks[i]
        z[i] = level
    price = np.exp(z)

    path = sim._allocation_path(spec, n, rng)
    sealed = spec.name in sim.SEALED_STORAGE_NETWORKS
    if spec.kind is ProtocolKind.compute:
        occupancy, capacity = sim._lease_occupancy(np.ones(n), local_hour, local_dow, rng)
        demand = occupancy / sim._expected_leases_at_full_allocation()
        activity = 0.1 + 0.9 * occupancy / capacity
    elif sealed:
        demand = np.ones(n)
    else:
        demand = sim._demand(spec.kind, local_hour, local_dow, rng)
    sigma = sim.DEAL_NOISE_SIGMA if sealed or spec.kind is ProtocolKind.compute else sim.NOISE_SIGMA
    noise = np.exp(rng.normal(0.0, sigma, n) - sigma**2 / 2)
    block_draws = rng.random(n) if sealed else None

    if spec.kind is ProtocolKind.storage:
        activity = np.full(n, 1.0)
        fill = np.linspace(0.55, 0.75, n)
    elif spec.kind is ProtocolKind.bandwidth:
        activity = 0.35 + 0.65 * np.clip(demand / demand.max(), 0, 1)
        fill = np.full(n, 0.9)
    else:
        fill = np.full(n, 0.9)
    usage_noise = {
        "cpu": np.exp(rng.normal(0.0, 0.05, n)),
        "memory": np.exp(rng.normal(0.0, 0.02, n)),
        "bandwidth": np.exp(rng.normal(0.0, 0.05, n)),
        "storage": np.exp(rng.normal(0.0, 0.005, n)),
    }
    failures = rng.poisson(0.15, n).astype(np.int64)
    if spec.kind is ProtocolKind.bandwidth:
        typical = 45.0 + 65.0 * rng.random()
        latency = typical * np.exp(rng.normal(0.0, 0.18, n)) * (1.0 + 0.25 * (demand / demand.max()))
    elif spec.kind is ProtocolKind.storage:
        latency = 30.0 * np.exp(rng.normal(0.0, 0.15, n))
    else:
        latency = np.full(n, np.nan)

    labels: list[pd.DataFrame] = []
    taken = np.zeros(n, dtype=bool)
    factor = np.ones(n)
    outage = np.zeros(n, dtype=bool)
    spike = np.full(n, np.nan)

    def label(a: int, b: int, kind: str, magnitude: float) -> None:
        labels.append(pd.DataFrame({"device": device, "protocol": spec.name, "ts": ts[a:b], "anomaly_type": kind, "magnitude": float(magnitude)}))

    scale = n / 24.0
    n_outages = int(rng.poisson(sim.OUTAGES_PER_30_DAYS * scale / 30.0))
    for a, b in sim._pick_windows(n, n_outages, 1, 6, 24, taken, rng):
        factor[a:b] = 0.0
        outage[a:b] = True
        failures[a:b] = rng.poisson(30, b - a)
        latency[a:b] = np.nan
        label(a, b, "outage", 1.0)

    if inject_anomalies:
        n_anomalies = max(1, int(rng.poisson(sim.ANOMALIES_PER_90_DAYS * scale / 90.0))) if scale >= 14 else 0
        kinds = rng.choice(len(sim.ANOMALY_TYPES), size=n_anomalies)
        windows = sim._pick_windows(n, n_anomalies, 2, 6, min(sim.WARMUP_DAYS * 24, n // 2), taken, rng)
        for (a, b), kind_index in zip(windows, kinds):
            kind = sim.ANOMALY_TYPES[int(kind_index)]
            if kind == "earnings_drop":
                magnitude = float(rng.uniform(0.6, 0.95))
                factor[a:b] *= 1.0 - magnitude
            elif kind == "resource_spike":
                magnitude = float(rng.uniform(3.0, 6.0))
                spike[a:b] = magnitude  # a runaway container: usage pinned at magnitude x its share
            else:
                magnitude = float(rng.integers(15, 61))
                failures[a:b] += int(magnitude)
                factor[a:b] *= 0.85
            label(a, b, kind, magnitude)

    world = _World(spec, price, demand, noise, activity, fill, usage_noise, failures, latency, factor, outage, spike, block_draws, labels)
    return world, path
