"""Prediction intervals for any point forecaster: split-conformal, per horizon step, on rolling-origin residuals.

Calibration data: the residuals ``r_{o,h} = a_{o,h} - f_{o,h}`` and point forecasts ``f_{o,h}`` of the
candidate at rolling origins ``o`` of a CALIBRATION window that precedes the holdout (``h = 1..H``).

Residual space (``mode``):

* ``"relative"`` (default): ``z = r / s(f)`` with ``s(f) = max(f, floor)`` and ``floor = FLOOR_FRACTION *
  mean(|f|)`` over the calibration forecasts. Errors of demand-like series grow with the level (busy
  hours miss by more than quiet ones), and the interval must not depend on which hour of the day the
  origin happens to be, so the residual is measured relative to the forecast itself.
* ``"additive"``: ``z = r`` (for series whose error does not scale with the level).

Per horizon step ``h`` the pool ``Z_h`` holds the ``z`` of steps ``h-w .. h+w`` (``w = pool_width``,
clamped to ``1..H``) of all calibration origins (``n_h`` finite values; pooling neighbouring steps gives
enough values for the 95 % tails with a few weeks of origins). For level ``1 - alpha`` the quantiles are
the split-conformal order statistics of each tail at ``alpha / 2``:

    q_lo(h) = Z_h[(k_lo)],  k_lo = floor((n_h + 1) * alpha / 2)          (k-th smallest, 1-based)
    q_hi(h) = Z_h[(k_hi)],  k_hi = ceil((n_h + 1) * (1 - alpha / 2))

which gives coverage >= 1 - alpha for exchangeable residuals (``q_lo`` is capped at 0 and ``q_hi``
floored at 0, so the point forecast always lies inside its interval). When ``n_h`` is too small (``k_lo < 1`` or
``k_hi > n_h``) the extreme value is used (the interval may then under-cover slightly; ``n_h`` is stored).
The interval of a new point forecast ``f_h`` is

    [max(0, f_h + q_lo(h) * s(f_h)),  max(0, f_h + q_hi(h) * s(f_h))]      (relative; s = 1 additive)

:meth:`ConformalIntervals.widen` multiplies every quantile (the distance of each bound from the point)
by a factor, e.g. for short-history protocols. Persistence is plain JSON (:meth:`to_json` /
:meth:`from_json`), no pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LEVELS: tuple[float, ...] = (0.8, 0.95)
FLOOR_FRACTION = 0.1
MODES: tuple[str, ...] = ("relative", "additive")
FORMAT_VERSION = 1


def level_key(level: float) -> str:
    """``0.8`` -> ``"80"`` (the suffix of ``lower_80`` / ``upper_80``)."""
    return f"{round(100 * level):d}"


def _order_statistic(sorted_values: np.ndarray, k: int) -> float:
    """k-th smallest (1-based), clamped to the sample."""
    return float(sorted_values[min(max(k, 1), len(sorted_values)) - 1])


@dataclass
class ConformalIntervals:
    """Split-conformal per-horizon intervals on rolling-origin residuals (formula in the module docstring).

    ``quantiles[level] = (lower_q, upper_q)``: arrays of length ``horizon`` in the residual space of
    ``mode`` (relative: multiples of ``max(f, floor)``; additive: earnings units).
    """

    levels: tuple[float, ...] = LEVELS
    quantiles: dict = field(default_factory=dict)
    mode: str = "relative"
    floor: float = 0.0
    pool_width: int = 2
    n_calibration: list[int] = field(default_factory=list)
    widen_factor: float = 1.0

    @property
    def horizon(self) -> int:
        return len(next(iter(self.quantiles.values()))[0])

    @classmethod
    def fit(
        cls,
        residuals: np.ndarray,
        predictions: np.ndarray,
        *,
        levels: tuple[float, ...] = LEVELS,
        mode: str = "relative",
        pool_width: int = 2,
    ) -> ConformalIntervals:
        """Calibrate on ``(n_origins, horizon)`` residuals (actual - predicted, NaN = unknown) and the
        matching point forecasts. Raises ``ValueError`` when no residual is finite."""
        if mode not in MODES:
            raise ValueError(f"unknown interval mode {mode!r}; known: {', '.join(MODES)}")
        r = np.atleast_2d(np.asarray(residuals, dtype=float))
        f = np.atleast_2d(np.asarray(predictions, dtype=float))
        if r.shape != f.shape:
            raise ValueError(f"residuals {r.shape} and predictions {f.shape} differ in shape")
        usable = np.isfinite(r) & np.isfinite(f)
        if not usable.any():
            raise ValueError("no finite calibration residual")
        floor = 0.0
        if mode == "relative":
            floor = FLOOR_FRACTION * float(np.mean(np.abs(f[usable])))
            if floor <= 0:
                floor = 1e-9
            z = r / np.maximum(f, floor)
        else:
            z = r.copy()
        z[~usable] = np.nan
        horizon = r.shape[1]
        quantiles: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        counts: list[int] = []
        pools = []
        for h in range(horizon):
            pool = z[:, max(0, h - pool_width) : h + pool_width + 1].ravel()
            pool = np.sort(pool[np.isfinite(pool)])
            if pool.size == 0:  # no residual at this step: borrow all steps
                pool = np.sort(z[np.isfinite(z)])
            pools.append(pool)
            counts.append(int(pool.size))
        for level in levels:
            if not 0 < level < 1:
                raise ValueError(f"interval level {level} is not in (0, 1)")
            alpha = 1.0 - level
            lower = np.empty(horizon)
            upper = np.empty(horizon)
            for h, pool in enumerate(pools):
                n = pool.size
                lower[h] = min(0.0, _order_statistic(pool, math.floor((n + 1) * alpha / 2 + 1e-9)))
                upper[h] = max(0.0, _order_statistic(pool, math.ceil((n + 1) * (1 - alpha / 2) - 1e-9)))
            quantiles[float(level)] = (lower, upper)
        return cls(levels=tuple(float(x) for x in levels), quantiles=quantiles, mode=mode, floor=floor, pool_width=pool_width, n_calibration=counts)

    def _scale(self, point: np.ndarray) -> np.ndarray:
        if self.mode == "relative":
            return np.maximum(point, self.floor)
        return np.ones_like(point)

    def apply(self, point: np.ndarray) -> dict[str, np.ndarray]:
        """Bounds of a ``(horizon,)`` or ``(n, horizon)`` point forecast: ``{"lower_80", "upper_80",
        "lower_95", "upper_95"}`` (keys follow ``levels``), clipped to ``>= 0``."""
        f = np.asarray(point, dtype=float)
        if f.shape[-1] != self.horizon:
            raise ValueError(f"point forecast has {f.shape[-1]} steps but the intervals were calibrated for {self.horizon}")
        scale = self._scale(f)
        out: dict[str, np.ndarray] = {}
        for level in self.levels:
            lower_q, upper_q = self.quantiles[level]
            key = level_key(level)
            out[f"lower_{key}"] = np.clip(f + lower_q * scale, 0.0, None)
            out[f"upper_{key}"] = np.clip(f + upper_q * scale, 0.0, None)
        return out

    def widen(self, factor: float) -> ConformalIntervals:
        """A copy whose bounds are ``factor`` times as far from the point (``factor >= 1`` widens)."""
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"widen factor must be a positive number, got {factor!r}")
        return ConformalIntervals(
            levels=self.levels,
            quantiles={level: (lo * factor, hi * factor) for level, (lo, hi) in self.quantiles.items()},
            mode=self.mode,
            floor=self.floor,
            pool_width=self.pool_width,
            n_calibration=list(self.n_calibration),
            widen_factor=self.widen_factor * factor,
        )

    def to_json(self) -> dict:
        """Plain-JSON form (lists and numbers only)."""
        return {
            "format": FORMAT_VERSION,
            "method": "split-conformal per horizon step",
            "mode": self.mode,
            "floor": self.floor,
            "pool_width": self.pool_width,
            "widen_factor": self.widen_factor,
            "n_calibration": list(self.n_calibration),
            "levels": {
                level_key(level): {"level": level, "lower_q": self.quantiles[level][0].tolist(), "upper_q": self.quantiles[level][1].tolist()}
                for level in self.levels
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> ConformalIntervals:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on a malformed document."""
        try:
            if int(data["format"]) != FORMAT_VERSION:
                raise ValueError(f"interval format {data['format']} is not {FORMAT_VERSION}")
            entries = sorted(data["levels"].values(), key=lambda e: float(e["level"]))
            quantiles = {float(e["level"]): (np.asarray(e["lower_q"], dtype=float), np.asarray(e["upper_q"], dtype=float)) for e in entries}
            lengths = {len(q) for pair in quantiles.values() for q in pair}
            if len(lengths) != 1 or not quantiles:
                raise ValueError("interval quantiles have inconsistent horizons")
            mode = str(data["mode"])
            if mode not in MODES:
                raise ValueError(f"unknown interval mode {mode!r}")
            return cls(
                levels=tuple(quantiles),
                quantiles=quantiles,
                mode=mode,
                floor=float(data["floor"]),
                pool_width=int(data["pool_width"]),
                n_calibration=[int(x) for x in data.get("n_calibration", [])],
                widen_factor=float(data.get("widen_factor", 1.0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed interval document: {exc!r}") from exc
