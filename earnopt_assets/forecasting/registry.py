"""The model store seen without TensorFlow: which version is current, its metrics and its MAPE check.

Layout (owned by :class:`earnopt_assets.forecasting.predictor.EarningsPredictor`)::

    <models>/<protocol>/CURRENT                      name of the current version
    <models>/<protocol>/versions/<version>/          model.keras + config/scaler/history/metrics/metadata JSON

The MAPE check result lives in ``metadata.json`` under ``mape_check`` (``passed``, ``threshold``,
``reasons``, ``checked_at``); the forecast asset and the retrain sensor read it from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.forecasting.predictor import better_baseline, current_version, model_root

DEFAULT_MAPE_TARGET_PCT = 15.0


@dataclass(frozen=True)
class MapeCheckOutcome:
    """Passes when holdout MAPE < target AND model MAPE <= the better seasonal-naive baseline's MAPE."""

    passed: bool
    model_mape: float | None
    baseline: str
    baseline_mape: float | None
    threshold: float
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model_mape": self.model_mape,
            "baseline": self.baseline,
            "baseline_mape": self.baseline_mape,
            "threshold": self.threshold,
            "reasons": list(self.reasons),
            "checked_at": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def judge_mape(metrics: Mapping[str, Any], threshold_pct: float = DEFAULT_MAPE_TARGET_PCT) -> MapeCheckOutcome:
    """Apply the ``mape_within_target`` rule to an evaluation (see :meth:`EarningsPredictor.evaluate`)."""
    model_mape = (metrics.get("model") or {}).get("mape")
    baseline = better_baseline(metrics)
    baseline_mape = (metrics.get(baseline) or {}).get("mape")
    reasons: list[str] = []
    if model_mape is None:
        reasons.append("no holdout MAPE (no usable holdout hours or every actual was 0)")
    else:
        if not model_mape < threshold_pct:
            reasons.append(f"holdout MAPE {model_mape:.2f}% is not below the {threshold_pct:g}% target")
        if baseline_mape is not None and model_mape > baseline_mape:
            reasons.append(f"holdout MAPE {model_mape:.2f}% is worse than {baseline} ({baseline_mape:.2f}%)")
    return MapeCheckOutcome(
        passed=not reasons,
        model_mape=None if model_mape is None else float(model_mape),
        baseline=baseline,
        baseline_mape=None if baseline_mape is None else float(baseline_mape),
        threshold=float(threshold_pct),
        reasons=tuple(reasons),
    )


def version_dir(models_dir: str | Path, protocol: str, version: str) -> Path:
    if "/" in version or version.startswith("."):
        raise ValueError(f"invalid model version {version!r}")
    return model_root(models_dir, protocol) / "versions" / version


def read_model_summary(models_dir: str | Path, protocol: str) -> dict[str, Any] | None:
    """``metadata.json`` of the current version merged with ``metrics``; None when there is no model.

    Reads JSON only (no TensorFlow): cheap enough for sensors and the allocation tick.
    """
    version = current_version(models_dir, protocol)
    if version is None:
        return None
    directory = version_dir(models_dir, protocol, version)
    try:
        metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {**metadata, "version": version, "metrics": metrics}


def record_mape_check(models_dir: str | Path, protocol: str, version: str, outcome: MapeCheckOutcome) -> Path:
    """Store the check result in the version's ``metadata.json`` (atomic rewrite)."""
    path = version_dir(models_dir, protocol, version) / "metadata.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["mape_check"] = outcome.to_json()
    return atomic_write_json(path, metadata)


def check_passed(summary: Mapping[str, Any] | None) -> bool | None:
    """True/False once the check has run on this version, None before."""
    if not summary:
        return None
    check = summary.get("mape_check")
    if isinstance(check, Mapping) and isinstance(check.get("passed"), bool):
        return bool(check["passed"])
    return None
