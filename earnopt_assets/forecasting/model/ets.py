"""An exponential-smoothing (ETS) component with parameters fitted once at training and frozen for serving.

Training fits statsforecast's AutoETS (season 24, additive season ``ZZA``: the ``ets`` peer's model) on the
last :data:`ETS_WINDOW_HOURS` of the training series and keeps only its smoothing parameters
(alpha, beta, gamma, phi) and trend type. A forecast then re-runs the SAME state recursion with those
parameters over the last ``N = ETS_WINDOW_HOURS`` hours before each origin (no refit per request).

State ``x = (l, b, s_0 .. s_23)`` (``s_0`` the newest seasonal state, ``s_23`` the one used next), for
each hour ``y_i`` of the window (statsforecast's own recursion; with additive trend and season the
multiplicative-error models update the states identically, so the point forecast is the same):

    yhat_i = l + phi b + s_23,  e_i = y_i - yhat_i
    l' = l + phi b + alpha e_i,   b' = phi b + beta e_i,   s' = (s_23 + gamma e_i, s_0, .., s_22)

Start state (heuristic, from the window's first week): ``l = mean(y_0..y_167)``, ``b = 0``,
``s_{23-k} = mean_{d=0..6} y_{24d+k} - l`` (k = 0..23). Forecast ``f_h = l + (phi + .. + phi^h) b + s_{24-h}``.

Everything above is linear in the window, so the whole forecast is ``f = W y`` with a fixed ``W``
(24 x N), computed once from the parameters (:meth:`FrozenETS.matrix`, backwards through the recursion:
``V_N = C``, ``W[:, i] = V_{i+1}^T g``, ``V_i = A^T V_{i+1}`` with ``A = F - g w^T``, then the start
state's ``V_0^T M_0``). A forecast is one matrix product: the same numbers in training and serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

ETS_WINDOW_HOURS = 4 * 168
SEASON = 24
INIT_HOURS = 168
HORIZON = 24
TRENDS: tuple[str, ...] = ("N", "A", "Ad")


@dataclass
class FrozenETS:
    """Smoothing parameters of an additive-season ETS; see the module docstring."""

    alpha: float
    beta: float
    gamma: float
    phi: float
    trend: str
    method: str = ""
    _matrix: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _other_windows: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.trend not in TRENDS:
            raise ValueError(f"ETS trend {self.trend!r} is not one of {TRENDS}")
        values = (self.alpha, self.beta, self.gamma, self.phi)
        if not all(np.isfinite(v) for v in values) or not (0.0 <= self.alpha <= 1.0 and 0.0 <= self.gamma <= 1.0 and 0.0 < self.phi <= 1.0):
            raise ValueError(f"ETS parameters out of range: alpha {self.alpha}, beta {self.beta}, gamma {self.gamma}, phi {self.phi}")
        if self.trend == "N":
            self.beta, self.phi = 0.0, 1.0

    @classmethod
    def fit(cls, z: np.ndarray) -> FrozenETS | None:
        """AutoETS(``ZZA``, season 24) on the last :data:`ETS_WINDOW_HOURS` of ``z`` (finite, causally
        filled); None when the window is too short, flat, or the fit fails (the base then does without)."""
        y = np.asarray(z, dtype=float)[-ETS_WINDOW_HOURS:]
        if len(y) < ETS_WINDOW_HOURS or not np.isfinite(y).all() or float(np.ptp(y)) == 0.0:
            return None
        try:
            from statsforecast.models import AutoETS

            model = AutoETS(season_length=SEASON, model="ZZA")
            model.fit(y)
            fitted = model.model_
            method = str(fitted["method"])  # e.g. "ETS(A,Ad,A)"
            trend = method.split(",")[1]
            par = np.asarray(fitted["par"], dtype=float)
            if trend not in TRENDS:  # a multiplicative trend: refit the additive damped one
                model = AutoETS(season_length=SEASON, model="ZAA", damped=True)
                model.fit(y)
                fitted, method, trend = model.model_, str(model.model_["method"]), "Ad"
                par = np.asarray(fitted["par"], dtype=float)
            alpha, beta, gamma, phi = (float(v) if np.isfinite(v) else 0.0 for v in par[:4])
            return cls(alpha, beta if trend != "N" else 0.0, gamma, phi if trend == "Ad" else 1.0, trend, method)
        except Exception as exc:
            log.info("ETS fit failed (%s); the base does without its ETS component", exc)
            return None

    def matrix(self, window: int = ETS_WINDOW_HOURS) -> np.ndarray:
        """``W`` (24, N): forecast of h = 1..24 = ``W @ y`` for the window ``y`` of the last N hours
        (N = ``window``, at least the start state's week; the service forecasts posted windows of any such length)."""
        if window == ETS_WINDOW_HOURS and self._matrix is not None:
            return self._matrix
        if window in self._other_windows:
            return self._other_windows[window]
        if window < INIT_HOURS:
            raise ValueError(f"an ETS window needs at least {INIT_HOURS} hours, got {window}")
        K = 2 + SEASON
        g = np.zeros(K)
        g[:3] = (self.alpha, self.beta, self.gamma)
        w = np.zeros(K)
        w[0], w[1], w[K - 1] = 1.0, self.phi, 1.0
        F = np.zeros((K, K))
        F[0, 0], F[0, 1], F[1, 1] = 1.0, self.phi, self.phi
        F[2, K - 1] = 1.0
        F[3:, 2 : K - 1] = np.eye(SEASON - 1)
        A = F - np.outer(g, w)
        damp = np.cumsum(self.phi ** np.arange(1, HORIZON + 1))
        C = np.zeros((K, HORIZON))
        C[0, :] = 1.0
        C[1, :] = damp
        C[2 + SEASON - np.arange(1, HORIZON + 1), np.arange(HORIZON)] = 1.0
        N = int(window)
        W = np.zeros((HORIZON, N))
        V = C
        for i in range(N - 1, -1, -1):
            W[:, i] = V.T @ g
            V = A.T @ V
        M0 = np.zeros((K, N))  # start state from the first week
        M0[0, :INIT_HOURS] = 1.0 / INIT_HOURS
        days = INIT_HOURS // SEASON
        for k in range(SEASON):
            row = 2 + SEASON - 1 - k
            M0[row, k:INIT_HOURS:SEASON] += 1.0 / days
            M0[row, :INIT_HOURS] -= 1.0 / INIT_HOURS
        W += V.T @ M0
        if N == ETS_WINDOW_HOURS:
            self._matrix = W
        else:
            self._other_windows[N] = W
        return W

    def forecast(self, windows: np.ndarray, horizon: int = HORIZON) -> np.ndarray:
        """(..., horizon) forecasts of windows (..., N) of the last N hours."""
        windows = np.asarray(windows, dtype=float)
        return windows @ self.matrix(windows.shape[-1])[:horizon].T

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "phi": self.phi, "trend": self.trend, "method": self.method, "window_hours": ETS_WINDOW_HOURS}

    @classmethod
    def from_json(cls, data: dict | None) -> FrozenETS | None:
        if data is None:
            return None
        if int(data.get("window_hours", ETS_WINDOW_HOURS)) != ETS_WINDOW_HOURS:
            raise ValueError(f"ETS window {data.get('window_hours')} h differs from this code's {ETS_WINDOW_HOURS} h")
        return cls(float(data["alpha"]), float(data["beta"]), float(data["gamma"]), float(data["phi"]), str(data["trend"]), str(data.get("method", "")))
