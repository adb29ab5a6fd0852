"""Batched recursive forecasts (earnopt_assets.forecasting.batch) equal the single-origin predictor.

Real tiny LSTMs for two protocols, trained once through the forecasting area's training path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.batch import BatchedForecaster, next_earnings_rows, predict_many, prepare_origin
from earnopt_assets.forecasting.predictor import (
    EarningsPredictor,
    InsufficientHistoryError,
    MissingHoursError,
    next_earnings_row,
)
from earnopt_assets_tests.service.helpers import simulated, train_tiny_model

PROTOCOLS = ("honeygain", "storj")
REPO_CATALOG = Path(__file__).resolve().parents[2] / "data" / "catalog.yaml"


@pytest.fixture(scope="module")
def catalog():
    from earnopt_assets.catalog import load_catalog

    return load_catalog(REPO_CATALOG)


@pytest.fixture(scope="module")
def predictors(tmp_path_factory: pytest.TempPathFactory, catalog) -> dict[str, EarningsPredictor]:
    models = tmp_path_factory.mktemp("batch_models")
    for protocol in PROTOCOLS:
        train_tiny_model(catalog, models, protocol)
    return {protocol: EarningsPredictor.load(models, protocol) for protocol in PROTOCOLS}


@pytest.fixture(scope="module")
def recent(catalog) -> pd.DataFrame:
    return simulated(catalog, list(PROTOCOLS), 12, end="2026-11-25T10:00:00", seed=21)


def _windows(recent: pd.DataFrame, protocol: str, count: int, hours: int = 200) -> list[pd.DataFrame]:
    """``count`` different telemetry windows ending on different hours (and with different lengths)."""
    series = recent[recent["protocol"] == protocol].sort_values("ts").reset_index(drop=True)
    return [series.iloc[len(series) - hours - 7 * k - (k % 3) : len(series) - 7 * k] for k in range(count)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batched_forecasts_equal_single_request_forecasts(predictors, recent, protocol):
    predictor = predictors[protocol]
    frames = _windows(recent, protocol, 9)
    batched = predict_many(predictor, frames)
    single = np.stack([predictor.predict_next_24h(frame) for frame in frames])
    assert batched.shape == (9, 24)
    assert np.allclose(batched, single, rtol=1e-5, atol=1e-9)
    # different inputs really give different forecasts (the comparison is not between constants)
    assert np.ptp(single.sum(axis=1)) > 0


def test_feature_frame_origins_batch_like_telemetry_origins(predictors, catalog):
    from earnopt_assets.ingestion.features import build_feature_table

    predictor = predictors["storj"]
    longer = simulated(catalog, ["storj"], 20, end="2026-11-25T10:00:00", seed=22)
    features, _ = build_feature_table(longer, catalog.host.totals(), catalog.host.timezone)
    frames = [features.iloc[len(features) - 190 - k : len(features) - k] for k in (0, 5, 11)]
    forecaster = BatchedForecaster(predictor)
    batched = forecaster.forecast([prepare_origin(predictor, f) for f in frames])
    assert np.allclose(batched, np.stack([predictor.predict_next_24h(f) for f in frames]), rtol=1e-5, atol=1e-9)


def test_batches_larger_than_the_biggest_bucket_are_chunked_and_padded(predictors, recent):
    predictor = predictors["honeygain"]
    frames = _windows(recent, "honeygain", 5)
    origins = [prepare_origin(predictor, f) for f in frames]
    forecaster = BatchedForecaster(predictor, buckets=(2, 3))  # 5 = 3 + 2; a batch of 1 pads to 2
    forecaster.warm_up()
    assert forecaster.max_batch == 3
    expected = np.stack([predictor.predict_next_24h(f) for f in frames])
    assert np.allclose(forecaster.forecast(origins), expected, rtol=1e-5, atol=1e-9)
    assert np.allclose(forecaster.forecast(origins[:1]), expected[:1], rtol=1e-5, atol=1e-9)
    assert forecaster.forecast([]).shape == (0, 24)


def test_order_of_origins_in_a_batch_does_not_change_any_row(predictors, recent):
    predictor = predictors["honeygain"]
    origins = [prepare_origin(predictor, f) for f in _windows(recent, "honeygain", 6)]
    forecaster = BatchedForecaster(predictor)
    forward = forecaster.forecast(origins)
    backward = forecaster.forecast(origins[::-1])[::-1]
    assert np.allclose(forward, backward, rtol=1e-5, atol=1e-9)


def test_prepare_origin_raises_the_predictors_validation_errors(predictors, recent):
    predictor = predictors["honeygain"]
    frame = _windows(recent, "honeygain", 1)[0]
    with pytest.raises(InsufficientHistoryError):
        prepare_origin(predictor, frame.tail(100))
    with pytest.raises(MissingHoursError):
        prepare_origin(predictor, pd.concat([frame, frame.tail(1)]))


def test_vectorised_feedback_row_equals_the_predictors_row():
    rng = np.random.default_rng(4)
    history = rng.gamma(2.0, 0.01, size=(5, 240))
    previous = rng.gamma(2.0, 0.01, size=5)
    cursor = 230
    rows = next_earnings_rows(history, cursor, previous)
    for i in range(5):
        single = next_earnings_row(history[i], cursor, float(previous[i]))
        assert set(single) == set(rows)
        for name, value in single.items():
            assert rows[name][i] == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_bad_buckets_and_untrained_predictors_are_refused(predictors):
    from earnopt_assets.forecasting.predictor import ModelNotTrainedError

    with pytest.raises(ValueError):
        BatchedForecaster(predictors["honeygain"], buckets=(0, 4))
    with pytest.raises(ModelNotTrainedError):
        BatchedForecaster(EarningsPredictor("honeygain"))


def _columns(frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    return ts, {c: frame[c].to_numpy(dtype=float) for c in frame.columns if c not in ("ts", "device", "protocol")}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_column_fast_path_gives_the_same_origin_as_the_frame_path(predictors, recent, protocol):
    from earnopt_assets.forecasting.batch import prepare_origin_from_columns

    predictor = predictors[protocol]
    for frame in _windows(recent, protocol, 3):
        shuffled = frame.sample(frac=1.0, random_state=1)  # any posted order
        ts, columns = _columns(shuffled)
        fast = prepare_origin_from_columns(predictor, ts, columns)
        slow = prepare_origin(predictor, frame)
        assert fast is not None and fast.origin_ts == slow.origin_ts
        assert np.array_equal(fast.tail, slow.tail)
        assert np.array_equal(fast.allocation_tail, slow.allocation_tail)
        assert np.allclose(fast.window, slow.window, rtol=1e-12, atol=0)


def test_column_fast_path_declines_gaps_and_keeps_the_predictors_errors(predictors, recent):
    from earnopt_assets.forecasting.batch import prepare_origin_from_columns

    predictor = predictors["honeygain"]
    frame = _windows(recent, "honeygain", 1)[0]
    gappy = frame.drop(frame.index[50])
    assert prepare_origin_from_columns(predictor, *_columns(gappy)) is None  # the gridding path handles gaps
    assert prepare_origin_from_columns(predictor, np.empty(0, dtype=np.int64), {}) is None
    with pytest.raises(InsufficientHistoryError):
        prepare_origin_from_columns(predictor, *_columns(frame.tail(100)))
    broken = frame.copy()
    broken.loc[broken.index[-3], "cpu_cores"] = np.nan
    from earnopt_assets.forecasting.predictor import NonFiniteValuesError

    with pytest.raises(NonFiniteValuesError):
        prepare_origin_from_columns(predictor, *_columns(broken))
