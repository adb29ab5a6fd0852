"""EarningsPredictor: config, base, training samples, training, the NumPy forecast and persistence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.forecasting.model import persistence
from earnopt_assets.forecasting.model.base import COMPONENTS, causal_fill, components
from earnopt_assets.forecasting.model.config import ModelConfig
from earnopt_assets.forecasting.model.forecast import CHANNELS, build_tails, training_samples
from earnopt_assets.forecasting.model.persistence import current_version, model_store
from earnopt_assets.forecasting.model.predictor import (
    EarningsPredictor,
    FeatureMismatchError,
    InsufficientHistoryError,
    MissingHoursError,
    ModelLoadError,
    ModelNotTrainedError,
    NonFiniteValuesError,
    SequenceValidationError,
    series_from_frame,
)
from earnopt_assets_tests.forecasting.helpers import simulated, tiny_predictor


@pytest.fixture(scope="module")
def storj_data():
    from earnopt_assets.catalog import load_catalog
    from earnopt_assets_tests.conftest import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    telemetry, features = simulated(catalog, ["storj"], days=21)
    return catalog, telemetry, features


@pytest.fixture(scope="module")
def trained(storj_data, tmp_path_factory):
    """One tiny model trained on 18 days of telemetry, shared by the read-only tests of this module."""
    catalog, telemetry, _ = storj_data
    model_dir = tmp_path_factory.mktemp("models")
    predictor = tiny_predictor(catalog, "storj", model_dir)
    train, holdout = telemetry.iloc[:-72], telemetry.iloc[-72:]
    predictor.fit(train)
    return predictor, train, holdout


# ----------------------------------------------------------------------------- config & network


def test_default_architecture_is_the_seed_network():
    from earnopt_assets.forecasting.model.network import build_network

    config = ModelConfig(protocol="storj")
    model = build_network(config, len(CHANNELS), seed=7)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["LSTM", "Dropout", "LSTM", "Dropout", "Dense"]
    assert [model.layers[0].units, model.layers[2].units, model.layers[4].units] == [128, 64, 24]  # direct 24-hour head
    assert model.layers[0].return_sequences and not model.layers[2].return_sequences
    assert model.layers[1].rate == pytest.approx(0.2)
    assert model.input_shape == (None, 24, len(CHANNELS))
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert model.loss == "mse"
    recursive = build_network(config.with_(head="recursive", lstm_units=(16,)), len(CHANNELS), seed=7)
    assert [type(layer).__name__ for layer in recursive.layers] == ["LSTM", "Dropout", "Dense"]
    assert recursive.layers[-1].units == 1


def test_config_rejects_bad_settings_and_round_trips_json():
    with pytest.raises(ValueError, match="protocol name"):
        ModelConfig(protocol="../etc")
    with pytest.raises(ValueError):
        ModelConfig(protocol="storj", sequence_length=1)
    with pytest.raises(ValueError):
        ModelConfig(protocol="storj", lstm_units=(8, 4, 2))
    with pytest.raises(ValueError, match="head"):
        ModelConfig(protocol="storj", head="sideways")
    config = ModelConfig(protocol="storj", lstm_units=(8,), head="recursive", ensemble_size=2)
    assert ModelConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_json({**config.to_json(), "surprise": 1})


# ----------------------------------------------------------------------------- base & samples


def test_base_components_read_only_the_past(storj_data):
    """No leakage: changing every hour after an origin leaves its base components unchanged."""
    _, telemetry, _ = storj_data
    z = causal_fill(telemetry["earnings_usd"].to_numpy(dtype=float))
    origins = np.array([250, 300, 400])
    before = components(z[None, :], np.zeros(3, dtype=np.int64), origins)
    for t in origins:
        changed = z.copy()
        changed[t + 1 :] = 1e6
        after = components(changed[None, :], np.zeros(1, dtype=np.int64), np.array([t]))
        np.testing.assert_array_equal(after[0], before[origins.tolist().index(t)])
    assert before.shape == (3, 24, len(COMPONENTS)) and np.isfinite(before).all()
    # the weekly-lag component is the value 168 h before the target hour
    assert before[0, 0, 1] == z[250 + 1 - 168]


def test_training_windows_equal_forecast_tails(trained, storj_data):
    """Samples gathered from the long series are the windows a forecast builds from a tail at the same origin."""
    predictor, train, _ = trained
    series = series_from_frame(train, "storj")
    z = causal_fill(series.earnings / np.clip(series.allocation, 0.02, 1.0) ** predictor.allocation_beta)
    origins = np.array([300, 350])
    X, Y, kept = training_samples(z, z, series.allocation, series.epoch_hours, origins, predictor.state, 24, predictor.config.timezone, 24)
    assert X.shape == (2, 24, len(CHANNELS)) and Y.shape == (2, 24) and list(kept) == [300, 350]
    tails = build_tails(z, series.allocation, series.epoch_hours, origins, predictor.tail_hours)
    from earnopt_assets.forecasting.model.forecast import origin_scale, raw_windows

    rows = np.arange(2)
    base_path = predictor.state.base.predict(tails.Z, rows, tails.origins)
    scale = origin_scale(tails.Z, rows, tails.origins, predictor.state.level_floor)
    X_tail = raw_windows(tails.Z, tails.A, tails.E, rows, tails.origins, base_path, scale, predictor.state.base, 24, predictor.config.timezone)
    np.testing.assert_allclose(X_tail, X, rtol=1e-12, atol=1e-12)
    # the earnings channel of the window is z / scale of the window's own hours
    np.testing.assert_allclose(X[0, :, 0] * scale[0], z[300 - 23 : 301])


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (lambda f: f.iloc[:100], InsufficientHistoryError, "insufficient_history"),
        (lambda f: pd.concat([f, f.iloc[[40]]]), MissingHoursError, "duplicate hour"),
        (lambda f: f.assign(earnings_usd=f["earnings_usd"].where(f.index != 61, np.inf)), NonFiniteValuesError, "'earnings_usd'"),
        (lambda f: f.drop(columns=["earnings_usd"]), FeatureMismatchError, "earnings_usd"),
        (lambda f: f.assign(ts=f["ts"] + pd.to_timedelta(np.r_[0, np.full(len(f) - 1, 30)], unit="min")), MissingHoursError, "hourly grid"),
    ],
    ids=["too_short", "duplicate", "inf", "columns", "off_grid"],
)
def test_each_validation_failure_names_itself(trained, damage, error, words):
    predictor, train, _ = trained
    with pytest.raises(error) as caught:
        predictor.predict_next_24h(damage(train.reset_index(drop=True).copy()))
    assert isinstance(caught.value, SequenceValidationError)
    assert str(caught.value).startswith(error.kind)
    assert words in str(caught.value)


def test_missing_hours_inside_the_window_are_refused_but_older_gaps_are_filled(trained):
    predictor, train, _ = trained
    with pytest.raises(MissingHoursError, match="input window"):
        predictor.predict_next_24h(train.drop(index=train.index[-5]))
    older_gap = predictor.predict_next_24h(train.drop(index=train.index[-100]))
    assert np.isfinite(older_gap).all()


# ----------------------------------------------------------------------------- training


def test_training_records_history_validation_and_the_blend(trained):
    predictor, _, _ = trained
    history = predictor.training
    assert predictor.epochs_run == 2 and len(predictor.history["loss"]) == 2 and len(predictor.history["val_loss"]) == 2
    assert history.train_samples > 0 and history.validation_samples > 0
    assert set(history.validation_mape) == {f"{g:g}" for g in predictor.config.blend_grid}
    best = min(history.validation_mape.values())
    assert history.validation_mape[f"{predictor.blend:g}"] == pytest.approx(best)
    assert 0.0 <= predictor.blend <= 1.0 and predictor.allocation_beta is not None


def test_seasonal_naive_weight_and_kind_are_the_validation_best(trained):
    """The combination with a seasonal naive forecast is chosen on validation after the blend (ties: smaller weight)."""
    from earnopt_assets.forecasting.model.forecast import COMBINATION_KINDS

    predictor, _, _ = trained
    history = predictor.training
    kinds = [k for k in COMBINATION_KINDS if k != "ets" or predictor.state.base.ets is not None]  # ETS: test_frozen_ets
    assert set(history.validation_mape_by_naive_weight) == {f"{k} {c:g}" for k in kinds for c in predictor.config.blend_grid}
    best = min(history.validation_mape_by_naive_weight.values())
    chosen = history.validation_mape_by_naive_weight[f"{predictor.state.naive_kind} {predictor.state.naive_weight:g}"]
    assert chosen == pytest.approx(best)
    # weight 0 is the model alone: the same validation MAPE as the chosen blend
    assert history.validation_mape_by_naive_weight["last_week 0"] == pytest.approx(history.validation_mape[f"{predictor.blend:g}"])


def test_seasonal_naive_paths_and_the_combination():
    from earnopt_assets.forecasting.model.forecast import Tails, combine_with_seasonal_naive, seasonal_naive_path

    T = 4 * 168 + 24
    z = np.arange(T, dtype=float)[None, :]
    z[0, T - 2 * 168 : T - 2 * 168 + 24] = 1e6  # one unusual week: the 4-week median ignores it
    tails = Tails(z, np.ones_like(z), np.arange(T)[None, :])
    last_week = seasonal_naive_path(tails, "last_week")
    np.testing.assert_array_equal(last_week[0], np.arange(T - 168, T - 144))
    median = seasonal_naive_path(tails, "median_4_weeks")[0]
    lags = np.stack([z[0, T - 168 * k : T - 168 * k + 24] for k in range(1, 5)])
    np.testing.assert_allclose(median, np.median(lags, axis=0))
    assert median.max() < 1e6
    path = np.full((1, 24), 10.0)
    np.testing.assert_array_equal(combine_with_seasonal_naive(path, tails, 0.0), path)
    np.testing.assert_allclose(combine_with_seasonal_naive(path, tails, 0.25, "last_week"), 0.75 * path + 0.25 * last_week)
    short = Tails(np.full((1, 100), 3.0), np.ones((1, 100)), np.arange(100)[None, :])  # no week of history: the model stays
    np.testing.assert_array_equal(combine_with_seasonal_naive(path, short, 0.5, "median_4_weeks"), path)


def test_state_without_a_naive_weight_loads_as_the_model_alone(trained):
    from earnopt_assets.forecasting.model.forecast import FittedState

    predictor, _, _ = trained
    data = predictor.state.to_json()
    assert data["naive_kind"] in ("last_week", "median_4_weeks", "ets") and 0.0 <= data["naive_weight"] <= 1.0
    del data["naive_weight"], data["naive_kind"]  # a version saved before the combination existed
    old = FittedState.from_json(data)
    assert old.naive_weight == 0.0 and old.naive_kind == "last_week"
    with pytest.raises(ValueError, match="naive_kind"):
        FittedState.from_json({**predictor.state.to_json(), "naive_kind": "median_of_everything"})


def test_fit_reads_nothing_after_the_training_frame(storj_data):
    """The blend and base are chosen inside the frame: appending a wild future changes nothing fitted."""
    catalog, telemetry, _ = storj_data
    a = tiny_predictor(catalog, "storj", None, epochs=1)
    a.fit(telemetry.iloc[:-72])
    assert a.state.base.weights.shape == (24, len(COMPONENTS))
    future = telemetry.iloc[-72:].assign(earnings_usd=1e6)
    b = tiny_predictor(catalog, "storj", None, epochs=1)
    b.fit(pd.concat([telemetry.iloc[:-72], future.iloc[:0]]))
    np.testing.assert_array_equal(a.state.base.weights, b.state.base.weights)


def test_early_stopping_stops_a_diverging_fit(storj_data):
    catalog, telemetry, _ = storj_data
    predictor = tiny_predictor(catalog, "storj", None, epochs=30, patience=2, learning_rate=0.5)
    predictor.fit(telemetry.iloc[:-72])
    assert predictor.epochs_run < 30
    best = int(np.argmin(predictor.history["val_loss"]))
    assert predictor.epochs_run == best + 1 + 2


def test_too_little_history_to_train_is_refused(storj_data):
    catalog, telemetry, _ = storj_data
    with pytest.raises(InsufficientHistoryError):
        tiny_predictor(catalog, "storj", None).fit(telemetry.iloc[:250])


# ----------------------------------------------------------------------------- forecasting


def test_forecast_is_24_finite_non_negative_hours(trained):
    predictor, train, _ = trained
    frame = predictor.forecast_frame(train)
    assert len(frame) == 24
    assert frame["target_ts"].iloc[0] == train["ts"].iloc[-1] + pd.Timedelta(hours=1)
    assert (frame["target_ts"].diff().dropna() == pd.Timedelta(hours=1)).all()
    values = predictor.predict_next_24h(train)
    assert values.shape == (24,) and np.isfinite(values).all() and (values >= 0).all()
    np.testing.assert_array_equal(values, frame["value"].to_numpy())


def test_forecast_from_the_feature_table_matches_forecast_from_telemetry(trained, storj_data):
    predictor, train, _ = trained
    _, _, features = storj_data
    last = train["ts"].iloc[-1]
    table = features[features["ts"] <= last]
    # the table starts after its 168 h warm-up; its lag columns give back the earlier earnings exactly
    recovered, raw = series_from_frame(table, "storj"), series_from_frame(train, "storj")
    np.testing.assert_array_equal(recovered.ts, raw.ts)
    np.testing.assert_array_equal(recovered.earnings, raw.earnings)
    # (not the earlier allocations: those hours are assumed at the first known share, hence not bit-equal)
    np.testing.assert_allclose(predictor.predict_next_24h(table), predictor.predict_next_24h(train), rtol=0.05)


def test_blend_zero_is_the_statistical_base(trained, monkeypatch):
    predictor, train, _ = trained
    series = series_from_frame(train, "storj")
    monkeypatch.setattr(predictor.state, "blend", 0.0)
    monkeypatch.setattr(predictor.state, "naive_weight", 0.0)  # the model alone, without the seasonal naive combination
    np.testing.assert_allclose(predictor.predict_next_24h(train), predictor.base_forecast_series([series])[0], rtol=1e-12)


def test_forecaster_and_batch_forecaster_follow_the_harness_interface(trained):
    from earnopt_assets.forecasting.candidates import OriginContext

    predictor, train, _ = trained
    series = series_from_frame(train, "storj")
    contexts = [OriginContext(series.ts[: n], series.earnings[: n], series.allocation[: n]) for n in (300, 350, len(series.ts))]
    batch = predictor.batch_forecaster()(contexts)
    assert batch.shape == (3, 24)
    single = predictor.forecaster()
    for row, ctx in zip(batch, contexts):
        np.testing.assert_allclose(single(ctx), row, rtol=1e-9)
    np.testing.assert_allclose(batch[-1], predictor.predict_next_24h(train), rtol=1e-9)
    with pytest.raises(ValueError):
        predictor.forecaster()(OriginContext(series.ts[:50], series.earnings[:50], series.allocation[:50]))


def test_evaluate_scores_model_and_both_baselines_on_the_same_hours(trained):
    predictor, train, holdout = trained
    result = predictor.evaluate(holdout, context=train)
    assert result["origins"] == 3 and result["skipped_origins"] == 0
    for name in ("model", "seasonal_naive_24", "seasonal_naive_168"):
        assert result[name]["n"] == 72
        assert {"mse", "mae", "rmse", "mape", "r2"} <= set(result[name])
    table = predictor.last_evaluation
    assert len(table) == 72 and table["horizon_hours"].tolist() == list(range(1, 25)) * 3
    lookup = pd.concat([train, holdout]).set_index("ts")["earnings_usd"]
    row = table.iloc[30]
    assert row["seasonal_naive_24"] == lookup[row["target_ts"] - pd.Timedelta(hours=24)]
    assert row["seasonal_naive_168"] == lookup[row["target_ts"] - pd.Timedelta(hours=168)]
    assert result["better_baseline"] in ("seasonal_naive_24", "seasonal_naive_168")


def test_untrained_predictor_refuses_to_forecast_or_save(storj_data, tmp_path):
    catalog, telemetry, _ = storj_data
    predictor = tiny_predictor(catalog, "storj", tmp_path)
    with pytest.raises(ModelNotTrainedError):
        predictor.predict_next_24h(telemetry)
    with pytest.raises(ModelNotTrainedError):
        predictor.save()


# ----------------------------------------------------------------------------- persistence


def test_save_lands_a_version_without_moving_current_and_load_round_trips(trained, tmp_path):
    predictor, train, holdout = trained
    predictor.model_dir = tmp_path
    predictor.evaluate(holdout, context=train)
    version_dir = predictor.save()
    assert {p.name for p in version_dir.iterdir()} == set(persistence.PART_FILES) | {"MANIFEST.json"}
    assert current_version(tmp_path, "storj") is None  # a challenger: governance promotes
    with pytest.raises(ModelLoadError, match="no saved model"):
        EarningsPredictor.load(tmp_path, "storj")
    loaded = EarningsPredictor.load(tmp_path, "storj", predictor.version)
    model_store(tmp_path).promote("storj", predictor.version)
    assert current_version(tmp_path, "storj") == predictor.version == version_dir.name
    loaded = EarningsPredictor.load(tmp_path, "storj")
    np.testing.assert_array_equal(loaded.predict_next_24h(train), predictor.predict_next_24h(train))
    np.testing.assert_array_equal(loaded.state.base.weights, predictor.state.base.weights)
    assert loaded.blend == predictor.blend
    assert loaded.metrics["model"]["mape"] == pytest.approx(predictor.metrics["model"]["mape"])
    assert loaded.history["loss"] == pytest.approx(predictor.history["loss"])
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["parameter_count"] == predictor.parameter_count() > 0


def test_crash_during_save_leaves_the_previous_model_loadable(trained, tmp_path, monkeypatch):
    predictor, train, _ = trained
    predictor.model_dir = tmp_path
    first = predictor.save(promote=True)
    before = EarningsPredictor.load(tmp_path, "storj").predict_next_24h(train)

    def explode(*args, **kwargs):
        raise OSError("disk full (simulated) half way through the save")

    monkeypatch.setattr(persistence, "atomic_write_json", explode)
    with pytest.raises(OSError, match="simulated"):
        predictor.save(promote=True)
    monkeypatch.undo()
    versions = tmp_path / "lstm" / "storj" / "versions"
    assert [p.name for p in versions.iterdir()] == [first.name]  # no half-written version, no staging dir
    assert current_version(tmp_path, "storj") == first.name
    np.testing.assert_array_equal(EarningsPredictor.load(tmp_path, "storj").predict_next_24h(train), before)


def test_load_validates_every_part(trained, tmp_path):
    predictor, _, _ = trained
    predictor.model_dir = tmp_path
    version_dir = predictor.save(promote=True)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "lstm", copy / "lstm")
    (copy / "lstm" / "storj" / "versions" / version_dir.name / "state.json").unlink()
    with pytest.raises(ModelLoadError, match=r"state\.json"):
        EarningsPredictor.load(copy, "storj")
    config = version_dir / "config.json"
    config.write_text(config.read_text().replace('"timezone"', '"timezone" ', 1))
    with pytest.raises(ModelLoadError, match="checksum"):
        EarningsPredictor.load(tmp_path, "storj")
    with pytest.raises(ModelLoadError, match="no saved model"):
        EarningsPredictor.load(tmp_path, "akash")
    (tmp_path / "lstm" / "storj" / "CURRENT").write_text("20990101T000000000Z-deadbeef\n")
    with pytest.raises(ModelLoadError, match="does not exist"):
        EarningsPredictor.load(tmp_path, "storj")


def test_old_versions_are_pruned_but_current_and_recent_ones_stay_loadable(trained, tmp_path):
    predictor, train, _ = trained
    predictor.model_dir = tmp_path
    first = predictor.save(promote=True).name
    saved = [predictor.save().name for _ in range(4)]
    remaining = sorted(p.name for p in (tmp_path / "lstm" / "storj" / "versions").iterdir())
    assert remaining == sorted([first, *saved[-persistence.KEEP_VERSIONS :]])
    older = EarningsPredictor.load(tmp_path, "storj", saved[-persistence.KEEP_VERSIONS])
    assert older.version == saved[-persistence.KEEP_VERSIONS]
    assert len(older.predict_next_24h(train)) == 24


@pytest.mark.slow
def test_training_priority_helper_renices_only_the_calling_worker():
    """The helper the Dagster training step calls: run in a child process so this test process keeps its priority."""
    import os
    import subprocess
    import sys

    before = os.nice(0)
    script = (
        "import os; from earnopt_assets.forecasting.model.network import lower_training_priority; "
        "start = os.nice(0); print(start, lower_training_priority(5))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    start, after = (int(v) for v in done.stdout.strip().splitlines()[-1].split())
    # niceness saturates at 19 (an in-process Dagster training step earlier in this session may have reniced us)
    assert after == min(19, start + 5)
    assert os.nice(0) == before
