"""Batched forecasts (earnopt_assets.forecasting.batch) equal the single-origin predictor.

Real tiny LSTMs for two protocols, trained once and loaded back through the model store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.batch import (
    BatchedForecaster,
    predict_many,
    prepare_origin,
    prepare_origin_from_columns,
)
from earnopt_assets.forecasting.model.predictor import (
    EarningsPredictor,
    InsufficientHistoryError,
    MissingHoursError,
    ModelNotTrainedError,
    NonFiniteValuesError,
)
from earnopt_assets_tests.forecasting.helpers import simulated, tiny_predictor

PROTOCOLS = ("honeygain", "storj")
REPO_CATALOG = Path(__file__).resolve().parents[2] / "data" / "catalog.yaml"


@pytest.fixture(scope="module")
def catalog():
    from earnopt_assets.catalog import load_catalog

    return load_catalog(REPO_CATALOG)


@pytest.fixture(scope="module")
def predictors(tmp_path_factory: pytest.TempPathFactory, catalog) -> dict[str, EarningsPredictor]:
    models = tmp_path_factory.mktemp("batch_models")
    out = {}
    for protocol in PROTOCOLS:
        telemetry, _ = simulated(catalog, [protocol], days=18, seed=3)
        model = tiny_predictor(catalog, protocol, models, epochs=1)
        model.fit(telemetry)
        model.save(promote=True)
        out[protocol] = EarningsPredictor.load(models, protocol)
    return out


@pytest.fixture(scope="module")
def recent(catalog) -> pd.DataFrame:
    telemetry, _ = simulated(catalog, list(PROTOCOLS), days=30, seed=21)
    return telemetry


def _windows(recent: pd.DataFrame, protocol: str, count: int, hours: int = 400) -> list[pd.DataFrame]:
    """``count`` different telemetry windows ending on different hours (and with different lengths)."""
    series = recent[recent["protocol"] == protocol].sort_values("ts").reset_index(drop=True)
    return [series.iloc[len(series) - hours - 7 * k - (k % 3) * 40 : len(series) - 7 * k] for k in range(count)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batched_forecasts_equal_single_request_forecasts(predictors, recent, protocol):
    predictor = predictors[protocol]
    frames = _windows(recent, protocol, 9)
    batched = predict_many(predictor, frames)
    single = np.stack([predictor.predict_next_24h(frame) for frame in frames])
    assert batched.shape == (9, 24)
    assert np.allclose(batched, single, rtol=1e-9, atol=1e-12)
    # different inputs really give different forecasts (the comparison is not between constants)
    assert np.ptp(single.sum(axis=1)) > 0


def test_feature_frame_origins_batch_like_telemetry_origins(predictors, catalog):
    predictor = predictors["storj"]
    _, features = simulated(catalog, ["storj"], days=30, seed=22)
    frames = [features.iloc[len(features) - 300 - k : len(features) - k] for k in (0, 5, 11)]
    batched = BatchedForecaster(predictor).forecast([prepare_origin(predictor, f) for f in frames])
    assert np.allclose(batched, np.stack([predictor.predict_next_24h(f) for f in frames]), rtol=1e-9, atol=1e-12)


def test_batches_larger_than_max_batch_are_chunked(predictors, recent):
    predictor = predictors["honeygain"]
    frames = _windows(recent, "honeygain", 5)
    origins = [prepare_origin(predictor, f) for f in frames]
    forecaster = BatchedForecaster(predictor, max_batch=2)
    forecaster.warm_up()
    expected = np.stack([predictor.predict_next_24h(f) for f in frames])
    assert np.allclose(forecaster.forecast(origins), expected, rtol=1e-9, atol=1e-12)
    assert np.allclose(forecaster.forecast(origins[:1]), expected[:1], rtol=1e-9, atol=1e-12)
    assert forecaster.forecast([]).shape == (0, 24)


def test_order_of_origins_in_a_batch_does_not_change_any_row(predictors, recent):
    predictor = predictors["honeygain"]
    origins = [prepare_origin(predictor, f) for f in _windows(recent, "honeygain", 6)]
    forecaster = BatchedForecaster(predictor)
    forward = forecaster.forecast(origins)
    backward = forecaster.forecast(origins[::-1])[::-1]
    assert np.allclose(forward, backward, rtol=1e-12, atol=0)


def test_prepare_origin_raises_the_predictors_validation_errors(predictors, recent):
    predictor = predictors["honeygain"]
    frame = _windows(recent, "honeygain", 1)[0]
    with pytest.raises(InsufficientHistoryError):
        prepare_origin(predictor, frame.tail(100))
    with pytest.raises(MissingHoursError):
        prepare_origin(predictor, pd.concat([frame, frame.tail(1)]))


def test_bad_batch_size_and_untrained_predictors_are_refused(predictors):
    with pytest.raises(ValueError):
        BatchedForecaster(predictors["honeygain"], max_batch=0)
    with pytest.raises(ModelNotTrainedError):
        BatchedForecaster(EarningsPredictor("honeygain"))


def _columns(frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    return ts, {c: frame[c].to_numpy(dtype=float) for c in frame.columns if c not in ("ts", "device", "protocol")}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_column_fast_path_gives_the_same_origin_as_the_frame_path(predictors, recent, protocol):
    predictor = predictors[protocol]
    for frame in _windows(recent, protocol, 3):
        shuffled = frame.sample(frac=1.0, random_state=1)  # any posted order
        fast = prepare_origin_from_columns(predictor, *_columns(shuffled))
        slow = prepare_origin(predictor, frame)
        assert fast is not None and fast.origin_ts == slow.origin_ts
        np.testing.assert_array_equal(fast.series.earnings, slow.series.earnings)
        np.testing.assert_array_equal(fast.series.allocation, slow.series.allocation)
        np.testing.assert_array_equal(fast.allocation_path, slow.allocation_path)


def test_column_fast_path_keeps_the_predictors_errors(predictors, recent):
    predictor = predictors["honeygain"]
    frame = _windows(recent, "honeygain", 1)[0]
    assert prepare_origin_from_columns(predictor, np.empty(0, dtype=np.int64), {}) is None
    with pytest.raises(InsufficientHistoryError):
        prepare_origin_from_columns(predictor, *_columns(frame.tail(100)))
    with pytest.raises(MissingHoursError):
        prepare_origin_from_columns(predictor, *_columns(frame.drop(frame.index[-3])))
    broken = frame.copy()
    broken.loc[broken.index[-3], "earnings_usd"] = np.inf
    with pytest.raises(NonFiniteValuesError):
        prepare_origin_from_columns(predictor, *_columns(broken))
