"""The statistical base the LSTM corrects: level x daily/weekly seasonal estimates, blended per horizon.

All quantities are in allocation-normalised earnings ``z_s = e_s / clip(a_s)**beta`` (see
:func:`normalise`), on a contiguous hourly grid, with missing hours filled CAUSALLY (last observed value
carried forward, :func:`causal_fill`), so nothing at or before an origin ``t`` depends on a later hour.

For an origin ``t`` and target hour ``j = t + h`` (h = 1..24) the components are

* ``lag_24``     z_{j-24}                                        (seasonal naive, daily)
* ``lag_168``    z_{j-168}                                       (seasonal naive, weekly)
* ``week``       W_j = mean_{k=1..4} z_{j-168k}                  (weekly seasonal profile, 4 weeks)
* ``week_level`` lambda^W_t * W_j, lambda^W_t = clip(sum_{s=t-23..t} z_s / sum_{s=t-23..t} W_s, 1/4, 4)
* ``day``        D_j = mean_{k=1..7} z_{j-24k}                   (daily profile, last 7 days)
* ``day_level``  lambda^D_t * D_j, lambda^D_t the same ratio with D

(means skip lags before the start of the history; every lag is at or before ``t`` because h <= 24), i.e. a
multiplicative level x seasonal decomposition (the level factors lambda are the ETS-like "recent level vs
its seasonal expectation" terms). The base is ``b_{t+h} = max(0, sum_c w_{h,c} comp_c)`` with
non-negative weights ``w_h`` fitted per horizon hour by NNLS over training origins only. Everything is
vectorised over origins: a component is a gather on index arrays, never a Python loop over hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HORIZON_HOURS = 24
DAY = 24
WEEK = 168
BASE_WEEKS = 4
BASE_DAYS = 7
LEVEL_HOURS = 24
LEVEL_CLIP = (0.25, 4.0)
COMPONENTS: tuple[str, ...] = ("lag_24", "lag_168", "week", "week_level", "day", "day_level")
# Hours of history the base needs at an origin: one week of lags behind the 24 h level window.
MIN_BASE_HISTORY = WEEK + LEVEL_HOURS
# Hours the base reads at most (4 weeks behind the level window): a longer tail changes nothing.
FULL_BASE_HISTORY = BASE_WEEKS * WEEK + LEVEL_HOURS
ALLOCATION_FLOOR = 0.02
DEFAULT_WEIGHTS = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def causal_fill(values: np.ndarray) -> np.ndarray:
    """Missing hours take the last observed value (leading ones the first observed, or 0): causal."""
    values = np.asarray(values, dtype=float)
    out = values.copy()
    finite = np.isfinite(out)
    if finite.all():
        return out
    if not finite.any():
        return np.zeros_like(out)
    index = np.where(finite, np.arange(len(out)), -1)
    np.maximum.accumulate(index, out=index)
    first = int(np.argmax(finite))
    index[index < 0] = first
    return out[index]


def allocation_factor(allocation: np.ndarray, beta: float | None) -> np.ndarray:
    """clip(a, ALLOCATION_FLOOR, 1)**beta (1 without beta)."""
    allocation = np.asarray(allocation, dtype=float)
    if beta is None:
        return np.ones_like(allocation)
    return np.power(np.clip(np.nan_to_num(allocation, nan=1.0), ALLOCATION_FLOOR, 1.0), float(beta))


def normalise(earnings: np.ndarray, allocation: np.ndarray, beta: float | None) -> np.ndarray:
    """z = e / clip(a)**beta: earnings moved to allocation 1, so lags observed at other shares compare."""
    return np.asarray(earnings, dtype=float) / allocation_factor(allocation, beta)


def _gather(Z: np.ndarray, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Z[rows, index] with NaN where index is outside [0, T)."""
    T = Z.shape[1]
    inside = (index >= 0) & (index < T)
    values = Z[rows, np.clip(index, 0, T - 1)]
    return np.where(inside, values, np.nan)


def _lag_mean(Z: np.ndarray, rows: np.ndarray, index: np.ndarray, period: int, count: int) -> np.ndarray:
    lags = index[..., None] - period * np.arange(1, count + 1)
    stacked = _gather(Z, rows[..., None], lags)
    n = np.isfinite(stacked).sum(axis=-1)
    total = np.nansum(stacked, axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def components(Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS) -> np.ndarray:
    """Base components (n, horizon, 6) of origins ``origins`` (column indexes into row ``rows`` of ``Z``).

    ``Z`` (m, T) holds causally filled z series; only columns <= each origin are read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    origins = np.asarray(origins, dtype=np.int64)
    r2 = rows[:, None]
    targets = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    recent = origins[:, None] - np.arange(LEVEL_HOURS - 1, -1, -1)[None, :]
    week = _lag_mean(Z, r2, targets, WEEK, BASE_WEEKS)
    day = _lag_mean(Z, r2, targets, DAY, BASE_DAYS)
    z_recent = _gather(Z, r2, recent)
    level_sum = np.nansum(z_recent, axis=1)
    lam_week = _level(level_sum, _lag_mean(Z, r2, recent, WEEK, BASE_WEEKS))
    lam_day = _level(level_sum, _lag_mean(Z, r2, recent, DAY, BASE_DAYS))
    out = np.empty((len(origins), horizon, len(COMPONENTS)))
    out[..., 0] = _gather(Z, r2, targets - DAY)
    out[..., 1] = _gather(Z, r2, targets - WEEK)
    out[..., 2] = week
    out[..., 3] = lam_week[:, None] * week
    out[..., 4] = day
    out[..., 5] = lam_day[:, None] * day
    # before a full week of history the weekly terms fall back to the daily ones (never NaN)
    for c, fallback in ((1, 0), (2, 4), (3, 5)):
        out[..., c] = np.where(np.isfinite(out[..., c]), out[..., c], out[..., fallback])
    return np.nan_to_num(out, nan=0.0)


def _level(level_sum: np.ndarray, expected: np.ndarray) -> np.ndarray:
    denominator = np.nansum(expected, axis=1)
    ratio = np.divide(level_sum, denominator, out=np.ones_like(level_sum), where=denominator > 1e-12)
    return np.clip(ratio, *LEVEL_CLIP)


@dataclass
class StatisticalBase:
    """Fitted per-horizon NNLS weights ``(horizon, 6)`` of :data:`COMPONENTS`; see the module docstring."""

    weights: np.ndarray

    @classmethod
    def fit(cls, Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, targets: np.ndarray) -> "StatisticalBase":
        """NNLS per horizon hour of ``targets`` (n, H) (z of hours t+1..t+H) on the origins' components."""
        from scipy.optimize import nnls

        comps = components(Z, rows, origins, targets.shape[1])
        weights = np.tile(DEFAULT_WEIGHTS, (targets.shape[1], 1))
        for h in range(targets.shape[1]):
            ok = np.isfinite(targets[:, h])
            if ok.sum() >= 4 * len(COMPONENTS):
                fitted, _ = nnls(comps[ok, h, :], targets[ok, h])
                if np.isfinite(fitted).all() and fitted.sum() > 0:
                    weights[h] = fitted
        return cls(weights)

    def predict_components(self, comps: np.ndarray) -> np.ndarray:
        return np.maximum(np.einsum("nhc,hc->nh", comps, self.weights[: comps.shape[1]]), 0.0)

    def predict(self, Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS) -> np.ndarray:
        return self.predict_components(components(Z, rows, origins, horizon))

    def to_json(self) -> dict:
        return {"components": list(COMPONENTS), "weights": self.weights.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "StatisticalBase":
        if list(data.get("components", [])) != list(COMPONENTS):
            raise ValueError(f"base components {data.get('components')} differ from this code's {list(COMPONENTS)}")
        weights = np.asarray(data["weights"], dtype=float)
        if weights.shape != (HORIZON_HOURS, len(COMPONENTS)) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"base weights must be {HORIZON_HOURS} x {len(COMPONENTS)} finite non-negative numbers")
        return cls(weights)
