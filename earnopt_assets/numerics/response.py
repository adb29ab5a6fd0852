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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

PRIOR_BETA = 0.5
MIN_BETA = 0.1
MAX_BETA = 0.95
X_MIN = 0.005  # shares below this are "off"; their log would dominate the fit

# Denser near 0 where x**beta is steep; 12 segments keep the chord error of sqrt below 0.03 of r(1).
BREAKPOINTS: tuple[float, ...] = (0.0, 0.005, 0.015, 0.03, 0.06, 0.1, 0.16, 0.25, 0.37, 0.52, 0.7, 0.85, 1.0)

CurveMethod = Literal["fit", "prior", "no_data"]


@dataclass(frozen=True)
class ResponseCurve:
    """E(x) = scale_usd_per_hour * x**beta; see the module docstring for the fit."""

    beta: float = PRIOR_BETA
    scale_usd_per_hour: float = 0.0
    method: CurveMethod = "prior"
    n_points: int = 0
    log_spread: float = 0.0
    r2: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 < self.beta <= 1.0) or not np.isfinite(self.beta):
            raise ValueError(f"ResponseCurve.beta must be in (0, 1], got {self.beta!r}")
        if not np.isfinite(self.scale_usd_per_hour) or self.scale_usd_per_hour < 0:
            raise ValueError(f"ResponseCurve.scale_usd_per_hour must be finite and >= 0, got {self.scale_usd_per_hour!r}")

    def relative(self, x: float | np.ndarray) -> float | np.ndarray:
        """r(x) = x**beta, the share of full-allocation earnings earned at allocation x."""
        return np.power(np.clip(x, 0.0, 1.0), self.beta)

    def earnings(self, x: float | np.ndarray) -> float | np.ndarray:
        """E(x) in $/h with the fitted scale."""
        return self.scale_usd_per_hour * self.relative(x)

    def chords(self, breakpoints: tuple[float, ...] = BREAKPOINTS) -> tuple[np.ndarray, np.ndarray]:
        """Intercepts a_k and slopes b_k of the chord lines of r(x) = x**beta (r_pwl = min_k a_k + b_k x)."""
        z = np.asarray(breakpoints, dtype=float)
        r = np.power(z, self.beta)
        slopes = np.diff(r) / np.diff(z)
        intercepts = r[:-1] - slopes * z[:-1]
        return intercepts, slopes

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
