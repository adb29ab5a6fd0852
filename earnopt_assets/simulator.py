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

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from earnopt_assets.atomic import atomic_write_bytes
from earnopt_assets.catalog import Catalog, ProtocolKind, ProtocolSpec
from earnopt_assets.environment import HostEnvironment, ResponseModel

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
        stamp = pd.Timestamp(datetime.now(UTC))
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


def simulate(
    catalog: Catalog,
    days: int = 90,
    seed: int = 7,
    end: datetime | str | None = None,
    protocols: list[str] | None = None,
    inject_anomalies: bool = True,
    response: ResponseModel = "power",
    restart_costs: bool = True,
) -> SimulationResult:
    """Simulate ``days`` x 24 hourly rows ending at ``end`` (default: the current UTC hour) for every
    enabled protocol (or the named ones, each checked with ``catalog.require``).

    A thin driver of :class:`earnopt_assets.environment.HostEnvironment`: it feeds the environment its
    own random allocation path (piecewise constant, redrawn every 2-6 days), so open-loop telemetry and
    the closed loop share one model. ``response="power"`` (default) keeps the shared ``alloc^0.6``;
    ``"hidden"`` draws each protocol's own curve per seed. Share changes above the catalog's change
    threshold cost the protocol its ``restart_minutes`` of earnings in that hour (``restart_costs``)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    environment = HostEnvironment(
        catalog, hours=days * 24, seed=seed, end=end, protocols=protocols, inject_anomalies=inject_anomalies,
        response=response, restart_costs=restart_costs,
    )
    telemetry = environment.run(environment.random_allocation)
    return SimulationResult(telemetry=telemetry, labels=environment.labels())


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
