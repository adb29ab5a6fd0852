"""The service's view of the forecasting package's model store (``earnopt_assets.forecasting.predictor``).

Kept in one place so the service never guesses file layouts: the predictor owns ``<models>/<protocol>/
CURRENT`` and ``versions/<version>/`` (model.keras, config/scaler/history/metrics/metadata JSON). Keras is
only imported when a model is actually loaded.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAPE_CHECK_KEYS = ("mape_check",)


def model_fingerprint(protocol_dir: Path) -> tuple | None:
    """Changes whenever a new version is saved (the predictor replaces ``CURRENT`` atomically last)."""
    pointer = protocol_dir / "CURRENT"
    try:
        stat = pointer.stat()
        version = pointer.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not version or "/" in version or version.startswith("."):
        return None
    # The MAPE check is written into metadata.json after the save: a change there refreshes the entry too.
    try:
        meta_mtime = (protocol_dir / "versions" / version / "metadata.json").stat().st_mtime_ns
    except OSError:
        meta_mtime = None
    return (version, stat.st_mtime_ns, meta_mtime)


def load_predictor(protocol_dir: Path) -> Any:
    from earnopt_assets.forecasting.predictor import EarningsPredictor

    predictor = EarningsPredictor.load(protocol_dir.parent, protocol_dir.name)
    warm_up(predictor)
    return predictor


def warm_up(predictor: Any) -> None:
    """Trace the compiled forward pass once at load time, so the first request does not pay for it."""
    import numpy as np

    call = predictor._compiled_call()
    call(np.zeros((1, predictor.sequence_length, predictor.n_channels), dtype=np.float32))


def batched_forecaster(predictor: Any) -> Any:
    """The micro-batching front of a loaded predictor, every batch size compiled now (at load, not per
    request)."""
    from earnopt_assets.forecasting.batch import BatchedForecaster

    forecaster = BatchedForecaster(predictor)
    forecaster.warm_up()
    return forecaster


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def read_metadata(protocol_dir: Path, version: str) -> dict[str, Any]:
    try:
        data = json.loads((protocol_dir / "versions" / version / "metadata.json").read_text(encoding="utf-8"))
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
    protocol_dir = Path(predictor.model_dir) / predictor.protocol
    metadata = read_metadata(protocol_dir, predictor.version) if predictor.version else {}
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
