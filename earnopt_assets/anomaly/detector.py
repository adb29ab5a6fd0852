"""IsolationForest anomaly detector over per-series detection features.

Detection features (per series, hourly grid; notation of :mod:`earnopt_assets.anomaly.series`):

=======================  ============================================================================
feature                  formula
=======================  ============================================================================
earnings_dev_24h         (x_t - m_t) / (m_t + eps), m_t = mean(x_{t-24..t-1}) (relative deviation from
                         the 24 h moving average of allocation-adjusted earnings), clipped to [-1, 5]
earnings_vs_last_week    (x_t - x_{t-168}) / ((|x_t| + |x_{t-168}|)/2 + eps)  in [-2, 2]
(compute protocols)      both earnings features use m_t = x_{t-168} = B_t, the median hour of the
                         trailing week in the same busy/idle (leased/unleased) state as t
resource_zscore          max_r (v_{r,t} - mean_r) / max(std_r, 0.1*|mean_r|, eps): activity z-score vs the
                         trailing 7 days (std floored at 10 % of the mean so steady resources do not
                         fire on noise), clipped to [-10, 50]
failure_rate             log(1 + connection_failures_t)  (failures in the last hour)
=======================  ============================================================================

Rows whose features cannot be computed yet (first week, gaps) are left out of fitting; at scoring time
missing features take their neutral value (0) so a recent hour is still scored.

Persistence (the shared :class:`earnopt_assets.modelstore.ModelStore`, kind ``detector``): a version
directory ``<dir>/detector/isolation_forest/versions/<version>/`` holds ``model.skops`` (skops, loaded with
an explicit allow-list of types) and ``metadata.json`` (feature list, training window, contamination,
sha256 of the model file); it is staged and renamed into place, then ``CURRENT`` is replaced
atomically last, so a crash mid-save leaves the previous model in use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earnopt_assets.anomaly.series import RESOURCES, SeriesContext, iter_series, trailing_stats
from earnopt_assets.atomic import atomic_write_bytes, atomic_write_json
from earnopt_assets.catalog import ProtocolKind, ProtocolSpec
from earnopt_assets.ingestion.features import lag, rolling_mean
from earnopt_assets.modelstore import ModelStore

DETECTION_FEATURES: tuple[str, ...] = ("earnings_dev_24h", "earnings_vs_last_week", "resource_zscore", "failure_rate")
FORMAT_VERSION = 1
MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
# Versions live in the shared model store: <dir>/detector/isolation_forest/{CURRENT, versions/<version>/}.
DETECTOR_KIND = "detector"
DETECTOR_NAME = "isolation_forest"
KEEP_VERSIONS = 3
EPS = 1e-9
# The fit needs this many complete feature rows; a row is complete once its series has a week of history.
MIN_TRAINING_ROWS = 50
MIN_RELATIVE_STD = 0.1
# The only non-default type an IsolationForest needs; anything else in the file is refused.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({"sklearn.tree._tree.Tree"})


def detector_store(directory: str | Path) -> ModelStore:
    """The versioned store of the detector under ``directory`` (the service and the asset share it)."""
    return ModelStore(directory, DETECTOR_KIND)


class DetectorError(ValueError):
    """A detector file that is missing, corrupt or does not match what this code expects."""


def resource_zscore(ctx: SeriesContext, min_relative_std: float = MIN_RELATIVE_STD) -> tuple[np.ndarray, np.ndarray]:
    """Per hour: the largest activity z-score over resources and the index of that resource (-1 if none)."""
    rows: list[np.ndarray] = []
    for resource in RESOURCES:
        v = ctx.activity(resource)
        mean, std = trailing_stats(v, 168)
        floor = np.maximum(min_relative_std * np.abs(mean), EPS)
        with np.errstate(invalid="ignore"):
            rows.append((v - mean) / np.maximum(std, floor))
    stacked = np.vstack(rows)
    finite = np.isfinite(stacked)
    best = np.where(finite, stacked, -np.inf).max(axis=0)
    which = np.where(finite.any(axis=0), np.where(finite, stacked, -np.inf).argmax(axis=0), -1)
    return np.where(np.isfinite(best), best, np.nan), which


def series_detection_features(ctx: SeriesContext) -> pd.DataFrame:
    """The detection features of one series, one row per grid hour (NaN where not computable)."""
    x = ctx.adjusted_earnings
    if ctx.spec.kind is ProtocolKind.compute:
        # Lease-paid: compare with the median hour of the trailing week in the same (busy/idle) state.
        ma = week = ctx.same_hour_baseline
    else:
        ma = lag(rolling_mean(x, 24), 1)
        week = lag(x, 168)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = np.clip((x - ma) / (ma + EPS), -1.0, 5.0)
        vs_week = (x - week) / ((np.abs(x) + np.abs(week)) / 2.0 + EPS)
    z, _ = resource_zscore(ctx)
    frame = pd.DataFrame(
        {
            "device": ctx.device,
            "protocol": ctx.protocol,
            "ts": ctx.ts,
            "earnings_dev_24h": dev,
            "earnings_vs_last_week": vs_week,
            "resource_zscore": np.clip(z, -10.0, 50.0),
            "failure_rate": np.log1p(np.clip(ctx.failures, 0, None)),
        }
    )
    return frame.loc[ctx.observed].reset_index(drop=True)


def detection_features(telemetry: pd.DataFrame, specs: dict[str, ProtocolSpec], elasticity: float = 0.6) -> pd.DataFrame:
    """Detection features for every series of raw telemetry (observed hours only)."""
    parts = [series_detection_features(ctx) for ctx in iter_series(telemetry, specs, elasticity=elasticity, extend_to_device_end=False)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("device", "protocol", "ts", *DETECTION_FEATURES)})
    return pd.concat(parts, ignore_index=True)


@dataclass
class TrainingWindow:
    start: str | None
    end: str | None
    rows: int


class AnomalyDetector:
    """IsolationForest over :data:`DETECTION_FEATURES`; lower ``decision_function`` = more anomalous.

    ``fit``/``predict``/``decision_function`` take a frame holding the detection feature columns (see
    :func:`detection_features` to compute them from raw telemetry).
    """

    def __init__(self, contamination: float = 0.1, n_estimators: int = 200, max_samples: int | str = 512,
                 random_state: int = 42) -> None:
        if not 0 < contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {contamination}")
        self.contamination = float(contamination)
        self.n_estimators = int(n_estimators)
        self.max_samples = max_samples
        self.random_state = int(random_state)
        self.features: tuple[str, ...] = DETECTION_FEATURES
        self.model: Any = None
        self.training_window = TrainingWindow(None, None, 0)
        self.version: str | None = None

    # ------------------------------------------------------------------ data
    def _matrix(self, df: pd.DataFrame, *, for_fit: bool) -> np.ndarray:
        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise ValueError(f"detector input lacks feature columns: {', '.join(missing)}")
        values = df[list(self.features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        if for_fit:
            return values
        return np.where(np.isfinite(values), values, 0.0)

    @staticmethod
    def complete_rows(df: pd.DataFrame) -> np.ndarray:
        values = df[list(DETECTION_FEATURES)].to_numpy(dtype=float)
        return np.isfinite(values).all(axis=1)

    # ------------------------------------------------------------------ API
    def fit(self, df: pd.DataFrame) -> AnomalyDetector:
        """Fit on the rows whose features are all finite. Needs at least 50 such rows."""
        from sklearn.ensemble import IsolationForest

        values = self._matrix(df, for_fit=True)
        keep = np.isfinite(values).all(axis=1)
        if keep.sum() < MIN_TRAINING_ROWS:
            raise ValueError(f"need at least {MIN_TRAINING_ROWS} complete feature rows to fit the detector, got {int(keep.sum())}")
        model = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, int(keep.sum())) if isinstance(self.max_samples, int) else self.max_samples,
            contamination=self.contamination,
            random_state=self.random_state,
        )
        model.fit(values[keep])
        self.model = model
        if "ts" in df.columns and keep.any():
            ts = pd.to_datetime(df.loc[keep, "ts"])
            self.training_window = TrainingWindow(ts.min().isoformat(), ts.max().isoformat(), int(keep.sum()))
        else:
            self.training_window = TrainingWindow(None, None, int(keep.sum()))
        self.version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self

    def _require_fitted(self) -> None:
        if self.model is None:
            raise RuntimeError("AnomalyDetector is not fitted; call fit() or load() first")

    def decision_function(self, df: pd.DataFrame) -> np.ndarray:
        """score_samples - offset: below 0 is an outlier at the fitted contamination."""
        self._require_fitted()
        if len(df) == 0:
            return np.zeros(0)
        return self.model.decision_function(self._matrix(df, for_fit=False))

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean flag per row: True = anomalous."""
        return self.decision_function(df) < 0

    # ------------------------------------------------------------------ persistence
    def metadata(self, model_sha256: str) -> dict[str, Any]:
        import sklearn

        return {
            "format_version": FORMAT_VERSION,
            "kind": "isolation_forest",
            "version": self.version,
            "features": list(self.features),
            "contamination": self.contamination,
            "n_estimators": self.n_estimators,
            "random_state": self.random_state,
            "offset": float(self.model.offset_),
            "training_window": {
                "start": self.training_window.start,
                "end": self.training_window.end,
                "rows": self.training_window.rows,
            },
            "sklearn_version": sklearn.__version__,
            "model_file": MODEL_FILE,
            "model_sha256": model_sha256,
            "saved_at": datetime.now(UTC).isoformat(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write a new version under ``directory/versions`` and point ``latest.json`` at it (atomically)."""
        import skops.io as sio

        self._require_fitted()
        store = detector_store(directory)
        payload = sio.dumps(self.model)
        digest = hashlib.sha256(payload).hexdigest()
        with store.stage(DETECTOR_NAME, version=str(self.version)) as staged:
            atomic_write_bytes(staged / MODEL_FILE, payload)
            atomic_write_json(staged / METADATA_FILE, self.metadata(digest))
        store.promote(DETECTOR_NAME, staged.version)
        store.prune(DETECTOR_NAME, keep=KEEP_VERSIONS)
        return staged.path

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyDetector:
        """Load the version ``latest.json`` names, validating every part before trusting it."""
        import skops.io as sio

        store = detector_store(directory)
        pointer = store.model_dir(DETECTOR_NAME) / "CURRENT"
        if not pointer.exists():
            raise FileNotFoundError(f"no anomaly detector saved under {directory} (missing {pointer})")
        version = store.current(DETECTOR_NAME)
        if version is None:
            raise DetectorError(f"{pointer}: missing or not a plain version name")
        version_dir = store.path(DETECTOR_NAME, version)
        meta = _read_json(version_dir / METADATA_FILE)
        _validate_metadata(meta, version_dir / METADATA_FILE)
        model_path = version_dir / MODEL_FILE
        try:
            payload = model_path.read_bytes()
        except OSError as exc:
            raise DetectorError(f"cannot read {model_path}: {exc.strerror or exc}") from None
        if hashlib.sha256(payload).hexdigest() != meta["model_sha256"]:
            raise DetectorError(f"{model_path}: sha256 does not match metadata (corrupt or replaced file)")
        untrusted = set(sio.get_untrusted_types(data=payload))
        unexpected = untrusted - TRUSTED_SKOPS_TYPES
        if unexpected:
            raise DetectorError(f"{model_path}: refuses to load untrusted types {sorted(unexpected)}")
        model = sio.loads(payload, trusted=sorted(untrusted))
        from sklearn.ensemble import IsolationForest

        if not isinstance(model, IsolationForest):
            raise DetectorError(f"{model_path}: holds {type(model).__name__}, expected IsolationForest")
        if int(getattr(model, "n_features_in_", -1)) != len(meta["features"]):
            raise DetectorError(f"{model_path}: model has {getattr(model, 'n_features_in_', '?')} features, metadata lists {len(meta['features'])}")
        detector = cls(contamination=meta["contamination"], n_estimators=meta["n_estimators"], random_state=meta["random_state"])
        detector.model = model
        detector.version = version
        window = meta["training_window"]
        detector.training_window = TrainingWindow(window.get("start"), window.get("end"), int(window.get("rows", 0)))
        return detector


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DetectorError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DetectorError(f"{path}: expected a JSON object")
    return data


def _validate_metadata(meta: dict[str, Any], path: Path) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise DetectorError(f"{path}: field 'format_version' is {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if meta.get("kind") != "isolation_forest":
        raise DetectorError(f"{path}: field 'kind' is {meta.get('kind')!r}, expected 'isolation_forest'")
    if meta.get("features") != list(DETECTION_FEATURES):
        raise DetectorError(f"{path}: field 'features' {meta.get('features')!r} does not match this code's {list(DETECTION_FEATURES)}")
    contamination = meta.get("contamination")
    if not isinstance(contamination, (int, float)) or not 0 < contamination <= 0.5:
        raise DetectorError(f"{path}: field 'contamination' must be a number in (0, 0.5]")
    for name in ("n_estimators", "random_state"):
        if not isinstance(meta.get(name), int):
            raise DetectorError(f"{path}: field {name!r} must be an integer")
    if not isinstance(meta.get("training_window"), dict):
        raise DetectorError(f"{path}: field 'training_window' must be an object")
    digest = meta.get("model_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise DetectorError(f"{path}: field 'model_sha256' must be a sha256 hex digest")
