"""Diminishing-returns response curves: how a protocol's earnings grow with its allocation share.

Model (per protocol)::

    E(x) = k * x**beta          x in [0, 1] allocation share, k = $/h at full allocation, 0 < beta < 1

Fit from observed hourly pairs (x_j, e_j) with x_j > X_MIN and e_j > 0:

    beta_ols = cov(log x, log e) / var(log x)                       (log-log least squares)
    beta     = clip(beta_ols, MIN_BETA, MAX_BETA)
    k        = sum_j e_j / sum_j x_j**beta                          (ratio estimator: unbiased for the
                                                                      mean, unlike exp(mean log e))

Safe fallbacks:

* fewer than ``min_points`` usable pairs, or no allocation variation (std of log x below
  ``min_log_spread``): beta cannot be identified, so the prior ``PRIOR_BETA = 0.5`` (square root) is
  used and only ``k`` is estimated with the ratio estimator (method ``"prior"``);
* no usable pair at all: beta = prior, k = 0 (method ``"no_data"``).

``beta`` is clipped below 1 on purpose: one host/IP never earns linearly more with more share (a second
worker on the same IP "usually earns nothing"), and a strictly concave curve keeps the allocation problem
genuinely convex instead of a corner LP.

For the optimizer the normalised curve r(x) = x**beta is replaced by its piecewise-linear interpolant on
fixed breakpoints 0 = z_0 < z_1 < ... < z_K = 1. Because r is concave the interpolant is the minimum of
the chord lines, r_pwl(x) = min_k (a_k + b_k x), with b_k = (r(z_k) - r(z_{k-1})) / (z_k - z_{k-1}) and
a_k = r(z_{k-1}) - b_k z_{k-1}; it never overestimates r and is exact at the breakpoints.

Learned curve (:func:`learn_response_curve`, method ``"learned"``): real apps saturate, pay nothing below a
minimum, or pay in whole leases, which no k x**beta represents. The cycle therefore learns each protocol's
response from its own telemetry (hourly ts, allocation a_t, earnings e_t), assuming only that more share
never earns less (monotone) and that earnings factor as e_t = g(a_t) * h_t * noise, h_t the share-free
demand x price level:

1. runs: maximal stretches at one share (|a_t - a_{t-1}| <= 0.001); the first hour of every run after the
   first is dropped (a restart hour earns less for a reason that is not the share); zero hours inside a run
   whose median is positive are dropped (outages);
2. hour-of-day demand proxy (share-free): q_h = mean over hours of day h of e_t / m_run(t), m_run the run's
   mean, normalised to mean 1; each hour is divided by q_{hour(t)}, so a run covering part of a day is not
   judged by its hours' place in the daily rhythm;
3. level per observed share s (rounded to 0.005): the hour-weighted mean m_s of the normalised earnings of
   every run at s; shares with fewer than ``min_hours`` hours are not used;
4. monotone fit: weighted isotonic regression (scipy ``isotonic_regression``, weights = hours) of m_s on s,
   v_s non-decreasing; the curve's scale k = max_s v_s ($/h) and its levels r_s = v_s / k;
5. what is believed between and beyond the observed shares, conservatively (no gain where the share was
   never observed):

       r(x) = r_{s_j}  with s_j the largest observed share <= x;   r(x) = 0 below the smallest observed share

   a lower bound of any monotone truth through the fitted points (it is the curve plans are evaluated on,
   :meth:`ResponseCurve.relative`). Divisions by the response at a forecast's share use the interpolant
   through (0, 0) and the points (:meth:`ResponseCurve.at_share`), equal to r at every observed share.
6. for the optimiser the concave envelope r_env (upper hull of (0, 0), the points and (1, r_max)): the
   smallest concave majorant, so the problem stays convex; it overstates a step curve between its steps, so
   the cycle evaluates and snaps its answer on r (allocation.plan.snap_to_observed).

Below two usable shares nothing about the shape can be learned and the power fit above is used.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

PRIOR_BETA = 0.5
MIN_BETA = 0.1
MAX_BETA = 0.95
X_MIN = 0.005  # shares below this are "off"; their log would dominate the fit

# Denser near 0 where x**beta is steep; 12 segments keep the chord error of sqrt below 0.03 of r(1).
BREAKPOINTS: tuple[float, ...] = (0.0, 0.005, 0.015, 0.03, 0.06, 0.1, 0.16, 0.25, 0.37, 0.52, 0.7, 0.85, 1.0)

CurveMethod = Literal["fit", "prior", "no_data", "learned"]
SHARE_RESOLUTION = 0.005  # observed shares closer than this are one share
KNOT_TOLERANCE = 1e-6  # a solver answer this close below an observed share is at it (solver precision)
RUN_CHANGE = 0.001  # a share change above this starts a new run
BOUNDARY_HOURS = 24  # hours either side of a share change whose means give the share's effect
ANCHOR = 0.2  # weight of a run's mean level against a boundary ratio (a run's mean carries the price drift)
ZERO_LEVEL = 0.02  # a run earning under 2 % of the best run earns nothing (below a minimum, no lease)


@dataclass(frozen=True)
class ResponseCurve:
    """E(x) = scale_usd_per_hour * x**beta; see the module docstring for the fit."""

    beta: float = PRIOR_BETA
    scale_usd_per_hour: float = 0.0
    method: CurveMethod = "prior"
    n_points: int = 0
    log_spread: float = 0.0
    r2: float | None = None
    # learned curve (method "learned"): observed shares s_j (increasing) and r_j = v_j / k (non-decreasing, max 1)
    knots: tuple[float, ...] = ()
    levels: tuple[float, ...] = ()
    hours: tuple[int, ...] = ()  # telemetry hours behind each knot

    def __post_init__(self) -> None:
        if not (0.0 < self.beta <= 1.0) or not np.isfinite(self.beta):
            raise ValueError(f"ResponseCurve.beta must be in (0, 1], got {self.beta!r}")
        if not np.isfinite(self.scale_usd_per_hour) or self.scale_usd_per_hour < 0:
            raise ValueError(f"ResponseCurve.scale_usd_per_hour must be finite and >= 0, got {self.scale_usd_per_hour!r}")
        if len(self.knots) != len(self.levels) or (self.hours and len(self.hours) != len(self.knots)):
            raise ValueError("ResponseCurve.knots, levels and hours must have the same length")
        if self.knots:
            z, r = np.asarray(self.knots), np.asarray(self.levels)
            if np.any(np.diff(z) <= 0) or z[0] < 0 or z[-1] > 1:
                raise ValueError("ResponseCurve.knots must increase within [0, 1]")
            if np.any(np.diff(r) < -1e-12) or r[0] < 0 or r[-1] > 1 + 1e-9:
                raise ValueError("ResponseCurve.levels must be non-decreasing within [0, 1]")

    @property
    def learned(self) -> bool:
        return bool(self.knots)

    def relative(self, x: float | np.ndarray) -> float | np.ndarray:
        """r(x): the share of full-allocation earnings earned at allocation x.

        Power curve: x**beta. Learned curve: the level of the largest observed share <= x, 0 below the
        smallest (module docstring, step 5)."""
        if not self.knots:
            return np.power(np.clip(x, 0.0, 1.0), self.beta)
        z, r = np.asarray(self.knots), np.asarray(self.levels)
        index = np.searchsorted(z, np.asarray(x, dtype=float) + KNOT_TOLERANCE, side="right") - 1
        out = np.where(index >= 0, r[np.clip(index, 0, None)], 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def at_share(self, x: float | np.ndarray) -> float | np.ndarray:
        """The response a forecast made at share x is divided by: r(x) for a power curve; for a learned
        curve the interpolant through (0, 0) and the observed points (flat beyond the largest)."""
        if not self.knots:
            return self.relative(x)
        out = np.interp(np.asarray(x, dtype=float), np.r_[0.0, self.knots], np.r_[0.0, self.levels])
        return float(out) if np.ndim(out) == 0 else out

    def envelope(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (z, r) of the concave envelope of a learned curve: the upper hull of (0, 0), the
        observed points and (1, r_max)."""
        points = [*([(0.0, 0.0)] if self.knots[0] > 0 else []), *zip(self.knots, self.levels)]
        if points[-1][0] < 1.0:
            points.append((1.0, float(self.levels[-1])))
        hull: list[tuple[float, float]] = []
        for point in points:  # monotone chain, upper hull: drop a vertex that lies on or below the new chord
            while len(hull) >= 2:
                (x1, y1), (x2, y2) = hull[-2], hull[-1]
                if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) >= -1e-12:
                    hull.pop()
                else:
                    break
            hull.append(point)
        z, r = np.array(hull).T
        return z, r

    def envelope_value(self, x: float | np.ndarray) -> float | np.ndarray:
        """r_env(x), the concave envelope (x**beta for a power curve)."""
        if not self.knots:
            return self.relative(x)
        z, r = self.envelope()
        out = np.interp(np.asarray(x, dtype=float), z, r)
        return float(out) if np.ndim(out) == 0 else out

    def plateau_start(self, x: float) -> float | None:
        """The smallest observed share that earns r(x) on the learned curve (None below every knot or for
        a power curve): the least share that keeps what x earns."""
        if not self.knots:
            return None
        level = float(self.relative(x))
        z, r = np.asarray(self.knots), np.asarray(self.levels)
        if x + KNOT_TOLERANCE < z[0]:
            return None
        return float(z[np.argmax(r >= level - 1e-12)])

    def earnings(self, x: float | np.ndarray) -> float | np.ndarray:
        """E(x) in $/h with the fitted scale."""
        return self.scale_usd_per_hour * self.relative(x)

    def chords(self, breakpoints: tuple[float, ...] = BREAKPOINTS) -> tuple[np.ndarray, np.ndarray]:
        """Intercepts a_k and slopes b_k of len(breakpoints) - 1 chord lines, r_pwl = min_k a_k + b_k x.

        Power curve: the chords of x**beta on the breakpoints. Learned curve: the segments of its concave
        envelope (exact; the last one repeated to fill the count), or, with more segments than lines, the
        envelope's chords on the breakpoints."""
        z = np.asarray(breakpoints, dtype=float)
        r = np.power(z, self.beta)
        if self.knots:
            hull_z, hull_r = self.envelope()
            if len(hull_z) - 1 <= len(z) - 1:
                pad = len(z) - len(hull_z)
                z, r = np.r_[hull_z, hull_z[-1] + np.arange(1, pad + 1)], np.r_[hull_r, np.full(pad, hull_r[-1])]
            else:
                r = np.interp(z, hull_z, hull_r)
        slopes = np.diff(r) / np.diff(z)
        intercepts = r[:-1] - slopes * z[:-1]
        return intercepts, slopes

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        for key in ("knots", "levels", "hours"):
            data[key] = list(data[key])
        return data


def fit_response_curve(
    allocations: np.ndarray | list[float],
    earnings: np.ndarray | list[float],
    *,
    prior_beta: float = PRIOR_BETA,
    min_points: int = 12,
    min_log_spread: float = 0.05,
) -> ResponseCurve:
    """Fit E(x) = k x**beta to observed (allocation, earnings $/h) pairs; see the module docstring."""
    x = np.asarray(allocations, dtype=float).ravel()
    e = np.asarray(earnings, dtype=float).ravel()
    if x.shape != e.shape:
        raise ValueError(f"allocations ({x.size}) and earnings ({e.size}) must have the same length")
    usable = np.isfinite(x) & np.isfinite(e) & (x > X_MIN) & (e > 0)
    x, e = np.minimum(x[usable], 1.0), e[usable]
    if x.size == 0:
        return ResponseCurve(beta=prior_beta, scale_usd_per_hour=0.0, method="no_data")

    log_x, log_e = np.log(x), np.log(e)
    spread = float(np.std(log_x))
    if x.size < min_points or spread < min_log_spread:
        beta = prior_beta
        return ResponseCurve(
            beta=beta,
            scale_usd_per_hour=float(e.sum() / np.power(x, beta).sum()),
            method="prior",
            n_points=int(x.size),
            log_spread=spread,
        )

    centred_x = log_x - log_x.mean()
    beta_ols = float(np.dot(centred_x, log_e - log_e.mean()) / np.dot(centred_x, centred_x))
    beta = float(np.clip(beta_ols, MIN_BETA, MAX_BETA))
    intercept = log_e.mean() - beta_ols * log_x.mean()
    residual = log_e - (intercept + beta_ols * log_x)
    total = float(np.sum((log_e - log_e.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else None
    return ResponseCurve(
        beta=beta,
        scale_usd_per_hour=float(e.sum() / np.power(x, beta).sum()),
        method="fit",
        n_points=int(x.size),
        log_spread=spread,
        r2=r2,
    )


def _runs(allocations: np.ndarray) -> np.ndarray:
    """Run id per hour: a new run starts where the share changes by more than RUN_CHANGE."""
    return np.r_[0, np.cumsum(np.abs(np.diff(allocations)) > RUN_CHANGE)]


def _drift_free_levels(e: np.ndarray, run: np.ndarray, share: np.ndarray, n_shares: int) -> np.ndarray:
    """Level per share with the slow price drift taken out (module docstring, step 3).

    With c_s = log g(s) and u a common offset, weighted least squares over
      boundaries j -> j+1 (both sides earn):  c_{s(j+1)} - c_{s(j)} = log f_{j+1} - log b_j         (weight 1)
      runs j that earn:                       c_{s(j)} + u = log m_j                                (weight ANCHOR)
    b_j, f_j the means of the last / first BOUNDARY_HOURS of a run, m_j its mean: across a share change the
    price has had no time to move, so the boundary ratio is the share's effect; the anchors tie shares that
    no boundary links. Levels g(s) = exp(c_s) times the share of its hours in runs that earn, rescaled to
    the plain hour-weighted mean level. Runs earning under ZERO_LEVEL of the best run count as earning 0.
    """
    runs = np.unique(run)
    starts = np.searchsorted(run, runs, side="left")
    ends = np.searchsorted(run, runs, side="right")
    run_share = share[starts]
    run_mean = np.array([e[a:b].mean() for a, b in zip(starts, ends)])
    earns = run_mean > ZERO_LEVEL * max(float(run_mean.max()), 1e-300)
    rows, target, weight = [], [], []
    for j in range(len(runs) - 1):
        if earns[j] and earns[j + 1] and run_share[j] != run_share[j + 1]:
            before = e[max(starts[j], ends[j] - BOUNDARY_HOURS):ends[j]].mean()
            after = e[starts[j + 1]:min(ends[j + 1], starts[j + 1] + BOUNDARY_HOURS)].mean()
            if before > 0 and after > 0:
                row = np.zeros(n_shares + 1)
                row[run_share[j + 1]], row[run_share[j]] = 1.0, -1.0
                rows.append(row)
                target.append(np.log(after / before))
                weight.append(1.0)
    for j in np.flatnonzero(earns):
        row = np.zeros(n_shares + 1)
        row[run_share[j]], row[-1] = 1.0, 1.0
        rows.append(row)
        target.append(np.log(run_mean[j]))
        weight.append(ANCHOR)
    plain = np.bincount(share, weights=e, minlength=n_shares) / np.maximum(np.bincount(share, minlength=n_shares), 1)
    if not rows:
        return plain
    w = np.sqrt(np.array(weight))
    design = np.array(rows) * w[:, None]
    solution = np.linalg.lstsq(design, np.array(target) * w, rcond=None)[0]
    hours = np.bincount(share, minlength=n_shares).astype(float)
    earning_hours = np.bincount(run_share[earns], weights=(ends - starts)[earns], minlength=n_shares)
    seen = earning_hours > 0
    levels = np.where(seen, np.exp(np.clip(solution[:n_shares] - solution[:n_shares][seen].mean(), -50, 50)), 0.0)
    levels *= earning_hours / np.maximum(hours, 1)
    total = float(np.sum(levels * hours))
    return levels * float(np.sum(plain * hours)) / total if total > 0 else plain


def learn_response_curve(
    ts: np.ndarray | pd.Series | list,
    allocations: np.ndarray | list[float],
    earnings: np.ndarray | list[float],
    *,
    min_hours: int = 12,
    prior_beta: float = PRIOR_BETA,
    price_proxy: bool = True,
) -> ResponseCurve:
    """A monotone response learned from hourly telemetry (module docstring, "Learned curve").

    Returns the power fit (:func:`fit_response_curve`) when fewer than two shares have ``min_hours`` usable
    hours; its ``beta`` is kept on the learned curve too (the forecasts' allocation scaling reads it).
    """
    from scipy.optimize import isotonic_regression

    x = np.asarray(allocations, dtype=float).ravel()
    e = np.asarray(earnings, dtype=float).ravel()
    when = np.asarray(ts).ravel()
    if not np.issubdtype(when.dtype, np.datetime64):  # pd.to_datetime walks an ndarray element by element
        when = pd.to_datetime(pd.Series(when)).to_numpy()
    when = when.astype("datetime64[h]")
    if not (x.shape == e.shape == when.shape):
        raise ValueError(f"ts ({when.size}), allocations ({x.size}) and earnings ({e.size}) must have the same length")
    power = fit_response_curve(x, e, prior_beta=prior_beta)
    order = np.argsort(when, kind="stable")
    x, e, hour = x[order], e[order], when[order].astype(np.int64) % 24
    ok = np.isfinite(x) & np.isfinite(e) & (e >= 0)
    x, e, hour = np.clip(x[ok], 0.0, 1.0), e[ok], hour[ok]
    if x.size == 0:
        return power
    run = _runs(x)
    bounds = np.r_[0, np.flatnonzero(np.diff(run)) + 1, run.size]
    run_median = np.repeat([np.median(e[a:b]) for a, b in itertools.pairwise(bounds)], np.diff(bounds))
    keep = ~np.r_[False, run[1:] != run[:-1]] & ~((e <= 0) & (run_median > 0))
    x, e, hour, run = x[keep], e[keep], hour[keep], run[keep]
    if x.size == 0:
        return power
    _, run_index = np.unique(run, return_inverse=True)
    run_mean = (np.bincount(run_index, weights=e) / np.bincount(run_index))[run_index]
    # hour-of-day demand proxy from runs that earn: q_h = mean(e_t / m_run), normalised to mean 1
    earning = run_mean > 0
    counts = np.bincount(hour[earning], minlength=24)
    if np.all(counts > 0):
        profile = np.bincount(hour[earning], weights=e[earning] / run_mean[earning], minlength=24) / counts
        if profile.mean() > 0:
            e = e / np.clip(profile / profile.mean(), 0.2, None)[hour]
    shares, share_index = np.unique(np.round(x / SHARE_RESOLUTION).astype(np.int64), return_inverse=True)
    hours = np.bincount(share_index)
    means = _drift_free_levels(e, run_index, share_index, len(shares)) if price_proxy else np.bincount(share_index, weights=e) / hours
    usable = hours >= min_hours
    if usable.sum() < 2:
        return power
    shares, hours, means = shares[usable] * SHARE_RESOLUTION, hours[usable], means[usable]
    fitted = isotonic_regression(means, weights=hours.astype(float), increasing=True).x
    scale = float(fitted.max())
    if scale <= 0:
        return power
    knots = np.clip(np.round(shares, 6), 0.0, 1.0)
    return ResponseCurve(
        beta=power.beta,
        scale_usd_per_hour=scale,
        method="learned",
        n_points=int(hours.sum()),
        log_spread=power.log_spread,
        r2=power.r2,
        knots=tuple(float(k) for k in knots),
        levels=tuple(float(v) for v in np.clip(fitted / scale, 0.0, 1.0)),
        hours=tuple(int(h) for h in hours),
    )
