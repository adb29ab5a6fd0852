"""Deterministic, realistic hourly telemetry for every enabled protocol of a catalog.

The simulator exists so that the forecasting, anomaly and allocation areas have a problem that is not
trivial yet is learnable. For protocol ``p`` in hour ``t`` (all arrays vectorised with numpy):

    demand_t   = hour_profile_kind(local_hour_t) * weekday_profile_kind(local_dow_t)      (mean ~1)
    price_t    = exp(z_t),  z_t = 0.998 * z_{t-1} + N(0, price_volatility)           (token price walk)
    alloc_t    = piecewise constant, redrawn every 2-6 days in [max(min_alloc, 0.1), max_alloc]
    earnings_t = base_hourly_usd * alloc_t^0.6 * demand_t * price_t * exp(N(0, 0.06) - 0.06^2/2)

* Demand is computed in the host's LOCAL timezone (``catalog.host.timezone``):
  - bandwidth apps follow internet traffic: peak ~21-22 h, trough ~6 h, weekends ~8 % busier;
  - storage nodes are flat over the day (+-7 %) with a weekly rhythm (weekdays busier, egress-driven);
  - sealed-storage networks (``SEALED_STORAGE_NETWORKS``: filecoin) are paid per epoch for the deals
    they hold: demand_t = 1, hourly noise 1.5 %, plus rare block rewards (about one win per 60 days at
    allocation 1, worth 16 h of deal income: 25 % paid in the win hour, 75 % vested over 180 days);
  - compute networks earn from many concurrent tenant leases: a capacity-limited birth-death process
    (128 slots; Poisson arrivals, 1.6/h on average, busier in local working hours on weekdays;
    durations 85 % short jobs ~ lognormal(median 4 h), 15 % deployments ~ lognormal(median 10 days);
    arrivals beyond the free slots go elsewhere), demand_t = active_t / E[active]. The allocation sets
    the size and pay of a slot (alloc^0.6), so it acts at once. 60 warm-up days reach steady state.
    Leases pay a fixed price per block, so the hourly noise is 1.5 % (as for deal payments).
* ``alloc^0.6`` gives diminishing returns, so an allocation->earnings curve can be fitted.
* Resource usage is ``alloc * per-unit figure * activity * lognormal(5 %)`` where activity follows
  demand for bandwidth, slot occupancy (0.1 + 0.9 * active/capacity) for compute and is steady for
  storage (disk use grows slowly as the node fills).
* ``connection_failures ~ Poisson(0.15)``; ``latency_ms`` is lognormal around 45-110 ms for bandwidth
  apps, ~30 ms for storage and NaN for compute (not reported).
* Outages (about one per protocol per 30 days, 1-6 h): earnings 0, resources near idle, failures
  Poisson(30), latency NaN. Labelled ``outage``.
* Injected anomalies (about 5 per protocol per 90 days, 2-6 h each, never overlapping an outage or the
  first week): ``earnings_drop`` (earnings * (1 - magnitude), magnitude 0.6-0.95), ``resource_spike``
  (cpu/memory/bandwidth pinned at alloc * per-unit * magnitude, magnitude 3-6) and ``failure_burst`` (failures + magnitude,
  magnitude 15-60, earnings * 0.85). Every affected hour is one row of the labels frame.

Everything is drawn from ``numpy.random.default_rng(seed)`` (one child stream per protocol, in catalog
order), so a seed reproduces the same telemetry byte for byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from earnopt_assets.atomic import atomic_write_bytes
from earnopt_assets.catalog import Catalog, ProtocolKind, ProtocolSpec
from earnopt_assets.warehouse import TELEMETRY_COLUMNS

ANOMALY_TYPES: tuple[str, ...] = ("earnings_drop", "resource_spike", "failure_burst")
LABEL_TYPES: tuple[str, ...] = (*ANOMALY_TYPES, "outage")
LABEL_COLUMNS: tuple[str, ...] = ("device", "protocol", "ts", "anomaly_type", "magnitude")

ALLOCATION_EXPONENT = 0.6
NOISE_SIGMA = 0.06
PRICE_MEAN_REVERSION = 0.998
ANOMALIES_PER_90_DAYS = 5.0
OUTAGES_PER_30_DAYS = 1.0
WARMUP_DAYS = 7

# Hour-of-day profiles (local time), normalised to mean 1 below. Bandwidth: trough 6 h, peak 21-22 h.
_BANDWIDTH_HOURS = np.array(
    [0.95, 0.80, 0.68, 0.58, 0.52, 0.49, 0.48, 0.55, 0.70, 0.82, 0.90, 0.95,
     1.00, 1.02, 1.03, 1.05, 1.10, 1.18, 1.30, 1.42, 1.52, 1.58, 1.50, 1.22]
)
_BANDWIDTH_DOW = np.array([0.97, 0.96, 0.97, 0.98, 1.02, 1.08, 1.08])  # Monday = 0
_STORAGE_DOW = np.array([1.05, 1.06, 1.05, 1.04, 1.00, 0.90, 0.90])
# Compute: relative rate of NEW tenant leases by local hour / weekday (deployments happen in working hours).
_LEASE_HOURS = np.array(
    [0.45, 0.40, 0.35, 0.35, 0.35, 0.40, 0.55, 0.80, 1.20, 1.55, 1.70, 1.70,
     1.60, 1.65, 1.70, 1.65, 1.50, 1.30, 1.05, 0.90, 0.80, 0.70, 0.60, 0.50]
)
_LEASE_DOW = np.array([1.10, 1.12, 1.12, 1.10, 1.00, 0.78, 0.78])

# Compute lease market (per protocol of kind compute). At allocation a the node offers
# round(SLOTS * a) lease slots and receives Poisson(ARRIVALS * a^0.6 * profile) new leases per hour.
LEASE_SLOTS_AT_FULL_ALLOCATION = 128
LEASE_ARRIVALS_PER_HOUR = 1.6
LEASE_SHORT_MEDIAN_HOURS = 4.0  # batch jobs, CI runners, short GPU/CPU tasks
LEASE_SHORT_SIGMA = 0.9
LEASE_LONG_MEDIAN_HOURS = 240.0  # long-running deployments: days to weeks
LEASE_LONG_SIGMA = 1.0
LEASE_LONG_SHARE = 0.15
LEASE_WARMUP_HOURS = 60 * 24

# Sealed-storage networks (Filecoin): paid per epoch for the storage deals they hold, so the FIL income
# is flat over the day; the USD value moves with the token price. Block rewards are rare for a small
# provider: 25 % is paid at once (a one-hour bump), 75 % vests linearly over 180 days.
SEALED_STORAGE_NETWORKS: frozenset[str] = frozenset({"filecoin"})
DEAL_NOISE_SIGMA = 0.015
BLOCK_WINS_PER_60_DAYS = 1.0  # at allocation 1; proportional to the committed storage
BLOCK_REWARD_HOURS = 16.0  # a win is worth this many hours of deal income at the time
BLOCK_REWARD_VESTING_HOURS = 180 * 24


def _normalised(profile: np.ndarray) -> np.ndarray:
    return profile / profile.mean()


@dataclass
class SimulationResult:
    """Telemetry in the landing contract plus one label row per affected hour."""

    telemetry: pd.DataFrame
    labels: pd.DataFrame


@dataclass
class SimulationSummary:
    """What :func:`simulate_to_dir` wrote; ``print()`` shows it."""

    files: list[Path]
    labels_file: Path
    rows: int
    protocols: list[str]
    start: datetime
    end: datetime
    label_counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.label_counts.items())) or "none"
        return (
            f"simulated {self.rows} hourly rows for {len(self.protocols)} protocols "
            f"({self.start:%Y-%m-%d %H:00} .. {self.end:%Y-%m-%d %H:00} UTC) into {len(self.files)} files "
            f"under {self.files[0].parent if self.files else '-'}\n"
            f"labels ({labels}) -> {self.labels_file}"
        )


def _resolve_end(end: datetime | str | None) -> pd.Timestamp:
    """The last simulated hour as a naive UTC timestamp (default: the current UTC hour)."""
    if end is None:
        stamp = pd.Timestamp(datetime.now(timezone.utc))
    else:
        stamp = pd.Timestamp(end)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.floor("h")


def _demand(kind: ProtocolKind, local_hour: np.ndarray, local_dow: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bandwidth/storage demand (mean ~1). Compute demand comes from :func:`_lease_occupancy` instead."""
    if kind is ProtocolKind.bandwidth:
        return _normalised(_BANDWIDTH_HOURS)[local_hour] * _normalised(_BANDWIDTH_DOW)[local_dow]
    hourly = 1.0 + 0.07 * np.sin(2 * np.pi * (local_hour - 14) / 24.0)
    return hourly * _normalised(_STORAGE_DOW)[local_dow]


def _lease_arrival_profile(local_hour: np.ndarray, local_dow: np.ndarray) -> np.ndarray:
    """Relative rate of new compute leases (mean ~1): tenants deploy in local working hours on weekdays."""
    return (_normalised(_LEASE_HOURS)[local_hour] * _normalised(_LEASE_DOW)[local_dow]) / np.mean(
        np.outer(_normalised(_LEASE_DOW), _normalised(_LEASE_HOURS))
    )


def _lease_durations(count: int, rng: np.random.Generator) -> np.ndarray:
    """Whole hours (>= 1): a mixture of short jobs (median 4 h) and long-running deployments (median 5 days)."""
    long_running = rng.random(count) < LEASE_LONG_SHARE
    medians = np.where(long_running, LEASE_LONG_MEDIAN_HOURS, LEASE_SHORT_MEDIAN_HOURS)
    sigmas = np.where(long_running, LEASE_LONG_SIGMA, LEASE_SHORT_SIGMA)
    return np.maximum(1, np.ceil(medians * np.exp(sigmas * rng.standard_normal(count)))).astype(np.int64)


def _expected_leases_at_full_allocation() -> float:
    """Mean active leases at allocation 1 without the capacity limit: arrivals/h x mean duration (h)."""
    short_mean = LEASE_SHORT_MEDIAN_HOURS * np.exp(LEASE_SHORT_SIGMA**2 / 2) + 0.5  # + 0.5: ceil to whole hours
    long_mean = LEASE_LONG_MEDIAN_HOURS * np.exp(LEASE_LONG_SIGMA**2 / 2) + 0.5
    return LEASE_ARRIVALS_PER_HOUR * ((1 - LEASE_LONG_SHARE) * short_mean + LEASE_LONG_SHARE * long_mean)


def _lease_occupancy(
    allocation: np.ndarray, local_hour: np.ndarray, local_dow: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Active tenant leases per hour and the slot capacity, from a capacity-limited birth-death process.

    Simulated from ``LEASE_WARMUP_HOURS`` before the first row (at the first allocation and the same
    calendar rhythm) so the first row is already in steady state, not an empty node.
    """
    n = len(allocation)
    warm = LEASE_WARMUP_HOURS
    # Warm-up calendar: the hours before the first row (hour-of-day and weekday counted back from it).
    back = np.arange(-warm, 0) + int(local_hour[0])
    hours = np.r_[back % 24, local_hour]
    dows = np.r_[(int(local_dow[0]) + back // 24) % 7, local_dow]
    alloc = np.r_[np.full(warm, allocation[0]), allocation]
    capacity = np.maximum(1, np.round(LEASE_SLOTS_AT_FULL_ALLOCATION * alloc)).astype(np.int64)
    rate = LEASE_ARRIVALS_PER_HOUR * alloc**ALLOCATION_EXPONENT * _lease_arrival_profile(hours, dows)
    arrivals = rng.poisson(rate)
    durations = _lease_durations(int(arrivals.sum()), rng)
    active_ends: list[int] = []  # end hour (exclusive) of every running lease, oldest first
    occupancy = np.zeros(len(alloc), dtype=np.int64)
    used = 0
    for t in range(len(alloc)):
        if active_ends:
            active_ends = [end for end in active_ends if end > t]
        if len(active_ends) > capacity[t]:  # allocation cut: the newest tenants are evicted and redeploy
            del active_ends[capacity[t]:]
        free = capacity[t] - len(active_ends)
        new = int(arrivals[t])
        accepted = min(new, max(free, 0))  # the rest of the bids go to other providers
        active_ends.extend((t + durations[used : used + accepted]).tolist())
        used += new
        occupancy[t] = len(active_ends)
    return occupancy[warm:].astype(float), capacity[warm:].astype(float)


def _block_rewards(deal_income: np.ndarray, allocation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Block rewards of a small sealed-storage provider: Poisson wins (rate proportional to allocation),
    each worth BLOCK_REWARD_HOURS of the deal income at that hour; 25 % paid in the win hour, 75 %
    released linearly over the next 180 days."""
    n = len(deal_income)
    wins = rng.random(n) < BLOCK_WINS_PER_60_DAYS / (60 * 24) * allocation
    reward = np.where(wins, BLOCK_REWARD_HOURS * deal_income, 0.0)
    vest_rate = 0.75 * reward / BLOCK_REWARD_VESTING_HOURS  # released every hour from the next one on
    released = np.r_[0.0, np.cumsum(vest_rate)]  # released[t] = sum of vest_rate[:t]
    done = np.r_[np.zeros(BLOCK_REWARD_VESTING_HOURS), released][: n + 1]  # rewards fully vested by t
    vested = (released - done)[:n]
    return 0.25 * reward + vested


def _allocation_path(spec: ProtocolSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    low = max(spec.min_allocation, 0.1)
    high = max(spec.max_allocation, low)
    out = np.empty(n)
    t = 0
    while t < n:
        length = int(rng.integers(48, 145))  # 2-6 days
        value = np.round(rng.uniform(low, high) / 0.05) * 0.05
        out[t : t + length] = float(np.clip(value, low, high))
        t += length
    return out


def _pick_windows(n: int, count: int, min_len: int, max_len: int, start: int, taken: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``count`` non-overlapping [a, b) windows inside [start, n) that avoid ``taken`` hours."""
    windows: list[tuple[int, int]] = []
    for _ in range(count * 20):
        if len(windows) >= count or n - start <= max_len + 1:
            break
        length = int(rng.integers(min_len, max_len + 1))
        a = int(rng.integers(start, n - length))
        # One free hour either side keeps events distinct.
        if taken[max(a - 1, 0) : a + length + 1].any():
            continue
        taken[a : a + length] = True
        windows.append((a, a + length))
    return windows


def _simulate_protocol(
    spec: ProtocolSpec,
    ts: pd.DatetimeIndex,
    local_hour: np.ndarray,
    local_dow: np.ndarray,
    device: str,
    rng: np.random.Generator,
    inject_anomalies: bool,
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    n = len(ts)
    # Random draws keep their original order (price, allocation, noise, ...) so that bandwidth and
    # storage series are the same as before the compute/sealed-storage models were added.
    z = np.empty(n)
    shocks = rng.normal(0.0, spec.simulation.price_volatility, n)
    level = 0.0
    for i in range(n):  # 2k-step AR(1) per protocol: cheap, and clearer than a filter call
        level = PRICE_MEAN_REVERSION * level + shocks[i]
        z[i] = level
    price = np.exp(z)

    allocation = _allocation_path(spec, n, rng)
    if spec.kind is ProtocolKind.compute:
        # The tenant market fills slots of a fixed size; the allocation sets how large (and how well paid)
        # each slot is, with diminishing returns (alloc^0.6), so an allocation change acts at once.
        occupancy, capacity = _lease_occupancy(np.ones(n), local_hour, local_dow, rng)
        demand = occupancy / _expected_leases_at_full_allocation()
        activity = 0.1 + 0.9 * occupancy / capacity
    elif spec.name in SEALED_STORAGE_NETWORKS:
        demand = np.ones(n)
    else:
        demand = _demand(spec.kind, local_hour, local_dow, rng)
    # per-block lease and per-epoch deal payments are fixed prices: only little hourly noise
    sigma = DEAL_NOISE_SIGMA if spec.name in SEALED_STORAGE_NETWORKS or spec.kind is ProtocolKind.compute else NOISE_SIGMA
    noise = np.exp(rng.normal(0.0, sigma, n) - sigma**2 / 2)
    earnings = spec.simulation.base_hourly_usd * allocation**ALLOCATION_EXPONENT * demand * price * noise
    if spec.name in SEALED_STORAGE_NETWORKS:
        earnings += _block_rewards(earnings, allocation, rng)

    if spec.kind is ProtocolKind.storage:
        activity = np.full(n, 1.0)
        fill = np.linspace(0.55, 0.75, n)  # the node fills up slowly
    elif spec.kind is ProtocolKind.bandwidth:
        activity = 0.35 + 0.65 * np.clip(demand / demand.max(), 0, 1)
        fill = np.full(n, 0.9)
    else:
        fill = np.full(n, 0.9)

    def usage(per_unit: float, shape: np.ndarray, sigma: float = 0.05) -> np.ndarray:
        return allocation * per_unit * shape * np.exp(rng.normal(0.0, sigma, n))

    cpu = usage(spec.cpu_cores, activity)
    memory = usage(spec.memory_gb, 0.8 + 0.15 * activity, 0.02)
    bandwidth = usage(spec.bandwidth_mbps, activity)
    storage = usage(spec.storage_gb, fill, 0.005)
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

    def label(a: int, b: int, kind: str, magnitude: float) -> None:
        labels.append(
            pd.DataFrame(
                {
                    "device": device,
                    "protocol": spec.name,
                    "ts": ts[a:b],
                    "anomaly_type": kind,
                    "magnitude": float(magnitude),
                }
            )
        )

    scale = n / 24.0
    n_outages = int(rng.poisson(OUTAGES_PER_30_DAYS * scale / 30.0))
    for a, b in _pick_windows(n, n_outages, 1, 6, 24, taken, rng):
        earnings[a:b] = 0.0
        cpu[a:b] *= 0.02
        bandwidth[a:b] = 0.0
        failures[a:b] = rng.poisson(30, b - a)
        latency[a:b] = np.nan
        label(a, b, "outage", 1.0)

    if inject_anomalies:
        n_anomalies = max(1, int(rng.poisson(ANOMALIES_PER_90_DAYS * scale / 90.0))) if scale >= 14 else 0
        kinds = rng.choice(len(ANOMALY_TYPES), size=n_anomalies)
        windows = _pick_windows(n, n_anomalies, 2, 6, min(WARMUP_DAYS * 24, n // 2), taken, rng)
        for (a, b), kind_index in zip(windows, kinds):
            kind = ANOMALY_TYPES[int(kind_index)]
            if kind == "earnings_drop":
                magnitude = float(rng.uniform(0.6, 0.95))
                earnings[a:b] *= 1.0 - magnitude
            elif kind == "resource_spike":
                magnitude = float(rng.uniform(3.0, 6.0))
                # A runaway container: usage pinned at magnitude x its allocated share, whatever the hour.
                cpu[a:b] = allocation[a:b] * spec.cpu_cores * magnitude
                memory[a:b] = allocation[a:b] * spec.memory_gb * magnitude
                bandwidth[a:b] = allocation[a:b] * spec.bandwidth_mbps * magnitude
            else:
                magnitude = float(rng.integers(15, 61))
                failures[a:b] += int(magnitude)
                earnings[a:b] *= 0.85
            label(a, b, kind, magnitude)

    telemetry = pd.DataFrame(
        {
            "device": device,
            "protocol": spec.name,
            "ts": ts,
            "earnings_usd": np.round(earnings, 8),
            "cpu_cores": np.round(cpu, 6),
            "memory_gb": np.round(memory, 6),
            "bandwidth_mbps": np.round(bandwidth, 6),
            "storage_gb": np.round(storage, 6),
            "allocation": allocation,
            "connection_failures": failures,
            "latency_ms": np.round(latency, 3),
        }
    )
    return telemetry, labels


def simulate(
    catalog: Catalog,
    days: int = 90,
    seed: int = 7,
    end: datetime | str | None = None,
    protocols: list[str] | None = None,
    inject_anomalies: bool = True,
) -> SimulationResult:
    """Simulate ``days`` x 24 hourly rows ending at ``end`` (default: the current UTC hour) for every
    enabled protocol (or the named ones, each checked with ``catalog.require``)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    specs = [catalog.require(name) for name in protocols] if protocols is not None else catalog.enabled
    last = _resolve_end(end)
    ts = pd.date_range(end=last, periods=days * 24, freq="h", unit="us")
    local = ts.tz_localize("UTC").tz_convert(catalog.host.timezone)
    local_hour = local.hour.to_numpy()
    local_dow = local.dayofweek.to_numpy()
    device = catalog.host.device

    parts: list[pd.DataFrame] = []
    label_parts: list[pd.DataFrame] = []
    for spec in specs:
        # A per-protocol stream keyed by name: adding a protocol does not change the others' data.
        name_key = int.from_bytes(hashlib.sha256(spec.name.encode()).digest()[:4], "big")
        rng = np.random.default_rng([seed, name_key])
        telemetry, labels = _simulate_protocol(spec, ts, local_hour, local_dow, device, rng, inject_anomalies)
        parts.append(telemetry)
        label_parts.extend(labels)

    telemetry = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(TELEMETRY_COLUMNS))
    telemetry = telemetry[list(TELEMETRY_COLUMNS)]
    telemetry["connection_failures"] = telemetry["connection_failures"].astype("int64")
    if label_parts:
        labels = pd.concat(label_parts, ignore_index=True).sort_values(["protocol", "ts"], ignore_index=True)
    else:
        labels = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(LABEL_COLUMNS, ["str", "str", "datetime64[us]", "str", "float64"])})
    labels["ts"] = pd.to_datetime(labels["ts"]).astype("datetime64[us]")
    return SimulationResult(telemetry=telemetry, labels=labels[list(LABEL_COLUMNS)])


def _encode(frame: pd.DataFrame, file_format: str) -> bytes:
    if file_format == "parquet":
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    out = frame.copy()
    out["ts"] = out["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if file_format == "csv":
        return out.to_csv(index=False).encode()
    if file_format == "jsonl":
        return out.to_json(orient="records", lines=True).encode()
    raise ValueError(f"unknown file_format {file_format!r}; use parquet, csv or jsonl")


def simulate_to_dir(
    catalog: Catalog,
    days: int,
    seed: int,
    out_dir: Path,
    labels_dir: Path | None = None,
    end: datetime | str | None = None,
    file_format: str = "parquet",
) -> SimulationSummary:
    """Simulate and write one landing file per protocol (``sim_<device>_<protocol>_<first>_<last>.<ext>``,
    each written atomically so a landing sensor never sees half a file) and ``labels.parquet`` into
    ``labels_dir`` (default ``<out_dir>/../labels``; never inside the landing directory)."""
    if file_format not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"unknown file_format {file_format!r}; use parquet, csv or jsonl")
    out_dir = Path(out_dir)
    labels_dir = Path(labels_dir) if labels_dir is not None else out_dir.resolve().parent / "labels"
    if labels_dir.resolve() == out_dir.resolve() or out_dir.resolve() in labels_dir.resolve().parents:
        raise ValueError(f"labels_dir {labels_dir} must not be inside the landing directory {out_dir}")
    result = simulate(catalog, days=days, seed=seed, end=end)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    first, last = result.telemetry["ts"].min(), result.telemetry["ts"].max()
    for protocol, frame in result.telemetry.groupby("protocol", sort=True):
        name = f"sim_{catalog.host.device}_{protocol}_{first:%Y%m%d%H}_{last:%Y%m%d%H}.{file_format}"
        files.append(atomic_write_bytes(out_dir / name, _encode(frame.reset_index(drop=True), file_format)))
    labels_file = atomic_write_bytes(labels_dir / "labels.parquet", _encode(result.labels, "parquet"))
    return SimulationSummary(
        files=files,
        labels_file=labels_file,
        rows=len(result.telemetry),
        protocols=sorted(result.telemetry["protocol"].unique().tolist()),
        start=pd.Timestamp(first).to_pydatetime(),
        end=pd.Timestamp(last).to_pydatetime(),
        label_counts={str(k): int(v) for k, v in result.labels["anomaly_type"].value_counts().items()},
    )
