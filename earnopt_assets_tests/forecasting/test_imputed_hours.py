"""Imputed hours (earnings spread over a collector gap, #14 §6) reach the feature snapshot and are not
training targets nor scored actuals, so a collector outage never teaches the forecaster a spike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from earnopt_assets.catalog import load_catalog
from earnopt_assets.forecasting import training
from earnopt_assets.forecasting.harness import score_candidates, score_with_calibrated_intervals
from earnopt_assets.forecasting.model import predictor as predictor_module
from earnopt_assets.forecasting.model.base import StatisticalBase
from earnopt_assets.ingestion.feature_store import RAW_FEATURE_INPUT_COLUMNS, to_arrow
from earnopt_assets.ingestion.features import (
    FEATURE_COLUMNS,
    KEY_COLUMNS,
    build_feature_table,
    build_feature_table_reference,
)
from earnopt_assets_tests.conftest import DEFAULT_CATALOG
from earnopt_assets_tests.forecasting.helpers import simulated, tiny_predictor
from earnopt_assets_tests.forecasting.test_harness import naive_only, series


@pytest.fixture(scope="module")
def storj():
    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, _ = simulated(catalog, ["storj"], days=21)
    return catalog, telemetry.sort_values("ts").reset_index(drop=True)


# ----------------------------------------------------------------------------- features


def test_the_imputed_flag_rides_along_without_changing_any_feature(storj):
    catalog, telemetry = storj
    assert "imputed" in RAW_FEATURE_INPUT_COLUMNS
    flagged = telemetry.assign(imputed=False)
    flagged.loc[flagged.index[200:206], "imputed"] = True
    plain, _ = build_feature_table(telemetry, catalog.host.totals(), catalog.host.timezone)
    table, _ = build_feature_table(flagged, catalog.host.totals(), catalog.host.timezone)
    reference, _ = build_feature_table_reference(flagged, catalog.host.totals(), catalog.host.timezone)
    pd.testing.assert_frame_equal(table[[*KEY_COLUMNS, *FEATURE_COLUMNS]], plain)
    expected = pd.DatetimeIndex(table["ts"]).isin(pd.DatetimeIndex(flagged.loc[flagged["imputed"], "ts"]))
    assert table["imputed"].dtype == bool and (table["imputed"].to_numpy() == expected).all() and expected.sum() == 6
    np.testing.assert_array_equal(reference["imputed"].to_numpy(), table["imputed"].to_numpy())
    assert to_arrow(table).column_names == [*KEY_COLUMNS, *FEATURE_COLUMNS, "imputed"]
    assert to_arrow(pa.Table.from_pandas(table)).column_names == [*KEY_COLUMNS, *FEATURE_COLUMNS, "imputed"]
    assert "imputed" not in to_arrow(plain).column_names


# ----------------------------------------------------------------------------- predictor fit


class _Stop(Exception):
    """Stops a fit after the base, before any network is trained (no TensorFlow needed)."""


def _fit_base(frame: pd.DataFrame, monkeypatch) -> dict:
    """Run ``EarningsPredictor.fit`` up to the network: the base it fitted, its targets and the network's."""
    seen: dict = {}
    original = StatisticalBase.fit_by_validation.__func__

    def fit_by_validation(cls, Z, train_origins, train_targets, val_origins, val_targets, *args, **kwargs):
        seen.update(train_origins=train_origins, train_targets=train_targets, val_origins=val_origins, val_targets=val_targets)
        seen["base"] = original(cls, Z, train_origins, train_targets, val_origins, val_targets, *args, **kwargs)
        return seen["base"]

    def training_samples(z, z_targets, *args, **kwargs):
        seen["network_targets"] = z_targets
        raise _Stop

    monkeypatch.setattr(StatisticalBase, "fit_by_validation", classmethod(fit_by_validation))
    monkeypatch.setattr(predictor_module, "training_samples", training_samples)
    catalog = load_catalog(DEFAULT_CATALOG)
    with pytest.raises(_Stop):
        tiny_predictor(catalog, "storj", None).fit(frame)
    return seen


def test_imputed_hours_are_not_training_targets(storj, monkeypatch):
    _, telemetry = storj
    frame = telemetry.assign(imputed=False)
    imputed_rows = np.r_[260:270, 330:336]  # training region: they are inputs of later origins too
    frame.loc[frame.index[imputed_rows], "earnings_usd"] *= 1000.0
    frame.loc[frame.index[imputed_rows], "imputed"] = True
    seen = _fit_base(frame, monkeypatch)
    hours = seen["train_origins"][:, None] + np.arange(1, 25)[None, :]
    assert np.isin(hours, imputed_rows).any()  # the imputed hours are within the targets' reach ...
    assert np.isnan(seen["train_targets"][np.isin(hours, imputed_rows)]).all()  # ... and masked out
    assert np.isfinite(seen["train_targets"][~np.isin(hours, imputed_rows)]).all()
    assert np.isnan(seen["network_targets"][imputed_rows]).all()  # a network sample touching one is dropped
    assert np.isfinite(np.delete(seen["network_targets"], imputed_rows)).all()


def test_absurd_imputed_hours_fit_the_same_base_as_missing_ones(storj, monkeypatch):
    """Imputed hours in the last day are validation targets only (never an input of an origin): the base
    fitted with them flagged equals the base fitted with them missing, and differs when they are not flagged."""
    _, telemetry = storj
    tail = telemetry.index[-12:]
    absurd = telemetry.assign(imputed=False)
    absurd.loc[tail, "earnings_usd"] *= 1000.0
    flagged = absurd.assign(imputed=absurd.index.isin(tail))
    missing = telemetry.assign(imputed=False)
    missing.loc[tail, "earnings_usd"] = np.nan
    weights = {name: _fit_base(frame, monkeypatch)["base"].to_json() for name, frame in
               (("flagged", flagged), ("missing", missing), ("unflagged", absurd))}
    assert weights["flagged"] == weights["missing"]
    assert weights["unflagged"] != weights["flagged"]  # the check can fail: unflagged spikes do move the base


# ----------------------------------------------------------------------------- harness scoring


def test_imputed_actuals_are_not_scored_but_stay_in_the_context():
    ts, y, alloc = series(30)
    holdout = 24 * 25
    unscored = np.zeros(len(y), dtype=bool)
    unscored[[holdout + 3, holdout + 30, holdout + 31]] = True
    spiked = np.where(unscored, y * 1000.0, y)
    missing = np.where(unscored, np.nan, y)
    flagged = score_candidates(ts, spiked, alloc, holdout, naive_only(), unscored=unscored)
    naive = score_candidates(ts, spiked, alloc, holdout, naive_only())
    actual = np.array([missing[o + 1 : o + 25] for o in flagged.origins])
    np.testing.assert_array_equal(flagged.actuals, actual)  # NaN exactly at the imputed hours
    assert np.isnan(flagged.actuals).sum() == 3
    scored = np.isfinite(actual)
    for name in naive_only():
        # the same forecasts (the spiked context is still read: the best estimate of those hours) ...
        predictions = flagged.scores[name].predictions
        np.testing.assert_array_equal(predictions, naive.scores[name].predictions)
        # ... but the spiked hours themselves are not scored
        by_hand = 100 * np.mean(np.abs(actual[scored] - predictions[scored]) / np.abs(actual[scored]))
        assert flagged.scores[name].mape_pct == pytest.approx(by_hand)
        assert naive.scores[name].mae > flagged.scores[name].mae  # unflagged, the spikes are scored
    calibrated, _ = score_with_calibrated_intervals(ts, spiked, alloc, holdout, naive_only(), calibration_hours=72, unscored=unscored)
    assert np.isnan(calibrated.actuals).sum() == 3


def test_training_flags_the_imputed_hours_of_the_feature_grid():
    frame = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=6, freq="h"), "earnings_usd": 1.0,
                          "imputed": [False, True, False, False, True, False]}).drop(index=3)
    ts, earnings, _ = training.hourly_series(frame)
    assert training.imputed_on_grid(frame, ts).tolist() == [False, True, False, False, True, False]
    assert np.isnan(earnings[3])
    assert training.imputed_on_grid(frame.drop(columns="imputed"), ts) is None
