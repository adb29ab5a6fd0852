"""The service's view of the forecasting models, all through the versioned model store.

``<models>/lstm/<protocol>/CURRENT`` and ``versions/<version>/`` belong to
:class:`earnopt_assets.modelstore.ModelStore` (via :mod:`earnopt_assets.forecasting.model.persistence`);
the service never reads the pointer by hand. Loading is NumPy only: TensorFlow is never imported here.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAPE_CHECK_KEYS = ("mape_check",)


def _store(models_dir: Path):
    from earnopt_assets.forecasting.model.persistence import model_store

    return model_store(models_dir)


def model_fingerprint(models_dir: Path, protocol: str) -> tuple | None:
    """Changes whenever CURRENT moves or the current version's files are rewritten; None without a model."""
    store = _store(models_dir)
    fingerprint = store.fingerprint(protocol)
    if fingerprint is None:
        return None
    # The MAPE check / serving decision is written into metadata.json after the save: refresh on it too.
    try:
        meta_mtime = (store.path(protocol, fingerprint[0]) / "metadata.json").stat().st_mtime_ns
    except OSError:
        meta_mtime = None
    return (*fingerprint, meta_mtime)


def load_predictor(models_dir: Path, protocol: str) -> Any:
    """The CURRENT model of ``protocol`` (NumPy inference; checksums verified by the loader)."""
    from earnopt_assets.forecasting.model.predictor import EarningsPredictor

    return EarningsPredictor.load(models_dir, protocol)


def batched_forecaster(predictor: Any) -> Any:
    """The micro-batching front of a loaded model (one vectorised NumPy pass per batch)."""
    from earnopt_assets.forecasting.batch import BatchedForecaster

    return BatchedForecaster(predictor)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_metadata(models_dir: Path, protocol: str, version: str) -> dict[str, Any]:
    try:
        data = json.loads((_store(models_dir).path(protocol, version) / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mape_check(metadata: dict[str, Any], metrics: dict[str, Any]) -> tuple[bool | None, float | None]:
    """(passed, threshold) of the MAPE check recorded with the model at training time, if any."""
    for key in MAPE_CHECK_KEYS:
        value = metadata.get(key)
        if isinstance(value, dict):
            passed = value.get("passed")
            threshold = value.get("threshold", value.get("mape_threshold"))
            return (bool(passed) if passed is not None else None, float(threshold) if isinstance(threshold, (int, float)) else None)
        if isinstance(value, bool):
            return value, metadata.get("mape_threshold")
    if isinstance(metadata.get("passed_mape_check"), bool):
        return metadata["passed_mape_check"], metadata.get("mape_threshold")
    return None, None


def describe(predictor: Any) -> dict[str, Any]:
    """Version, training time and saved metadata of a loaded predictor."""
    metadata = read_metadata(Path(predictor.model_dir), predictor.protocol, predictor.version) if predictor.version else {}
    return {
        "version": predictor.version,
        "trained_at": _parse_time(predictor.trained_at) or _parse_time(metadata.get("trained_at")),
        "metadata": metadata,
    }


def history_summary(history: dict[str, list[float]], epochs_run: int | None, training_seconds: float | None) -> dict[str, Any]:
    """Epochs, final and best losses of a training history (JSON-safe)."""

    def clean(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    summary: dict[str, Any] = {"epochs_run": epochs_run, "training_seconds": training_seconds}
    for key, values in sorted(history.items()):
        if not values:
            continue
        summary[f"final_{key}"] = clean(float(values[-1]))
        if "loss" in key or "mae" in key or "mape" in key:
            best = min(range(len(values)), key=lambda i: values[i])
            summary[f"best_{key}"] = clean(float(values[best]))
            summary[f"best_{key}_epoch"] = best + 1
    return summary
