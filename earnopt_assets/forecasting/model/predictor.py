"""Per-protocol earnings model: a statistical base (:mod:`.base`) plus an LSTM correction (:mod:`.forecast`).

Fit (:meth:`EarningsPredictor.fit`) on one protocol's hourly frame (``ts``, ``earnings_usd``, optional
``allocation``; feature frames and raw telemetry both have them):

1. lay the series on a contiguous hourly grid; allocation exponent beta of E = k a**beta fitted on the
   training frame (:func:`earnopt_assets.numerics.response.fit_response_curve`), earnings normalised to
   z = e / clip(a)**beta;
2. the last ``validation_hours`` are held out: origins whose 24 target hours end before them train,
   origins inside them validate;
3. base: the ETS peer's smoothing parameters fitted once on the last 4 weeks before validation (frozen,
   :mod:`.ets`), then per-horizon NNLS weights of the level x daily/weekly seasonal, weekly median and
   ETS components on the training origins (sample weighting and fit span chosen on validation; cheap); network: the seed LSTM learns the scaled base residual on the training origins of
   the last ``max_train_hours`` (the cost cap), early-stopped on the validation origins; an ensemble of
   ``ensemble_size`` seeds is averaged;
4. blend weight g in ``blend_grid``: the one with the lowest MAPE of 24 h forecasts (allocation held at
   the origin, as the headline scores it) over the validation origins (ties → the smaller g). g = 0 is
   the base alone: when the correction does not help on validation the model says so;
5. then the combination with a seasonal naive or the ETS forecast (``last_week``, ``median_4_weeks`` or ``ets``, weight c in
   ``blend_grid``) on the same validation origins (ties → smaller c, then ``last_week``; c = 0 = the model
   alone): see :func:`.forecast.combine_with_seasonal_naive`.

Forecasts are NumPy only (:mod:`earnopt_assets.forecasting.inference`); TensorFlow is imported only by
:meth:`fit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.forecasting.inference import Ensemble, export_keras_model
from earnopt_assets.forecasting.model.base import StatisticalBase, causal_fill, normalise
from earnopt_assets.forecasting.model.config import HORIZON_HOURS, ModelConfig
from earnopt_assets.forecasting.model.errors import (  # noqa: F401  (callers import the errors from here too)
    AllocationPathError,
    FeatureMismatchError,
    InsufficientHistoryError,
    MissingHoursError,
    ModelLoadError,
    ModelNotTrainedError,
    NonFiniteValuesError,
    SequenceValidationError,
)
from earnopt_assets.forecasting.model.ets import FrozenETS
from earnopt_assets.forecasting.model.forecast import (
    CHANNELS,
    COMBINATION_KINDS,
    LEVEL_FLOOR_FRACTION,
    FittedState,
    Tails,
    apply_ratio,
    build_tails,
    combine_with_seasonal_naive,
    direct_correction,
    forecast_z,
    held_future_allocation,
    min_history_hours,
    tail_hours,
    to_earnings,
    training_samples,
)

log = logging.getLogger(__name__)

HOUR_NS = 3_600_000_000_000


@dataclass
class HourlySeries:
    """One protocol's series on a contiguous hourly grid (NaN earnings = missing hour)."""

    ts: np.ndarray  # datetime64[ns], UTC-naive
    earnings: np.ndarray
    allocation: np.ndarray  # carried forward over missing hours; 1.0 where never known
    # True where the hour's earnings were spread over a collector gap (not measured); None: none known
    imputed: np.ndarray | None = None

    @property
    def epoch_hours(self) -> np.ndarray:
        return self.ts.astype("datetime64[ns]").astype(np.int64) // HOUR_NS


@dataclass
class TrainingHistory:
    """What a fit did: per-member Keras histories, seconds, the validation scores behind the blend weight."""

    loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    epochs_run: list[int] = field(default_factory=list)
    network_seconds: float = 0.0
    total_seconds: float = 0.0
    train_samples: int = 0
    validation_samples: int = 0
    blend: float = 0.0
    validation_mape: dict[str, float] = field(default_factory=dict)
    warm_started: bool = False
    naive_weight: float = 0.0  # combination weight of the seasonal naive, chosen after the blend
    naive_kind: str = "last_week"
    validation_mape_by_naive_weight: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def series_from_arrays(ts: np.ndarray, earnings: np.ndarray, allocation: np.ndarray | None, who: str) -> HourlySeries:
    """Sort, check (duplicates, hourly grid, infinities) and lay on a contiguous hourly grid."""
    ts_ns = np.asarray(ts).astype("datetime64[ns]").astype(np.int64)
    earnings = np.asarray(earnings, dtype=float)
    allocation = np.full(len(ts_ns), np.nan) if allocation is None else np.asarray(allocation, dtype=float)
    if len(ts_ns) == 0:
        raise InsufficientHistoryError(f"{who}: no rows")
    order = np.argsort(ts_ns, kind="stable")
    ts_ns, earnings, allocation = ts_ns[order], earnings[order], allocation[order]
    steps = np.diff(ts_ns)
    if (steps == 0).any():
        first = int(np.argmax(steps == 0)) + 1
        raise MissingHoursError(f"{who}: duplicate hour {pd.Timestamp(ts_ns[first])} (row {first})")
    if ((ts_ns - ts_ns[0]) % HOUR_NS != 0).any():
        first = int(np.argmax((ts_ns - ts_ns[0]) % HOUR_NS != 0))
        raise MissingHoursError(f"{who}: ts {pd.Timestamp(ts_ns[first])} (row {first}) is not on the hourly grid")
    for name, values in (("earnings_usd", earnings), ("allocation", allocation)):
        if np.isinf(values).any():
            row = int(np.argmax(np.isinf(values)))
            raise NonFiniteValuesError(f"{who}: infinite value in column {name!r} at {pd.Timestamp(ts_ns[row])} (row {row})")
    position = (ts_ns - ts_ns[0]) // HOUR_NS
    n = int(position[-1]) + 1
    grid_e = np.full(n, np.nan)
    grid_a = np.full(n, np.nan)
    grid_e[position] = earnings
    grid_a[position] = allocation
    if np.isfinite(grid_a).any():
        grid_a = causal_fill(grid_a)
    else:
        grid_a[:] = 1.0
    grid_ts = (ts_ns[0] + np.arange(n, dtype=np.int64) * HOUR_NS).astype("datetime64[ns]")
    return HourlySeries(grid_ts, grid_e, grid_a)


def series_from_frame(frame: pd.DataFrame, who: str) -> HourlySeries:
    for column in ("ts", "earnings_usd"):
        if column not in frame.columns:
            raise FeatureMismatchError(f"{who}: input has no {column!r} column (has {', '.join(map(str, frame.columns))})")
    ts = pd.DatetimeIndex(pd.to_datetime(frame["ts"]))
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    allocation = frame["allocation"].to_numpy(dtype=float) if "allocation" in frame.columns else None
    series = series_from_arrays(ts.as_unit("ns").to_numpy(), frame["earnings_usd"].to_numpy(dtype=float), allocation, who)
    if "imputed" in frame.columns:
        series.imputed = np.zeros(len(series.ts), dtype=bool)
        series.imputed[(ts.as_unit("ns").asi8 - series.ts[0].astype(np.int64)) // HOUR_NS] = frame["imputed"].fillna(False).to_numpy(dtype=bool)
    lags = [(c, k) for c, k in (("lag_168", 168), ("lag_24", 24), ("lag_2", 2), ("lag_1", 1)) if c in frame.columns]
    if not lags:
        return series
    # A feature table starts after its 168 h warm-up but its lag columns hold the earlier earnings
    # (lag_k at ts is the value at ts - k): recover them, the row's own value winning where both exist.
    hours = (ts.as_unit("ns").asi8 - series.ts[0].astype(np.int64)) // HOUR_NS + 168
    earnings = np.full(len(series.ts) + 168, np.nan)
    for column, k in lags:
        values = frame[column].to_numpy(dtype=float)
        known = np.isfinite(values)
        earnings[hours[known] - k] = values[known]
    earnings[168:][np.isfinite(series.earnings)] = series.earnings[np.isfinite(series.earnings)]
    first = int(np.argmax(np.isfinite(earnings))) if np.isfinite(earnings).any() else 168
    grid_ts = (series.ts[0].astype(np.int64) + np.arange(-168, len(series.ts)) * HOUR_NS).astype("datetime64[ns]")
    allocation_grid = np.concatenate([np.full(168, series.allocation[0]), series.allocation])
    # hours recovered from lag columns carry no flag: treated as measured
    imputed = None if series.imputed is None else np.concatenate([np.zeros(168, dtype=bool), series.imputed])[first:]
    return HourlySeries(grid_ts[first:], earnings[first:], allocation_grid[first:], imputed)


def mape_pct(actual: np.ndarray, predicted: np.ndarray) -> float | None:
    """Mean |a - p| / |a| in %, over finite pairs with a != 0 (zero actuals skipped, as the harness does)."""
    ok = np.isfinite(actual) & np.isfinite(predicted) & (actual != 0)
    if not ok.any():
        return None
    return float(np.mean(np.abs(actual[ok] - predicted[ok]) / np.abs(actual[ok])) * 100.0)


class EarningsPredictor:
    """One protocol's earnings model; see the module docstring. ``EarningsModel`` is the same class."""

    def __init__(self, protocol_name: str | ModelConfig, model_dir: str | Path | None = None, **settings: Any) -> None:
        if isinstance(protocol_name, ModelConfig):
            self.config = protocol_name.with_(**settings) if settings else protocol_name
        else:
            self.config = ModelConfig(protocol=protocol_name, **settings)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.state: FittedState | None = None
        self.network: Ensemble | None = None
        self.history: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.version: str | None = None
        self.trained_at: str | None = None
        self.training_seconds: float | None = None
        self.epochs_run: int | None = None
        self.training: TrainingHistory | None = None
        self.last_evaluation: pd.DataFrame | None = None
        self.keras_models: list[Any] = []  # the trained Keras networks (training process only; never saved)

    # ------------------------------------------------------------------ properties

    @property
    def protocol(self) -> str:
        return self.config.protocol

    @property
    def sequence_length(self) -> int:
        return self.config.sequence_length

    @property
    def required_history_hours(self) -> int:
        """Hours of history a forecast needs at least (one week of lags behind the input window)."""
        return min_history_hours(self.sequence_length)

    @property
    def tail_hours(self) -> int:
        """Hours a forecast reads at most; more history changes nothing."""
        return tail_hours(self.sequence_length)

    @property
    def is_fitted(self) -> bool:
        return self.state is not None and self.network is not None

    @property
    def allocation_beta(self) -> float | None:
        return None if self.state is None else self.state.allocation_beta

    @property
    def is_allocation_conditional(self) -> bool:
        return self.allocation_beta is not None

    @property
    def blend(self) -> float:
        return 0.0 if self.state is None else self.state.blend

    def parameter_count(self) -> int:
        return self.network.parameter_count() if self.network is not None else 0

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ModelNotTrainedError(f"{self.protocol}: no model; train or load first")

    # ------------------------------------------------------------------ training

    def fit(
        self,
        frame: pd.DataFrame,
        *,
        validation_hours: int | None = None,
        warm_start: EarningsPredictor | None = None,
        verbose: int = 0,
    ) -> TrainingHistory:
        """Fit base, beta, scalers, network(s) and the blend weight on ``frame`` (see the module docstring).

        ``warm_start``: a fitted model of the same architecture (the champion) whose weights initialise
        the networks instead of a random init. Nothing after ``frame``'s last hour is read.

        Hours flagged ``imputed`` in ``frame`` (earnings spread over a collector gap) are not observed
        targets: they are NaN in the base's NNLS targets (skipped), a network sample with one among its
        target hours is dropped, and they are neither in the allocation-response fit nor scored when the
        blend and naive weights are chosen. As inputs (lags, levels) they keep their value: the spread
        average is the best estimate of those hours.
        """
        from earnopt_assets.forecasting.model.network import train_network
        from earnopt_assets.numerics.response import fit_response_curve

        started = time.perf_counter()
        cfg = self.config
        series = series_from_frame(frame, self.protocol)
        n = len(series.ts)
        finite = np.isfinite(series.earnings)
        imputed = np.zeros(n, dtype=bool) if series.imputed is None else series.imputed
        L = cfg.sequence_length
        first_origin = min_history_hours(L) - 1
        # validation: the last hours, never trained on
        window = min(n, cfg.max_train_hours)
        val_hours = int(validation_hours or cfg.validation_hours or max(cfg.min_validation_hours, round(cfg.validation_fraction * window)))
        val_start = n - val_hours
        train_origins = np.arange(first_origin, val_start - HORIZON_HOURS)
        val_origins = np.arange(max(val_start - 1, first_origin), n - HORIZON_HOURS)
        if len(train_origins) < 48 or len(val_origins) < 1:
            raise InsufficientHistoryError(
                f"{self.protocol}: {n} hours with {val_hours} h validation leave {len(train_origins)} training origins "
                f"(need >= 48 after {first_origin + 1} h of lag history) and {len(val_origins)} validation origins"
            )
        if finite.sum() < 0.5 * n:
            raise MissingHoursError(f"{self.protocol}: {n - int(finite.sum())} of {n} hours have no earnings")

        train_part = slice(0, val_start)
        beta = response = None
        if "allocation" in frame.columns:
            ok = finite[train_part] & ~imputed[train_part] & np.isfinite(series.allocation[train_part])
            curve = fit_response_curve(series.allocation[train_part][ok], series.earnings[train_part][ok])
            beta, response = float(curve.beta), _json_safe(curve.to_dict())
        z_raw = normalise(series.earnings, series.allocation, beta)
        z = causal_fill(z_raw)
        z_target = np.where(imputed, np.nan, z_raw)  # what the losses see: imputed hours are not targets
        E = series.epoch_hours
        floor = max(LEVEL_FLOOR_FRACTION * float(np.nanmean(np.abs(z_raw[train_part]))), 1e-9)

        # base: NNLS per horizon on the training origins (targets = raw z of the 24 hours after each);
        # its sample weighting and fit span chosen on the validation origins
        def targets_of(origins: np.ndarray) -> np.ndarray:
            return z_target[origins[:, None] + np.arange(1, HORIZON_HOURS + 1)[None, :]]

        # the ETS peer's smoothing parameters, fitted once on the last 4 weeks before validation (frozen for serving)
        ets = FrozenETS.fit(z[:val_start]) if cfg.use_ets else None
        base = StatisticalBase.fit_by_validation(
            z[None, :], train_origins, targets_of(train_origins), val_origins, targets_of(val_origins), cfg.max_train_hours, ets=ets
        )
        C = len(CHANNELS)
        state = FittedState(base, beta, floor, np.zeros(C), np.ones(C), 0.0, 1.0, 1.0, response)

        net_origins = train_origins[train_origins >= val_start - cfg.max_train_hours][:: -1][:: cfg.sample_stride_hours][::-1]
        X_train, Y_train, _ = training_samples(z, z_target, series.allocation, E, net_origins, state, L, cfg.timezone, cfg.outputs)
        X_val, Y_val, kept_val = training_samples(z, z_target, series.allocation, E, val_origins, state, L, cfg.timezone, cfg.outputs)
        if len(X_train) < 32 or len(X_val) < 1:
            raise InsufficientHistoryError(f"{self.protocol}: {len(X_train)} training / {len(X_val)} validation samples with all target hours observed")
        flat = X_train.reshape(-1, C)
        state.channel_mean = flat.mean(axis=0)
        std = flat.std(axis=0)
        state.channel_std = np.where(std > 1e-9, std, 1.0)
        state.target_mean = float(Y_train.mean())
        state.target_std = float(Y_train.std()) if Y_train.std() > 1e-12 else 1.0
        scale = lambda X: ((X - state.channel_mean) / state.channel_std).astype(np.float32)  # noqa: E731
        target = lambda Y: ((Y - state.target_mean) / state.target_std).astype(np.float32)  # noqa: E731

        history = TrainingHistory(train_samples=len(X_train), validation_samples=len(X_val))
        members = []
        self.keras_models = []
        initial = _warm_weights(warm_start, cfg)
        history.warm_started = initial is not None
        for member in range(cfg.ensemble_size):
            fitted = train_network(
                cfg, scale(X_train), target(Y_train), scale(X_val), target(Y_val), cfg.seed + member,
                initial_weights=None if initial is None else initial[member % len(initial)], verbose=verbose,
            )
            self.keras_models.append(fitted.model)
            members.append(export_keras_model(fitted.model))
            history.loss.append(fitted.history.get("loss", []))
            history.val_loss.append(fitted.history.get("val_loss", []))
            history.epochs_run.append(fitted.epochs_run)
            history.network_seconds += fitted.seconds
        self.network = Ensemble(members)
        self.state = state

        # blend weight on the validation origins only (allocation held at each origin)
        tails = build_tails(z, series.allocation, E, kept_val, self.tail_hours)
        held = np.repeat(tails.A[:, -1:], HORIZON_HOURS, axis=1)
        actual = np.where(imputed, np.nan, series.earnings)[kept_val[:, None] + np.arange(1, HORIZON_HOURS + 1)[None, :]]
        scores: dict[str, float] = {}
        if cfg.head == "direct":  # one network pass; the blend weight only scales the log-ratio correction
            base_path, correction, eps = direct_correction(tails, state, self.network, sequence_length=L, timezone=cfg.timezone)
        for g in cfg.blend_grid:
            if cfg.head == "direct":
                path = apply_ratio(base_path, g * correction, eps)
            else:
                _, path = forecast_z(tails, state, self.network, head=cfg.head, sequence_length=L, timezone=cfg.timezone, future_allocation=held, blend=g)
            value = mape_pct(actual, to_earnings(path, held, beta))
            if value is not None:
                scores[f"{g:g}"] = value
        if scores:
            best = min(scores.values())
            state.blend = min(float(g) for g, m in scores.items() if m <= best + 1e-9)
        state.validation_scores = scores
        history.blend = state.blend
        history.validation_mape = scores

        # then the weight c of the seasonal naive in the combination, on the same validation origins
        if cfg.head == "direct":
            chosen = apply_ratio(base_path, state.blend * correction, eps)
        else:
            _, chosen = forecast_z(tails, state, self.network, head=cfg.head, sequence_length=L, timezone=cfg.timezone, future_allocation=held, naive_weight=0.0)
        naive_scores: dict[str, float] = {}
        options: list[tuple[float, int, str, float]] = []  # (MAPE, kind order, kind, c): ties -> smaller c, last_week
        kinds = [k for k in COMBINATION_KINDS if k != "ets" or state.base.ets is not None]
        for order, kind in enumerate(kinds):
            for c in cfg.blend_grid:
                value = mape_pct(actual, to_earnings(combine_with_seasonal_naive(chosen, tails, c, kind, state.base.ets), held, beta))
                if value is not None:
                    naive_scores[f"{kind} {c:g}"] = value
                    options.append((round(value, 9), order, kind, float(c)))
        if options:
            best = min(o[0] for o in options)
            _, _, kind, c = min((o for o in options if o[0] <= best + 1e-9), key=lambda o: (o[3], o[1]))
            state.naive_weight, state.naive_kind = c, kind
        history.naive_weight = state.naive_weight
        history.naive_kind = state.naive_kind
        history.validation_mape_by_naive_weight = naive_scores
        history.total_seconds = time.perf_counter() - started

        self.training = history
        self.history = {"loss": history.loss[0], "val_loss": history.val_loss[0]}
        self.epochs_run = history.epochs_run[0]
        self.training_seconds = history.total_seconds
        self.trained_at = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        self.metrics, self.last_evaluation = {}, None
        log.info(
            "%s fitted in %.1fs (network %.1fs, %d samples, epochs %s): blend %.2f, validation MAPE by blend %s, seasonal naive %s weight %.2f",
            self.protocol, history.total_seconds, history.network_seconds, len(X_train), history.epochs_run, state.blend, scores, state.naive_kind, state.naive_weight,
        )
        return history

    def train(self, df: pd.DataFrame, *_, verbose: int = 0, **__) -> dict[str, Any]:
        """:meth:`fit` with the config's settings (older call sites); returns the history dict."""
        self.fit(df, verbose=verbose)
        return self.history

    # ------------------------------------------------------------------ allocation

    def allocation_scale(self, target: np.ndarray | float, reference: np.ndarray | float) -> np.ndarray:
        """(clip(a_target) / clip(a_ref))**beta with shares clipped to [ALLOCATION_FLOOR, 1]; 1 without beta."""
        from earnopt_assets.forecasting.model.base import allocation_factor

        return allocation_factor(np.asarray(target, dtype=float), self.allocation_beta) / allocation_factor(
            np.asarray(reference, dtype=float), self.allocation_beta
        )

    def resolve_allocation_path(self, allocation_tail: np.ndarray, allocation_path: Sequence[float] | float | np.ndarray | None, horizon: int = HORIZON_HOURS) -> np.ndarray:
        """The share of each future hour: ``allocation_path`` checked (a scalar is held), or the last share held."""
        if allocation_path is None:
            return held_future_allocation(np.asarray(allocation_tail, dtype=float), None)
        try:
            path = np.asarray(allocation_path, dtype=float)
        except (TypeError, ValueError) as exc:
            raise AllocationPathError(f"{self.protocol}: allocation path is not numeric: {exc}") from exc
        if path.ndim == 0:
            path = np.full(horizon, float(path))
        if path.shape != (horizon,):
            raise AllocationPathError(f"{self.protocol}: allocation path needs {horizon} hourly values, got shape {path.shape}")
        bad = ~np.isfinite(path) | (path < 0.0) | (path > 1.0)
        if bad.any():
            first = int(np.argmax(bad))
            raise AllocationPathError(f"{self.protocol}: allocation path value {path[first]!r} at hour {first + 1} is not a share in [0, 1]")
        return path

    # ------------------------------------------------------------------ forecasting (NumPy only)

    def tails_from_series(self, series_list: Sequence[HourlySeries], *, strict: bool) -> Tails:
        """Per-origin tails of the last :attr:`tail_hours` hours (origin = each series' last hour)."""
        self._require_fitted()
        T = self.tail_hours
        need = self.required_history_hours
        Z = np.full((len(series_list), T), np.nan)
        A = np.ones((len(series_list), T))
        E = np.empty((len(series_list), T), dtype=np.int64)
        L = self.sequence_length
        for i, s in enumerate(series_list):
            if len(s.ts) < need:
                raise InsufficientHistoryError(
                    f"{self.protocol}: {len(s.ts)} hours of history up to {pd.Timestamp(s.ts[-1])}, need {need} "
                    f"(window {L} + {need - L} h of lags)"
                )
            if strict and not np.isfinite(s.earnings[-L:]).all():
                first = int(np.argmax(~np.isfinite(s.earnings[-L:])))
                raise MissingHoursError(
                    f"{self.protocol}: earnings missing at {pd.Timestamp(s.ts[-L + first])} inside the {L} h input window"
                )
            if not np.isfinite(s.earnings).any():
                raise MissingHoursError(f"{self.protocol}: no observed earnings in the history")
            z = causal_fill(normalise(s.earnings, s.allocation, self.allocation_beta))[-T:]
            Z[i, T - len(z) :] = z
            a = s.allocation[-T:]
            A[i, T - len(a) :] = a
            A[i, : T - len(a)] = a[0]
            E[i] = s.epoch_hours[-1] + np.arange(-T + 1, 1)
        return Tails(Z, A, E)

    def forecast_series(self, series_list: Sequence[HourlySeries], paths: Sequence[np.ndarray | None] | None = None, *, strict: bool = True) -> np.ndarray:
        """(n, 24) forecasts of the hours after each series' last hour, in one vectorised pass."""
        if not series_list:
            return np.empty((0, HORIZON_HOURS))
        tails = self.tails_from_series(series_list, strict=strict)
        paths = list(paths) if paths is not None else [None] * len(series_list)
        future = np.stack([self.resolve_allocation_path(s.allocation, p) for s, p in zip(series_list, paths)])
        # Small GEMMs: BLAS worker threads only add synchronisation (measured 35 -> 20 ms per forecast and
        # 42 -> 5 ms per origin in batches of 32 on the shared 2-core host).
        with _blas_controller().limit(limits=1, user_api="blas"):
            _, z_path = forecast_z(
                tails, self.state, self.network, head=self.config.head, sequence_length=self.sequence_length,
                timezone=self.config.timezone, future_allocation=future,
            )
        return to_earnings(z_path, future, self.allocation_beta)

    def base_forecast_series(self, series_list: Sequence[HourlySeries], paths: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """The statistical base alone (blend 0) for the same origins: the model's own fallback/diagnostic."""
        tails = self.tails_from_series(series_list, strict=False)
        paths = list(paths) if paths is not None else [None] * len(series_list)
        future = np.stack([self.resolve_allocation_path(s.allocation, p) for s, p in zip(series_list, paths)])
        base_path, _ = forecast_z(tails, self.state, None, head=self.config.head, sequence_length=self.sequence_length, timezone=self.config.timezone, future_allocation=future)
        return to_earnings(base_path, future, self.allocation_beta)

    def predict_next_24h(self, recent_data: pd.DataFrame, allocation_path: Sequence[float] | float | np.ndarray | None = None) -> np.ndarray:
        """The 24 hours after the last row of ``recent_data`` (any frame with ``ts``, ``earnings_usd`` and
        optionally ``allocation``: telemetry or the feature table). ``allocation_path``: the share of each
        future hour (or one share for all); None holds the last observed share. Never negative or NaN."""
        self._require_fitted()
        series = series_from_frame(recent_data, self.protocol)
        return self.forecast_series([series], [allocation_path])[0]

    def forecast_frame(self, recent_data: pd.DataFrame, allocation_path: Sequence[float] | float | np.ndarray | None = None) -> pd.DataFrame:
        """:meth:`predict_next_24h` with ``target_ts``, ``horizon_hours``, ``value``, ``allocation`` columns."""
        self._require_fitted()
        series = series_from_frame(recent_data, self.protocol)
        path = self.resolve_allocation_path(series.allocation, allocation_path)
        values = self.forecast_series([series], [path])[0]
        origin = pd.Timestamp(series.ts[-1])
        return pd.DataFrame(
            {
                "target_ts": pd.date_range(origin + pd.Timedelta(hours=1), periods=HORIZON_HOURS, freq="h"),
                "horizon_hours": np.arange(1, HORIZON_HOURS + 1),
                "value": values,
                "allocation": path,
            }
        )

    def forecaster(self) -> Callable[[Any], np.ndarray]:
        """A :data:`earnopt_assets.forecasting.candidates.Forecaster`: OriginContext → (24,) forecast.
        Gaps in the history are filled causally; ``planned_allocation`` None holds the origin's share."""
        batch = self.batch_forecaster()
        return lambda ctx: batch([ctx])[0]

    def batch_forecaster(self) -> Callable[[Sequence[Any]], np.ndarray]:
        """Many OriginContexts → (n, 24) in one vectorised NumPy pass (what the harness calls)."""
        self._require_fitted()

        def run(contexts: Sequence[Any]) -> np.ndarray:
            series = [
                series_from_arrays(np.asarray(c.ts)[-self.tail_hours :], np.asarray(c.earnings)[-self.tail_hours :], np.asarray(c.allocation)[-self.tail_hours :], self.protocol)
                if len(c.ts) >= self.required_history_hours
                else _too_short(self, c)
                for c in contexts
            ]
            paths = [None if c.planned_allocation is None else np.asarray(c.planned_allocation, dtype=float) for c in contexts]
            return self.forecast_series(series, paths, strict=False)

        return run

    # ------------------------------------------------------------------ evaluation & persistence

    def evaluate(self, test_df: pd.DataFrame, context: pd.DataFrame | None = None, *, condition_on_allocation: bool = True) -> dict[str, Any]:
        from earnopt_assets.forecasting.model.evaluation import evaluate

        return evaluate(self, test_df, context, condition_on_allocation=condition_on_allocation)

    def save(self, store: Any = None, extra_metadata: Mapping[str, Any] | None = None, *, promote: bool = False) -> Path:
        from earnopt_assets.forecasting.model.persistence import save_model

        return save_model(self, store, extra_metadata, promote=promote)

    @classmethod
    def load(cls, model_dir: str | Path, protocol: str, version: str | None = None) -> EarningsPredictor:
        from earnopt_assets.forecasting.model.persistence import load_model

        return load_model(cls, model_dir, protocol, version)


EarningsModel = EarningsPredictor


_BLAS = None


def _blas_controller():
    """One threadpoolctl controller per process (discovering the BLAS libraries costs ~15 ms)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS


def _too_short(model: EarningsPredictor, ctx: Any) -> HourlySeries:
    raise InsufficientHistoryError(f"{model.protocol}: {len(ctx.ts)} hours of history, need {model.required_history_hours}")


def _warm_weights(warm_start: EarningsPredictor | None, cfg: ModelConfig) -> list[list[np.ndarray]] | None:
    """Keras-ordered weight lists of the champion's members, when its architecture matches."""
    if warm_start is None or warm_start.network is None:
        return None
    wc = warm_start.config
    if (wc.head, wc.sequence_length, wc.lstm_units) != (cfg.head, cfg.sequence_length, cfg.lstm_units):
        log.info("%s: champion architecture differs; training from a random init", cfg.protocol)
        return None
    out = []
    for member in warm_start.network.members:
        arrays: list[np.ndarray] = []
        for spec, w in zip(member.layers, member.weights):
            names = ("kernel", "recurrent_kernel", "bias") if spec["type"] == "lstm" else ("kernel", "bias")
            arrays.extend(w[name].astype(np.float32) for name in names)
        out.append(arrays)
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if np.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
