"""Shared helpers of the forecasting tests (not collected: no test_ prefix)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from earnopt_assets.catalog import Catalog
from earnopt_assets.forecasting.model.predictor import EarningsPredictor
from earnopt_assets.ingestion.features import build_feature_table
from earnopt_assets.simulator import simulate

END = "2026-06-30T23:00"
TINY = {"sequence_length": 24, "lstm_units": (8, 4), "epochs": 2, "batch_size": 64, "min_validation_hours": 48, "train_threads": 2}


def simulated(catalog: Catalog, protocols: list[str], days: int = 21, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(telemetry, feature table) of ``days`` simulated days for ``protocols``."""
    sim = simulate(catalog, days=days, seed=seed, end=END, protocols=protocols)
    features, _ = build_feature_table(sim.telemetry, catalog.host.totals(), catalog.host.timezone)
    return sim.telemetry, features


def tiny_predictor(catalog: Catalog, protocol: str, model_dir: Path | None, **overrides) -> EarningsPredictor:
    options = {**TINY, **overrides}
    return EarningsPredictor(
        protocol,
        model_dir=model_dir,
        timezone=catalog.host.timezone,
        **options,
    )
