"""Per-series signals shared by the detector and the rules.

One series is one (device, protocol) on a contiguous hourly grid (missing hours are NaN), built with
:func:`earnopt_assets.ingestion.features.to_hourly_grid` and extended to the host's newest hour so a protocol that
stopped reporting shows up as trailing missing hours.

Notation: ``e_t`` earnings, ``a_t`` allocation, ``g`` = ``allocation_elasticity`` (earnings scale roughly as
``a^g``: diminishing returns), ``u_{r,t}`` usage of resource r, ``q_r`` the protocol's per-unit figure.

* allocation-adjusted earnings   x_t = e_t / max(a_t, 0.01)^g, or x_t = e_t / r(a_t) with a learned response r
                                 (``response``: the allocator's monotone curve, earnopt_assets.numerics.response)
                                 when the caller has one; NaN where r(a_t) = 0 (the share earns nothing)
* activity of resource r         v_{r,t} = u_{r,t} / (max(a_t, 0.01) * q_r)     (1.0 = exactly its share)
* nan-tolerant trailing stats    mean/std over the ``w`` hours BEFORE t, ignoring missing hours, defined
                                 when at least half of the window was observed
* same-hour baseline             median(x_{t-24k}, k = 1..7), defined when >= 4 of the 7 exist;
                                 compute protocols (lease-paid, no daily rhythm): median of the trailing
                                 168 h hours in the same state as t (>= 24 of them): busy (CPU at >= 50 %
                                 of its allocated share: leased) or idle.
* level factor                   L_t = clip(median(x_{t-k} / B_{t-k}, k = 1..24), 1 - band, 1/(1 - band))
* rule baseline                  B'_t = B_t * L_t   (follows a slow drift, e.g. the token price)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from earnopt_assets.catalog import ProtocolKind, ProtocolSpec
from earnopt_assets.ingestion.features import lag, rolling_mean, to_hourly_grid

RESOURCES: tuple[str, ...] = ("cpu_cores", "memory_gb", "bandwidth_mbps", "storage_gb")
MIN_ALLOCATION = 0.01
WEEK_HOURS = 168
# A compute node below this share of its allocated CPU is idle (no lease): low earnings are expected.
COMPUTE_BUSY_ACTIVITY = 0.5
# Baselines of the earnings rules by history (SeriesContext.stepped_baseline), best first.
BASELINE_STEPS: tuple[str, ...] = ("same_hour_7d", "seasonal_naive_24", "recent_level", "none")

_SERIES_COLUMNS = ("earnings_usd", *RESOURCES, "allocation", "connection_failures", "latency_ms")


def trailing_stats(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of x over the ``window`` hours before t, skipping missing hours.

    Built from :func:`rolling_mean` on a zero-filled series and on the observed mask:
    mean = rolling_mean(x filled 0) / rolling_mean(observed); NaN when fewer than window/2 were observed.
    """
    x = np.asarray(x, dtype=float)
    observed = np.isfinite(x)
    filled = np.where(observed, x, 0.0)
    share = rolling_mean(observed.astype(float), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = rolling_mean(filled, window) / share
        mean_sq = rolling_mean(filled * filled, window) / share
    enough = share >= 0.5
    mean = np.where(enough, mean, np.nan)
    std = np.sqrt(np.clip(np.where(enough, mean_sq - mean * mean, np.nan), 0.0, None))
    return lag(mean, 1), lag(std, 1)


def same_hour_median(x: np.ndarray, days: int = 7, min_days: int = 4) -> np.ndarray:
    """median(x_{t-24k}, k = 1..days) per hour; NaN when fewer than ``min_days`` of them exist."""
    stacked = np.vstack([lag(np.asarray(x, dtype=float), 24 * k) for k in range(1, days + 1)])
    count = np.isfinite(stacked).sum(axis=0)
    out = np.full(stacked.shape[1], np.nan)
    ok = count >= min_days
    if ok.any():
        out[ok] = np.nanmedian(stacked[:, ok], axis=0)
    return out


def trailing_median(x: np.ndarray, window: int = WEEK_HOURS, min_count: int | None = None) -> np.ndarray:
    """Median of x over the ``window`` hours before t (missing hours skipped)."""
    series = pd.Series(np.asarray(x, dtype=float))
    need = min_count if min_count is not None else window // 2
    return series.rolling(window, min_periods=need).median().shift(1).to_numpy()


@dataclass
class SeriesContext:
    """Everything the rules and the detector need about one series, computed once."""

    device: str
    protocol: str
    spec: ProtocolSpec
    ts: pd.DatetimeIndex
    observed: np.ndarray
    earnings: np.ndarray
    allocation: np.ndarray
    failures: np.ndarray
    latency: np.ndarray
    usage: dict[str, np.ndarray]
    elasticity: float
    level_band: float = 0.25
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # Hours whose earnings were spread over a collector gap (raw_earnings' ``imputed``), not observed.
    imputed: np.ndarray | None = None
    # r(a): the learned relative response to the share; None = the a^g of ``elasticity``
    response: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, spec: ProtocolSpec, *, elasticity: float = 0.6,
                   end: pd.Timestamp | None = None, device: str | None = None,
                   level_band: float = 0.25, response: Callable[[np.ndarray], np.ndarray] | None = None) -> SeriesContext:
        """Build from telemetry rows of ONE series (any order, gaps allowed)."""
        if frame.empty:
            raise ValueError(f"no telemetry rows for protocol {spec.name!r}")
        data = frame.copy()
        data["ts"] = pd.to_datetime(data["ts"])
        if "latency_ms" not in data.columns:
            data["latency_ms"] = np.nan
        gridded, observed = to_hourly_grid(data[["ts", *_SERIES_COLUMNS]])
        last = gridded["ts"].iloc[-1]
        if end is not None and pd.Timestamp(end) > last:
            extra = pd.date_range(last + pd.Timedelta(hours=1), pd.Timestamp(end), freq="h", unit="ns")
            gridded = pd.concat([gridded, pd.DataFrame({"ts": extra})], ignore_index=True)
            observed = np.concatenate([observed, np.zeros(len(extra), dtype=bool)])
        device_name = device if device is not None else str(data["device"].iloc[0]) if "device" in data else "local"

        def col(name: str) -> np.ndarray:
            return pd.to_numeric(gridded[name], errors="coerce").to_numpy(dtype=float)

        return cls(
            device=device_name,
            protocol=spec.name,
            spec=spec,
            ts=pd.DatetimeIndex(gridded["ts"]),
            observed=np.asarray(observed, dtype=bool),
            earnings=col("earnings_usd"),
            allocation=col("allocation"),
            failures=col("connection_failures"),
            latency=col("latency_ms"),
            usage={r: col(r) for r in RESOURCES},
            elasticity=elasticity,
            level_band=level_band,
            imputed=pd.DatetimeIndex(gridded["ts"]).isin(data.loc[data["imputed"].astype(bool), "ts"]) if "imputed" in data else None,
            response=response,
        )

    def _cached(self, key: str, compute) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def earnings_observed(self) -> np.ndarray:
        """Hours with a row whose earnings were measured (an imputed hour is an average over a gap)."""
        return self.observed if self.imputed is None else self.observed & ~self.imputed

    @property
    def safe_allocation(self) -> np.ndarray:
        return np.maximum(self.allocation, MIN_ALLOCATION)

    @property
    def response_scale(self) -> np.ndarray:
        """What the share is expected to earn relative to full allocation: r(a_t), else max(a_t, 0.01)^g."""
        def compute() -> np.ndarray:
            if self.response is None:
                return self.safe_allocation**self.elasticity
            return np.asarray(self.response(np.nan_to_num(self.allocation, nan=0.0)), dtype=float)

        return self._cached("scale", compute)

    @property
    def adjusted_earnings(self) -> np.ndarray:
        """x_t = e_t / max(a_t, 0.01)^g, or e_t / r(a_t) (NaN where r(a_t) = 0)."""
        def compute() -> np.ndarray:
            scale = self.response_scale
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(scale > 0, self.earnings / np.where(scale > 0, scale, 1.0), np.nan)

        return self._cached("adj", compute)

    def activity(self, resource: str) -> np.ndarray:
        """v_{r,t} = u_{r,t} / (max(a_t, 0.01) * q_r); NaN when the protocol declares no use of r."""
        per_unit = float(getattr(self.spec, resource))
        if per_unit <= 0:
            return np.full(len(self.ts), np.nan)
        return self._cached(f"act:{resource}", lambda: self.usage[resource] / (self.safe_allocation * per_unit))

    @property
    def busy(self) -> np.ndarray:
        """Leased hours of a compute node (CPU >= 50 % of its share); every hour for other kinds."""
        if self.spec.kind is not ProtocolKind.compute:
            return np.ones(len(self.ts), dtype=bool)
        cpu = self.activity("cpu_cores")
        return self._cached("busy", lambda: np.nan_to_num(cpu, nan=0.0) >= COMPUTE_BUSY_ACTIVITY)

    @property
    def same_hour_baseline(self) -> np.ndarray:
        """B_t: what hour t normally earns (allocation-adjusted).

        Bandwidth/storage: median of x over the same hour of the previous 7 days. Compute (lease-paid, no
        daily rhythm, busy and idle hours earn at two levels): median of the trailing 168 h hours in the
        same state (busy or idle) as t, so the end of a lease is not an earnings drop.
        """
        def compute() -> np.ndarray:
            x = self.adjusted_earnings
            if self.spec.kind is ProtocolKind.compute:
                busy = self.busy
                busy_median = trailing_median(np.where(busy, x, np.nan), WEEK_HOURS, min_count=24)
                idle_median = trailing_median(np.where(busy, np.nan, x), WEEK_HOURS, min_count=24)
                return np.where(busy, busy_median, idle_median)
            return same_hour_median(x)

        return self._cached("baseline", compute)

    @property
    def level_factor(self) -> np.ndarray:
        """L_t = median over the previous 24 h of x / B, clipped to [1 - band, 1 / (1 - band)].

        Tracks a slow drift of the whole level (a token price sliding for days) that a 7-day same-hour
        median lags behind; a median of 24 hourly ratios ignores anomalies shorter than ~12 h, and the
        clip keeps a long outage from becoming the new normal. 1 where unknown or when band = 0.
        """
        def compute() -> np.ndarray:
            if self.level_band <= 0:
                return np.ones(len(self.ts))
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(self.same_hour_baseline > 0, self.adjusted_earnings / self.same_hour_baseline, np.nan)
            level = trailing_median(ratio, 24, min_count=12)
            low, high = 1.0 - self.level_band, 1.0 / (1.0 - self.level_band)
            return np.where(np.isfinite(level), np.clip(level, low, high), 1.0)

        return self._cached("level", compute)

    @property
    def baseline(self) -> np.ndarray:
        """What the rules compare with: B_t * L_t (allocation-adjusted)."""
        return self._cached("baseline_level", lambda: self.same_hour_baseline * self.level_factor)

    @property
    def stepped_baseline(self) -> tuple[np.ndarray, np.ndarray]:
        """The best baseline the series' history allows at each hour, and its step (index into BASELINE_STEPS).

        Same steps as the forecast (#17): ``same_hour_7d`` = :attr:`baseline` (>= 4 days); else
        ``seasonal_naive_24`` = median of the same hour of the available previous days (>= 1 day); else
        ``recent_level`` = median of x over the previous 24 h (>= 3 observed hours; compute protocols: the
        trailing same-state median over >= 3 hours); else ``none`` (NaN: the first hours cannot be judged).
        """
        def compute() -> tuple[np.ndarray, np.ndarray]:
            x = self.adjusted_earnings
            full = self.baseline
            if self.spec.kind is ProtocolKind.compute:
                # no daily rhythm to repeat; the level is taken in the same (busy/idle) state only, so the
                # end of a lease is never read as a drop
                busy = self.busy
                naive = np.full(len(x), np.nan)
                level = np.where(busy, trailing_median(np.where(busy, x, np.nan), WEEK_HOURS, min_count=3),
                                 trailing_median(np.where(busy, np.nan, x), WEEK_HOURS, min_count=3))
            else:
                naive = same_hour_median(x, min_days=1)
                level = trailing_median(x, 24, min_count=3)
            step = np.select([np.isfinite(full), np.isfinite(naive), np.isfinite(level)], [0, 1, 2], default=3)
            value = np.select([step == 0, step == 1, step == 2], [full, naive, level], default=np.nan)
            return value, step

        return self._cached("stepped", compute)

    def silent_run(self) -> np.ndarray:
        """Consecutive missing hours ending at t (0 when t was observed)."""
        def compute() -> np.ndarray:
            run = np.zeros(len(self.ts), dtype=int)
            count = 0
            for i, seen in enumerate(self.observed):
                count = 0 if seen else count + 1
                run[i] = count
            return run

        return self._cached("silent", compute)


def iter_series(telemetry: pd.DataFrame, specs: dict[str, ProtocolSpec], *, elasticity: float = 0.6,
                extend_to_device_end: bool = True, level_band: float = 0.25,
                responses: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> Iterator[SeriesContext]:
    """One :class:`SeriesContext` per (device, protocol) of known protocols, sorted by key.

    ``responses``: per protocol a learned relative response r(a) to adjust earnings by instead of a^g.

    With ``extend_to_device_end`` each series runs to the newest hour any protocol of its device reported,
    so a protocol that went quiet while the others kept reporting has trailing missing hours.
    """
    if telemetry.empty:
        return
    frame = telemetry.copy()
    frame["ts"] = pd.to_datetime(frame["ts"])
    device_end = frame.groupby("device")["ts"].max()
    for (device, protocol), part in frame.groupby(["device", "protocol"], sort=True):
        spec = specs.get(str(protocol))
        if spec is None:
            continue
        end = device_end[device] if extend_to_device_end else None
        yield SeriesContext.from_frame(part, spec, elasticity=elasticity, end=end, device=str(device), level_band=level_band,
                                       response=(responses or {}).get(str(protocol)))
