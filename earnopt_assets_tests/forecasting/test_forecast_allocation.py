"""Allocation-conditional forecasts: the forecast follows a future allocation path (earnopt's own control
input), the default path is the held last allocation, and the response exponent beta is fitted on the
training data only, saved and loaded.

One tiny real LSTM (akash, a compute protocol whose simulated earnings go as allocation**0.6) is trained
once for the module.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.batch import (
    BatchedForecaster,
    predict_many,
    prepare_origin,
    prepare_origin_from_columns,
)
from earnopt_assets.forecasting.model.base import ALLOCATION_FLOOR
from earnopt_assets.forecasting.model.persistence import MODEL_FORMAT_VERSION, model_store
from earnopt_assets.forecasting.model.predictor import AllocationPathError, EarningsPredictor, ModelLoadError
from earnopt_assets.numerics.response import fit_response_curve
from earnopt_assets_tests.forecasting.helpers import simulated, tiny_predictor

PROTOCOL = "akash"


@pytest.fixture(scope="module")
def akash_data():
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, features = simulated(catalog, [PROTOCOL], days=21)
    return catalog, telemetry, features


@pytest.fixture(scope="module")
def trained(akash_data, tmp_path_factory):
    catalog, telemetry, _ = akash_data
    model_dir = tmp_path_factory.mktemp("alloc_models")
    predictor = tiny_predictor(catalog, PROTOCOL, model_dir)
    train, holdout = telemetry.iloc[:-72].reset_index(drop=True), telemetry.iloc[-72:].reset_index(drop=True)
    predictor.fit(train)
    predictor.save(promote=True)
    return predictor, train, holdout, model_dir


def test_beta_is_fitted_on_the_training_part_only(trained):
    predictor, train, _, _ = trained
    part = train.iloc[: len(train) - max(predictor.config.min_validation_hours, round(0.2 * len(train)))]  # before validation
    expected = fit_response_curve(part["allocation"].to_numpy(float), part["earnings_usd"].to_numpy(float))
    assert predictor.is_allocation_conditional
    assert predictor.allocation_beta == pytest.approx(expected.beta)
    assert predictor.state.allocation_response["method"] == expected.method
    # the simulator's compute earnings go as allocation**0.6: the fit finds a concave exponent near it
    assert 0.3 < predictor.allocation_beta < 0.9


def test_default_path_is_the_held_last_allocation(trained):
    predictor, train, _, _ = trained
    last = float(train["allocation"].iloc[-1])
    default = predictor.predict_next_24h(train)
    np.testing.assert_array_equal(default, predictor.predict_next_24h(train, allocation_path=[last] * 24))
    np.testing.assert_array_equal(default, predictor.predict_next_24h(train, allocation_path=last))
    frame = predictor.forecast_frame(train)
    np.testing.assert_array_equal(frame["value"].to_numpy(), default)
    assert (frame["allocation"] == last).all()


def test_forecast_scales_by_the_allocation_response_after_a_change(trained):
    """z (allocation-normalised earnings) is forecast from the past only; each future hour is moved to
    its share: e^ = z^ * clip(a)**beta, so a change scales exactly those hours by (a_new / a_old)**beta."""
    predictor, train, _, _ = trained
    last = float(train["allocation"].iloc[-1])
    beta = predictor.allocation_beta
    default = predictor.predict_next_24h(train)
    new_share = max(last / 4.0, ALLOCATION_FLOOR)
    conditional = predictor.predict_next_24h(train, allocation_path=np.r_[np.full(12, last), np.full(12, new_share)])
    np.testing.assert_allclose(conditional[:12], default[:12], rtol=1e-12)
    np.testing.assert_allclose(conditional[12:], default[12:] * (new_share / last) ** beta, rtol=1e-9)
    up = predictor.predict_next_24h(train, allocation_path=np.r_[np.full(6, last), np.full(18, 1.0)])
    assert conditional[12:].sum() < default[12:].sum() and (up[6:].sum() > default[6:].sum() or last == 1.0)


def test_allocation_is_clipped_at_the_floor_so_zero_stays_finite(trained):
    predictor, train, _, _ = trained
    last = float(train["allocation"].iloc[-1])
    off = predictor.predict_next_24h(train, allocation_path=np.zeros(24))
    at_floor = predictor.predict_next_24h(train, allocation_path=np.full(24, ALLOCATION_FLOOR))
    np.testing.assert_array_equal(off, at_floor)
    np.testing.assert_allclose(off, predictor.predict_next_24h(train) * (ALLOCATION_FLOOR / last) ** predictor.allocation_beta, rtol=1e-9)
    assert predictor.allocation_scale(0.0, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "path, words",
    [
        (np.full(23, 0.5), "needs 24 hourly values"),
        (np.r_[np.full(23, 0.5), 1.5], "hour 24 is not a share"),
        (np.r_[np.nan, np.full(23, 0.5)], "hour 1 is not a share"),
        (["a"] * 24, "not numeric"),
    ],
)
def test_bad_allocation_paths_are_refused_with_the_reason(trained, path, words):
    predictor, train, _, _ = trained
    with pytest.raises(AllocationPathError, match=words):
        predictor.predict_next_24h(train, allocation_path=path)


def test_evaluate_conditions_on_the_holdouts_actual_allocation(trained, monkeypatch):
    predictor, train, holdout, _ = trained
    seen: list = []
    real = predictor.forecast_series

    def spy(series_list, paths=None, *, strict=True):
        seen.extend((pd.Timestamp(s.ts[-1]), p) for s, p in zip(series_list, paths))
        return real(series_list, paths, strict=strict)

    monkeypatch.setattr(predictor, "forecast_series", spy)
    predictor.evaluate(holdout, context=train)
    actual = pd.concat([train, holdout]).set_index("ts")["allocation"]
    assert seen
    for origin_ts, path in seen:
        hours = pd.date_range(origin_ts + pd.Timedelta(hours=1), periods=24, freq="h")
        known = [actual.get(t, np.nan) for t in hours]
        expected = pd.Series(known).ffill().fillna(actual.loc[origin_ts]).to_numpy()
        np.testing.assert_array_equal(path, expected)
    seen.clear()
    predictor.evaluate(holdout, context=train, condition_on_allocation=False)
    assert all(path is None for _, path in seen)


def test_beta_is_saved_in_the_json_parts_and_loaded(trained):
    predictor, train, _, model_dir = trained
    loaded = EarningsPredictor.load(model_dir, PROTOCOL)
    assert loaded.allocation_beta == predictor.allocation_beta
    directory = model_store(model_dir).path(PROTOCOL, loaded.version)
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["format_version"] == MODEL_FORMAT_VERSION == 4
    assert metadata["allocation_beta"] == predictor.allocation_beta
    assert metadata["allocation_response"]["beta"] == predictor.allocation_beta
    path = np.r_[np.full(8, 0.9), np.full(16, 0.2)]
    np.testing.assert_array_equal(loaded.predict_next_24h(train, allocation_path=path), predictor.predict_next_24h(train, allocation_path=path))


def test_load_refuses_a_beta_that_disagrees_or_another_format(trained, tmp_path):
    import shutil

    _, _, _, model_dir = trained
    shutil.copytree(model_dir, tmp_path / "models")
    store = model_store(tmp_path / "models")
    directory = store.current_path(PROTOCOL)
    metadata = json.loads((directory / "metadata.json").read_text())
    (directory / "metadata.json").write_text(json.dumps({**metadata, "allocation_beta": 0.123}))  # metadata may be annotated...
    with pytest.raises(ModelLoadError, match="allocation_beta"):  # ...but must still agree with state.json
        EarningsPredictor.load(tmp_path / "models", PROTOCOL)
    (directory / "metadata.json").write_text(json.dumps({**metadata, "format_version": 2}))
    with pytest.raises(ModelLoadError, match="format 2"):
        EarningsPredictor.load(tmp_path / "models", PROTOCOL)


def test_batched_forecasts_equal_single_forecasts_with_allocation_paths(trained, akash_data):
    predictor, _, _, _ = trained
    _, telemetry, _ = akash_data
    series = telemetry.sort_values("ts").reset_index(drop=True)
    frames = [series.iloc[len(series) - 300 - 5 * k : len(series) - 5 * k] for k in range(4)]
    paths = [None, 0.3, np.r_[np.full(10, 0.8), np.full(14, 0.15)], np.linspace(1.0, 0.0, 24)]
    batched = predict_many(predictor, frames, paths)
    for row, frame, path in zip(batched, frames, paths):
        np.testing.assert_allclose(row, predictor.predict_next_24h(frame, allocation_path=path), rtol=1e-9)
    frame = frames[2]
    columns = {c: frame[c].to_numpy() for c in frame.columns if c not in ("ts", "device", "protocol")}
    fast = prepare_origin_from_columns(predictor, pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8, columns, allocation_path=paths[2])
    slow = prepare_origin(predictor, frame, paths[2])
    np.testing.assert_array_equal(fast.allocation_path, slow.allocation_path)
    np.testing.assert_allclose(BatchedForecaster(predictor).forecast([fast])[0], batched[2], rtol=1e-9)
    with pytest.raises(ValueError, match="allocation paths"):
        predict_many(predictor, frames, paths[:2])
