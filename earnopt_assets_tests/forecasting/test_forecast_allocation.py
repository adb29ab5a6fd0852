"""Allocation-conditional forecasts: the forecast follows a future allocation path (earnopt's own control
input), the default path is the held last allocation, and the response exponent beta is fitted on the
training data only, saved and loaded.

One tiny real LSTM (akash, a compute protocol whose simulated earnings go as allocation**0.6) is trained
once for the module.
"""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pytest

from earnopt_assets.numerics.response import fit_response_curve
from earnopt_assets.forecasting.batch import BatchedForecaster, predict_many, prepare_origin, prepare_origin_from_columns
from earnopt_assets.forecasting.predictor import (
    ALLOCATION_FLOOR,
    MODEL_FORMAT_VERSION,
    AllocationPathError,
    EarningsPredictor,
    ModelLoadError,
    _sha256,
)
from earnopt_assets.forecasting.store import read_planned_allocations
from earnopt_assets.forecasting.training import LSTM_SOURCE, forecast_protocol
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
    catalog, _, features = akash_data
    model_dir = tmp_path_factory.mktemp("alloc_models")
    predictor = tiny_predictor(catalog, PROTOCOL, model_dir)
    train, holdout = features.iloc[:-72], features.iloc[-72:]
    predictor.train(train)
    predictor.save()
    return predictor, train, holdout, model_dir


def _zero_residual(predictor: EarningsPredictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that answers residual 0: the forecast is exactly the seasonal base path."""
    zero = -predictor.target_scaler.mean_[0] / predictor.target_scaler.scale_[0]
    monkeypatch.setattr(predictor, "_compiled", lambda x: np.array([[zero]], dtype=np.float32))
    monkeypatch.setattr(predictor.config, "residual_gain", 1.0)


def test_beta_is_fitted_on_the_training_frame_only(trained):
    predictor, train, _, _ = trained
    expected = fit_response_curve(train["allocation"].to_numpy(float), train["earnings_usd"].to_numpy(float))
    assert predictor.is_allocation_conditional
    assert predictor.config.allocation_beta == pytest.approx(expected.beta)
    assert predictor.config.allocation_response["method"] == expected.method
    # the simulator's compute earnings go as allocation**0.6: the fit finds a concave exponent near it
    assert 0.3 < predictor.config.allocation_beta < 0.9


def test_default_path_is_the_held_last_allocation(trained):
    predictor, train, _, _ = trained
    last = float(train["allocation"].iloc[-1])
    default = predictor.predict_next_24h(train)
    np.testing.assert_array_equal(default, predictor.predict_next_24h(train, allocation_path=[last] * 24))
    np.testing.assert_array_equal(default, predictor.predict_next_24h(train, allocation_path=last))
    frame = predictor.forecast_frame(train)
    np.testing.assert_array_equal(frame["value"].to_numpy(), default)
    assert (frame["allocation"] == last).all()


def test_base_scales_by_the_allocation_response_after_a_change(trained, monkeypatch):
    predictor, train, _, _ = trained
    _zero_residual(predictor, monkeypatch)
    last = float(train["allocation"].iloc[-1])
    beta = predictor.config.allocation_beta
    default = predictor.predict_next_24h(train)
    new_share = max(last / 4.0, ALLOCATION_FLOOR)
    path = np.r_[np.full(12, last), np.full(12, new_share)]
    conditional = predictor.predict_next_24h(train, allocation_path=path)
    # before the change: the same hours as the unconditional forecast
    np.testing.assert_allclose(conditional[:12], default[:12], rtol=1e-12)
    # after it: every base component moves by (a_new / a_old)**beta
    np.testing.assert_allclose(conditional[12:], default[12:] * (new_share / last) ** beta, rtol=1e-9)
    assert conditional[12:].sum() < default[12:].sum()


def test_the_full_network_forecast_follows_an_allocation_change_both_ways(trained):
    predictor, train, _, _ = trained
    last = float(train["allocation"].iloc[-1])
    default = predictor.predict_next_24h(train)
    down = predictor.predict_next_24h(train, allocation_path=np.r_[np.full(6, last), np.full(18, max(last / 3, 0.05))])
    up = predictor.predict_next_24h(train, allocation_path=np.r_[np.full(6, last), np.full(18, 1.0)])
    assert np.isfinite(down).all() and (down >= 0).all() and np.isfinite(up).all()
    assert down[6:].mean() < default[6:].mean() < up[6:].mean() or last == 1.0
    assert down[6:].mean() < 0.9 * default[6:].mean()


def test_allocation_is_clipped_at_the_floor_so_zero_stays_finite(trained, monkeypatch):
    predictor, train, _, _ = trained
    _zero_residual(predictor, monkeypatch)
    last = float(train["allocation"].iloc[-1])
    beta = predictor.config.allocation_beta
    off = predictor.predict_next_24h(train, allocation_path=np.zeros(24))
    at_floor = predictor.predict_next_24h(train, allocation_path=np.full(24, ALLOCATION_FLOOR))
    np.testing.assert_array_equal(off, at_floor)
    default = predictor.predict_next_24h(train)
    np.testing.assert_allclose(off, default * (ALLOCATION_FLOOR / last) ** beta, rtol=1e-9)
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
    seen: list[tuple[pd.Timestamp, np.ndarray | None]] = []
    real = predictor._forecast_from

    def spy(window, tail, origin_ts, horizon=24, allocation_path=None, allocation_tail=None):
        seen.append((origin_ts, None if allocation_path is None else np.asarray(allocation_path)))
        return real(window, tail, origin_ts, horizon, allocation_path=allocation_path, allocation_tail=allocation_tail)

    monkeypatch.setattr(predictor, "_forecast_from", spy)
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


def test_beta_is_saved_in_the_json_metadata_and_loaded(trained):
    predictor, train, _, model_dir = trained
    loaded = EarningsPredictor.load(model_dir, PROTOCOL)
    assert loaded.config.allocation_beta == predictor.config.allocation_beta
    directory = model_dir / PROTOCOL / "versions" / loaded.version
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["format_version"] == MODEL_FORMAT_VERSION == 2
    assert metadata["allocation_beta"] == predictor.config.allocation_beta
    assert metadata["allocation_response"]["beta"] == predictor.config.allocation_beta
    path = np.r_[np.full(8, 0.9), np.full(16, 0.2)]
    np.testing.assert_array_equal(loaded.predict_next_24h(train, allocation_path=path), predictor.predict_next_24h(train, allocation_path=path))


def _copy_version(model_dir, tmp_path):
    import shutil

    target = tmp_path / "models"
    shutil.copytree(model_dir, target)
    version = (target / PROTOCOL / "CURRENT").read_text().strip()
    return target, target / PROTOCOL / "versions" / version


def _rewrite(directory, name, payload):
    (directory / name).write_text(json.dumps(payload))
    metadata = json.loads((directory / "metadata.json").read_text())
    if name != "metadata.json":
        metadata["files"][name] = _sha256(directory / name)
        (directory / "metadata.json").write_text(json.dumps(metadata))


def test_load_refuses_a_beta_that_disagrees_or_a_newer_format(trained, tmp_path):
    _, _, _, model_dir = trained
    models, directory = _copy_version(model_dir, tmp_path)
    metadata = json.loads((directory / "metadata.json").read_text())
    _rewrite(directory, "metadata.json", {**metadata, "allocation_beta": 0.123})
    with pytest.raises(ModelLoadError, match="allocation_beta"):
        EarningsPredictor.load(models, PROTOCOL)
    _rewrite(directory, "metadata.json", {**metadata, "format_version": MODEL_FORMAT_VERSION + 1})
    with pytest.raises(ModelLoadError, match="newer"):
        EarningsPredictor.load(models, PROTOCOL)


def test_a_format_1_model_loads_and_forecasts_without_allocation_scaling(trained, tmp_path, monkeypatch):
    predictor, train, _, model_dir = trained
    models, directory = _copy_version(model_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    for key in ("allocation_beta", "allocation_response"):
        config.pop(key)
    _rewrite(directory, "config.json", config)
    metadata = json.loads((directory / "metadata.json").read_text())
    for key in ("allocation_beta", "allocation_response", "format_version"):
        metadata.pop(key)
    _rewrite(directory, "metadata.json", metadata)
    old = EarningsPredictor.load(models, PROTOCOL)
    assert old.config.allocation_beta is None and not old.is_allocation_conditional
    _zero_residual(old, monkeypatch)
    last = float(train["allocation"].iloc[-1])
    held = old.predict_next_24h(train)
    changed = old.predict_next_24h(train, allocation_path=np.full(24, max(last / 2, 0.05)))
    np.testing.assert_array_equal(held, changed)  # base as it was fitted: no allocation response


def test_batched_forecasts_equal_single_forecasts_with_allocation_paths(trained, akash_data):
    predictor, _, _, _ = trained
    _, telemetry, _ = akash_data
    series = telemetry.sort_values("ts").reset_index(drop=True)
    frames = [series.iloc[len(series) - 200 - 5 * k : len(series) - 5 * k] for k in range(4)]
    paths = [None, 0.3, np.r_[np.full(10, 0.8), np.full(14, 0.15)], np.linspace(1.0, 0.0, 24)]
    batched = predict_many(predictor, frames, paths)
    for row, frame, path in zip(batched, frames, paths):
        np.testing.assert_allclose(row, predictor.predict_next_24h(frame, allocation_path=path), rtol=1e-5, atol=1e-9)
    forecaster = BatchedForecaster(predictor)
    frame = frames[2]
    columns = {c: frame[c].to_numpy() for c in frame.columns if c not in ("ts", "device", "protocol")}
    fast = prepare_origin_from_columns(predictor, pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8, columns, allocation_path=paths[2])
    slow = prepare_origin(predictor, frame, paths[2])
    np.testing.assert_array_equal(fast.allocation_path, slow.allocation_path)
    np.testing.assert_array_equal(fast.allocation_tail, slow.allocation_tail)
    np.testing.assert_allclose(forecaster.forecast([fast])[0], batched[2], rtol=1e-9)
    with pytest.raises(ValueError, match="allocation paths"):
        predict_many(predictor, frames, paths[:2])


def test_forecast_protocol_conditions_on_the_planned_allocation_state(trained, akash_data, tmp_path, monkeypatch):
    predictor, _, _, model_dir = trained
    _, telemetry, _ = akash_data
    import earnopt_assets.forecasting.training as training

    monkeypatch.setattr(training, "check_passed", lambda summary: True)  # the tiny model's check is not the point
    recent = telemetry.sort_values("ts").iloc[-240:].reset_index(drop=True)
    db = tmp_path / "warehouse.duckdb"
    conn = duckdb.connect(str(db))
    try:
        assert read_planned_allocations(conn, "host-1", [PROTOCOL]) == {}  # no allocation cycle yet
        from earnopt_assets.allocation.store import ensure_allocation_tables

        ensure_allocation_tables(conn)
        conn.execute(
            "INSERT INTO allocation_state VALUES (?, ?, ?, ?, NULL, 'optimizer'), (?, ?, ?, ?, NULL, 'optimizer')",
            ["host-1", PROTOCOL, 0.15, datetime(2026, 6, 30), "other-host", PROTOCOL, 0.9, datetime(2026, 6, 30)],
        )
        planned = read_planned_allocations(conn, "host-1", [PROTOCOL, "storj"])
    finally:
        conn.close()
    assert planned == {PROTOCOL: 0.15}
    conditioned = forecast_protocol(recent, PROTOCOL, model_dir, planned_allocation=planned[PROTOCOL])
    held = forecast_protocol(recent, PROTOCOL, model_dir)
    assert conditioned.source == held.source == LSTM_SOURCE
    np.testing.assert_allclose(conditioned.values, predictor.predict_next_24h(recent, allocation_path=0.15), rtol=1e-6)
    np.testing.assert_allclose(held.values, predictor.predict_next_24h(recent), rtol=1e-6)
    if float(recent["allocation"].iloc[-1]) > 0.2:
        assert conditioned.values.sum() < held.values.sum()
