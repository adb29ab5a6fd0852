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

* ``week_median`` M_j = median_{k=1..4} z_{j-168k} (robust to one unusual week: a holiday, an outage)
* ``week_median_level`` lambda^W_t * M_j
* ``ets``        the frozen-parameter exponential smoothing forecast of :mod:`.ets` (the ``ets`` peer's model
                 fitted once at training, re-run over the last 4 weeks before ``t``; ``day_level`` when the
                 model has none or the window reaches before the history)

(means skip lags before the start of the history; every lag is at or before ``t`` because h <= 24), i.e. a
multiplicative level x seasonal decomposition (the level factors lambda are the ETS-like "recent level vs
its seasonal expectation" terms). The base is ``b_{t+h} = max(0, sum_c w_{h,c} comp_c)`` with
non-negative weights ``w_h`` fitted per horizon hour by (weighted) NNLS over training origins only.
Two more level terms use the weekly profile with a 6 h and a 72 h level window (``week_level_6h``,
``week_level_72h``). The NNLS sample weighting (plain, 1/sqrt, 1/relative) and whether to fit on all
training origins or only the most recent ones are chosen by the MAPE of the VALIDATION origins
(:meth:`StatisticalBase.fit_by_validation`). Everything is vectorised over origins: a component is a
gather on index arrays, never a Python loop over hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earnopt_assets.forecasting.model.ets import ETS_WINDOW_HOURS, FrozenETS

HORIZON_HOURS = 24
DAY = 24
WEEK = 168
BASE_WEEKS = 4
BASE_DAYS = 7
LEVEL_HOURS = 24
LEVEL_CLIP = (0.25, 4.0)
# the components of versions saved before the ETS and median terms: they load with those weights 0 (same forecasts)
LEGACY_COMPONENTS: tuple[str, ...] = ("lag_24", "lag_168", "week", "week_level", "day", "day_level", "week_level_6h", "week_level_72h")
COMPONENTS: tuple[str, ...] = (*LEGACY_COMPONENTS, "ets", "week_median", "week_median_level")
ETS_CHUNK = 2048  # origins per ETS window gather (bounds memory at a year of hourly origins)
# Sample weighting of the NNLS fit, chosen on validation (MAPE is relative; plain least squares favours
# the peak hours): w = 1, 1/sqrt(|z| + 0.1 m) or 1/(|z| + 0.3 m), m = mean |z| of the fitted targets.
# ``absolute_relative`` minimises sum_i |t_i - x_i w| / max(|t_i|, 0.1 m) itself (the validation MAPE's
# own loss; a 1/|t|-weighted median regression) by iteratively reweighted NNLS: squared rows weighted
# 1 / (max(|t|, 0.1 m)^2 * max(|relative residual|, 0.01)), IRLS_STEPS steps from the ``relative`` fit.
WEIGHTINGS: tuple[str, ...] = ("squared", "sqrt_relative", "relative", "absolute_relative")
IRLS_STEPS = 6
IRLS_DELTA = 0.01
MAPE_FLOOR = 0.1
# Hours of history the base needs at an origin: one week of lags behind the 24 h level window.
MIN_BASE_HISTORY = WEEK + LEVEL_HOURS
# Hours the base reads at most (4 weeks behind the level window): a longer tail changes nothing.
FULL_BASE_HISTORY = BASE_WEEKS * WEEK + LEVEL_HOURS
ALLOCATION_FLOOR = 0.02
DEFAULT_WEIGHTS = np.eye(len(COMPONENTS))[COMPONENTS.index("week_level")]


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


LEVEL_LONG_HOURS = 72
# NaN columns padded before the history: every lag the components read is >= origin - (_PAD - 1), so a
# gather needs no clipping and no mask
_PAD = max(LEVEL_HOURS, LEVEL_LONG_HOURS) + max(WEEK * BASE_WEEKS, DAY * BASE_DAYS)
_STEPS = np.arange(1, HORIZON_HOURS + 1)
_WEEK_LAGS = WEEK * np.arange(1, BASE_WEEKS + 1)
_DAY_LAGS = DAY * np.arange(1, BASE_DAYS + 1)
_OLDER = np.arange(LEVEL_LONG_HOURS - 1, -1, -1)


def _mean_of(stacked: np.ndarray) -> np.ndarray:
    """Mean over the last axis skipping NaN (NaN when none is finite); the same sums as ``np.nansum``."""
    finite = np.isfinite(stacked)
    n = finite.sum(axis=-1)
    total = np.where(finite, stacked, 0.0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def median_of(stacked: np.ndarray, count: int) -> np.ndarray:
    """Median over the last axis (length ``count``) skipping NaN (NaN when none is finite): the two middle
    finite values of the sorted lags (NaN sorts last), equal to ``np.nanmedian``."""
    ordered = np.sort(stacked, axis=-1)
    n = np.isfinite(stacked).sum(axis=-1)
    low = np.take_along_axis(ordered, np.clip((n - 1) // 2, 0, count - 1)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.clip(n // 2, 0, count - 1)[..., None], axis=-1)[..., 0]
    return np.where(n > 0, 0.5 * (low + high), np.nan)


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


def _lag_median(Z: np.ndarray, rows: np.ndarray, index: np.ndarray, period: int, count: int) -> np.ndarray:
    """Median of the lags ``index - period * k``, k = 1..count, skipping those before the history (NaN if none)."""
    stacked = _gather(Z, rows[..., None], index[..., None] - period * np.arange(1, count + 1))
    ordered = np.sort(stacked, axis=-1)  # NaN last
    n = np.isfinite(stacked).sum(axis=-1)
    low = np.take_along_axis(ordered, np.clip((n - 1) // 2, 0, count - 1)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.clip(n // 2, 0, count - 1)[..., None], axis=-1)[..., 0]
    return np.where(n > 0, 0.5 * (low + high), np.nan)


def ets_path(Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int, ets: FrozenETS | None) -> np.ndarray:
    """(n, horizon) frozen-ETS forecasts from the last :data:`ETS_WINDOW_HOURS` before each origin; NaN
    where there is no ETS or the window is not fully inside the (observed, filled) history."""
    rows, origins = np.asarray(rows, dtype=np.int64), np.asarray(origins, dtype=np.int64)
    out = np.full((len(origins), horizon), np.nan)
    N, T = ETS_WINDOW_HOURS, Z.shape[1]
    if ets is None or T < N:
        return out
    first = origins - N + 1
    missing = np.concatenate([np.zeros((Z.shape[0], 1)), np.cumsum(~np.isfinite(Z), axis=1)], axis=1)
    inside = (first >= 0) & (origins < T)
    ok = np.flatnonzero(inside)
    ok = ok[missing[rows[ok], origins[ok] + 1] == missing[rows[ok], first[ok]]]  # no NaN in the window
    if not len(ok):
        return out
    W = ets.matrix()[:horizon].T  # (N, horizon)
    windows = np.lib.stride_tricks.sliding_window_view(Z, N, axis=1)  # (m, T - N + 1, N), a view
    for start in range(0, len(ok), ETS_CHUNK):
        part = ok[start : start + ETS_CHUNK]
        out[part] = windows[rows[part], first[part]] @ W
    return out


def components(
    Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS, ets: FrozenETS | None = None,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """Base components (n, horizon, len(COMPONENTS)) of origins ``origins`` (column indexes into row
    ``rows`` of ``Z``).

    ``Z`` (m, T) holds causally filled z series; only columns <= each origin are read. The seasonal means
    and the median are functions of the target column alone, so they are computed once per column of the
    span the origins read (consecutive origins share almost all their targets), then gathered.
    ``needed`` (bool per component): the ETS, median and 72 h terms a base weights 0 everywhere are left 0
    (not computed; 0 weight times any finite value adds exactly 0 to the base).
    """
    needed = np.ones(len(COMPONENTS), dtype=bool) if needed is None else np.asarray(needed, dtype=bool)
    rows = np.asarray(rows, dtype=np.int64)
    origins = np.asarray(origins, dtype=np.int64)
    out = np.empty((len(origins), horizon, len(COMPONENTS)))
    if not len(origins):
        return out
    m, T = Z.shape
    padded = np.empty((m, T + _PAD))
    padded[:, :_PAD] = np.nan
    padded[:, _PAD:] = Z
    # the seasonal means are functions of the target column alone: computed once per column of the span
    # the origins read (not once per origin and hour: consecutive origins share almost all their targets)
    lo = int(origins.min()) + _PAD - (LEVEL_LONG_HOURS - 1)
    columns = np.arange(lo, int(origins.max()) + _PAD + horizon + 1)
    week_lags = padded[:, columns[:, None] - _WEEK_LAGS]  # (m, span, weeks)
    week_c = _mean_of(week_lags)
    want_median = bool(needed[9] or needed[10])
    median_c = median_of(week_lags, BASE_WEEKS) if want_median else None
    day_c = _mean_of(padded[:, columns[:, None] - _DAY_LAGS])
    r2 = rows[:, None]
    at = origins[:, None] + _PAD  # origin columns in ``padded``
    targets = at + _STEPS[None, :horizon]
    week = week_c[r2, targets - lo]
    day = day_c[r2, targets - lo]
    older = at - _OLDER[None, :]
    z_older = padded[r2, older]
    week_older = week_c[r2, older - lo]
    z_recent = z_older[:, -LEVEL_HOURS:]
    level_sum = np.nansum(z_recent, axis=1)
    week_recent = week_older[:, -LEVEL_HOURS:]
    lam_week = _level(level_sum, week_recent)
    lam_day = _level(level_sum, day_c[r2, older[:, -LEVEL_HOURS:] - lo])
    lam_6 = _level(np.nansum(z_recent[:, -6:], axis=1), week_recent[:, -6:])
    lam_72 = _level(np.nansum(z_older, axis=1), week_older) if needed[7] else np.zeros(len(origins))
    out[..., 0] = padded[r2, targets - DAY]
    out[..., 1] = padded[r2, targets - WEEK]
    out[..., 2] = week
    out[..., 3] = lam_week[:, None] * week
    out[..., 4] = day
    out[..., 5] = lam_day[:, None] * day
    out[..., 6] = lam_6[:, None] * week
    out[..., 7] = lam_72[:, None] * week
    out[..., 8] = ets_path(Z, rows, origins, horizon, ets) if needed[8] else 0.0
    if want_median:
        median = median_c[r2, targets - lo]
        out[..., 9] = median
        out[..., 10] = lam_week[:, None] * median
    else:
        out[..., 9:11] = 0.0
    for c, fallback in ((1, 0), (2, 4), (3, 5), (6, 5), (7, 5), (8, 5), (9, 4), (10, 5)):
        if needed[c]:
            out[..., c] = np.where(np.isfinite(out[..., c]), out[..., c], out[..., fallback])
    return np.nan_to_num(out, nan=0.0)


def _level(level_sum: np.ndarray, expected: np.ndarray) -> np.ndarray:
    denominator = np.nansum(expected, axis=1)
    ratio = np.divide(level_sum, denominator, out=np.ones_like(level_sum), where=denominator > 1e-12)
    return np.clip(ratio, *LEVEL_CLIP)


@dataclass
class StatisticalBase:
    """Fitted per-horizon NNLS weights ``(horizon, K)`` of :data:`COMPONENTS`; see the module docstring."""

    weights: np.ndarray
    weighting: str = "squared"
    fit_hours: int | None = None
    validation_mape: dict[str, float] | None = None
    ets: FrozenETS | None = None

    @classmethod
    def fit(
        cls, Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, targets: np.ndarray, weighting: str = "squared", comps: np.ndarray | None = None,
        ets: FrozenETS | None = None,
    ) -> StatisticalBase:
        """NNLS per horizon hour of ``targets`` (n, H) (z of hours t+1..t+H) on the origins' components."""
        from scipy.optimize import nnls

        comps = components(Z, rows, origins, targets.shape[1], ets) if comps is None else comps
        weights = np.tile(DEFAULT_WEIGHTS, (targets.shape[1], 1))
        finite = np.abs(targets[np.isfinite(targets)])
        m = float(finite.mean()) if len(finite) else 1.0
        for h in range(targets.shape[1]):
            ok = np.isfinite(targets[:, h])
            if ok.sum() >= 4 * len(COMPONENTS):
                t = targets[ok, h]
                X = comps[ok, h, :]
                w = _sample_weights(t, "relative" if weighting == "absolute_relative" else weighting, m)
                fitted, _ = nnls(X * w[:, None], t * w)
                if weighting == "absolute_relative":  # IRLS towards min sum |t - Xw| / |t| (the MAPE itself)
                    scale = 1.0 / np.maximum(np.abs(t), MAPE_FLOOR * m)
                    for _ in range(IRLS_STEPS):
                        residual = np.abs(t - X @ fitted) * scale
                        w = scale / np.sqrt(np.maximum(residual, IRLS_DELTA))  # w^2 (t - xw)^2 = scale |t - xw|
                        fitted, _ = nnls(X * w[:, None], t * w)
                if np.isfinite(fitted).all() and fitted.sum() > 0:
                    weights[h] = fitted
        return cls(weights, weighting, ets=ets)

    @classmethod
    def fit_by_validation(
        cls, Z: np.ndarray, train_origins: np.ndarray, train_targets: np.ndarray, val_origins: np.ndarray, val_targets: np.ndarray, recent_hours: int,
        ets: FrozenETS | None = None,
    ) -> StatisticalBase:
        """Fit every weighting in :data:`WEIGHTINGS` on all training origins and on the last ``recent_hours``
        of them; keep the one with the lowest MAPE of the validation origins' 24 h paths (never the holdout)."""
        rows_t = np.zeros(len(train_origins), dtype=np.int64)
        comps_t = components(Z, rows_t, train_origins, train_targets.shape[1], ets)
        comps_v = components(Z, np.zeros(len(val_origins), dtype=np.int64), val_origins, val_targets.shape[1], ets)
        best: tuple[float, StatisticalBase] | None = None
        scores: dict[str, float] = {}
        for span in (None, recent_hours):
            keep = slice(None) if span is None else train_origins >= train_origins[-1] - span
            if span is not None and keep.sum() >= len(train_origins):
                continue
            for weighting in WEIGHTINGS:
                candidate = cls.fit(Z, rows_t, train_origins, train_targets[keep], weighting, comps=comps_t[keep], ets=ets)
                candidate.fit_hours = span
                predicted = candidate.predict_components(comps_v)
                ok = np.isfinite(val_targets) & (val_targets != 0)
                score = float(np.mean(np.abs(val_targets[ok] - predicted[ok]) / np.abs(val_targets[ok])) * 100.0) if ok.any() else np.inf
                scores[f"{weighting}/{'all' if span is None else f'last_{span}h'}"] = score
                if best is None or score < best[0] - 1e-9:
                    best = (score, candidate)
        chosen = best[1]
        chosen.validation_mape = scores
        return chosen

    def predict_components(self, comps: np.ndarray) -> np.ndarray:
        return np.maximum(np.einsum("nhc,hc->nh", comps, self.weights[: comps.shape[1]]), 0.0)

    def predict(self, Z: np.ndarray, rows: np.ndarray, origins: np.ndarray, horizon: int = HORIZON_HOURS) -> np.ndarray:
        needed = (self.weights[:horizon] != 0).any(axis=0)  # terms weighted 0 everywhere are not computed
        return self.predict_components(components(Z, rows, origins, horizon, self.ets, needed))

    def to_json(self) -> dict:
        return {
            "components": list(COMPONENTS),
            "weights": self.weights.tolist(),
            "weighting": self.weighting,
            "fit_hours": self.fit_hours,
            "validation_mape": self.validation_mape,
            "ets": None if self.ets is None else self.ets.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> StatisticalBase:
        names = list(data.get("components", []))
        if names not in (list(COMPONENTS), list(LEGACY_COMPONENTS)):
            raise ValueError(f"base components {data.get('components')} differ from this code's {list(COMPONENTS)}")
        weights = np.asarray(data["weights"], dtype=float)
        if weights.shape != (HORIZON_HOURS, len(names)) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"base weights must be {HORIZON_HOURS} x {len(names)} finite non-negative numbers")
        if len(names) < len(COMPONENTS):  # saved before the ETS term: weight 0, the same forecasts as then
            weights = np.concatenate([weights, np.zeros((HORIZON_HOURS, len(COMPONENTS) - len(names)))], axis=1)
        ets = FrozenETS.from_json(data.get("ets"))
        return cls(weights, str(data.get("weighting", "squared")), data.get("fit_hours"), data.get("validation_mape"), ets)


def _sample_weights(t: np.ndarray, weighting: str, m: float) -> np.ndarray:
    """NNLS row weights (see :data:`WEIGHTINGS`); ``m`` = mean |target|."""
    if weighting == "squared":
        return np.ones_like(t)
    if weighting == "sqrt_relative":
        return 1.0 / np.sqrt(np.abs(t) + 0.1 * m)
    if weighting == "relative":
        return 1.0 / (np.abs(t) + 0.3 * m)
    raise ValueError(f"unknown base weighting {weighting!r}; one of {WEIGHTINGS}")
