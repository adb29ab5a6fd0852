"""EarningsPredictor: model, sequences, validation, training, persistence and the recursive forecast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from earnopt_assets.ingestion.features import FEATURE_COLUMNS
from earnopt_assets.forecasting import predictor as predictor_module
from earnopt_assets.forecasting.predictor import (
    NEXT_CHANNELS,
    EarningsPredictor,
    FeatureMismatchError,
    InsufficientHistoryError,
    MissingHoursError,
    ModelLoadError,
    ModelNotTrainedError,
    NonFiniteValuesError,
    SequenceValidationError,
    current_version,
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
    """One tiny model trained on 14 days, shared by the read-only tests of this module."""
    catalog, _, features = storj_data
    model_dir = tmp_path_factory.mktemp("models")
    predictor = tiny_predictor(catalog, "storj", model_dir)
    train, holdout = features.iloc[:-72], features.iloc[-72:]
    predictor.train(train)
    return predictor, train, holdout


# ----------------------------------------------------------------------------- model


def test_default_architecture_compiles_with_the_seed_settings(storj_data):
    catalog, _, _ = storj_data
    predictor = EarningsPredictor("storj", timezone=catalog.host.timezone)
    model = predictor.build_model()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["LSTM", "Dropout", "LSTM", "Dropout", "Dense"]
    assert [model.layers[0].units, model.layers[2].units, model.layers[4].units] == [128, 64, 1]
    assert model.layers[0].return_sequences and not model.layers[2].return_sequences
    assert model.layers[1].rate == pytest.approx(0.2)
    assert model.input_shape == (None, 24, len(FEATURE_COLUMNS) + len(NEXT_CHANNELS))
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert model.loss == "mse"
    config = model.get_compile_config()
    assert {"mae", "mape"} <= set(config["metrics"])


def test_model_rejects_a_window_of_the_wrong_shape(storj_data):
    catalog, _, _ = storj_data
    predictor = tiny_predictor(catalog, "storj", None, sequence_length=12)
    model = predictor.build_model()
    assert model.input_shape == (None, 12, predictor.n_channels)
    import tensorflow as tf

    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        model(np.zeros((1, 12, predictor.n_channels + 1), dtype=np.float32))


def test_predictor_validates_window_shapes(trained):
    predictor, train, _ = trained
    X, _ = predictor.prepare_sequences(train.iloc[:40])
    assert predictor.predict_windows(X[:3]).shape == (3,)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_windows(X[:, :12, :])
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_windows(X[0])


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="protocol name"):
        EarningsPredictor("../etc")
    with pytest.raises(ValueError):
        EarningsPredictor("storj", sequence_length=1)
    with pytest.raises(ValueError):
        EarningsPredictor("storj", lstm_units=(8,))
    with pytest.raises(FeatureMismatchError, match="ma_24h"):
        EarningsPredictor("storj", feature_columns=[c for c in FEATURE_COLUMNS if c != "ma_24h"])


# ----------------------------------------------------------------------------- sequences


def test_windows_pair_each_window_with_the_next_hour(storj_data):
    catalog, _, features = storj_data
    predictor = tiny_predictor(catalog, "storj", None)
    frame = features.iloc[:100].reset_index(drop=True)
    predictor._fit_profile(frame)
    windows, target, ends = predictor._windows(frame)
    L = predictor.sequence_length
    assert windows.shape == (100 - L, L, predictor.n_channels)
    i = 10
    end = ends[i]
    earnings_col = predictor._index["earnings_usd"]
    np.testing.assert_array_equal(windows[i, :, earnings_col], frame["earnings_usd"].to_numpy()[end - L + 1 : end + 1])
    assert target[i] == frame["earnings_usd"].iloc[end + 1]
    # the next-hour seasonal channels are the lags of the target hour
    assert windows[i, -1, predictor._index["next_lag_24"]] == frame["lag_24"].iloc[end + 1]
    assert windows[i, -1, predictor._index["next_lag_168"]] == frame["lag_168"].iloc[end + 1]


def test_prepare_sequences_scales_features_and_target(storj_data):
    catalog, _, features = storj_data
    predictor = tiny_predictor(catalog, "storj", None)
    X, y = predictor.prepare_sequences(features, fit=True)
    L, C = predictor.sequence_length, predictor.n_channels
    assert X.shape == (len(features) - L, L, C) and y.shape == (len(features) - L,)
    assert X.dtype == np.float32 and np.isfinite(X).all() and np.isfinite(y).all()
    flat = X.reshape(-1, C).astype(float)
    varying = predictor.feature_scaler.var_ > 0
    np.testing.assert_allclose(flat.mean(axis=0)[varying], 0.0, atol=1e-3)
    np.testing.assert_allclose(flat.std(axis=0)[varying], 1.0, atol=1e-2)
    assert abs(float(y.mean())) < 1e-4 and float(y.std()) == pytest.approx(1.0, abs=1e-3)
    # applying the fitted scalers to the same data reproduces the training arrays
    X2, y2 = predictor.prepare_sequences(features)
    np.testing.assert_allclose(X2, X)
    np.testing.assert_allclose(y2, y)
    assert len(predictor.config.season_profile) == 168 and len(predictor.config.base_weights) == 4


def test_prepare_sequences_needs_fitted_scalers(storj_data):
    catalog, _, features = storj_data
    with pytest.raises(ModelNotTrainedError):
        tiny_predictor(catalog, "storj", None).prepare_sequences(features)


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (lambda f: f.iloc[:20], InsufficientHistoryError, "insufficient_history"),
        (lambda f: f.drop(index=[50, 51, 52]), MissingHoursError, "3 missing hour"),
        (lambda f: pd.concat([f, f.iloc[[40]]]), MissingHoursError, "duplicate hour"),
        (lambda f: f.assign(ma_6h=f["ma_6h"].where(f.index != 60, np.nan)), NonFiniteValuesError, "'ma_6h'"),
        (lambda f: f.assign(cpu_util=f["cpu_util"].where(f.index != 61, np.inf)), NonFiniteValuesError, "'cpu_util'"),
        (lambda f: f.drop(columns=["lag_168", "hour_sin"]), FeatureMismatchError, "lag_168, hour_sin"),
    ],
    ids=["too_short", "gap", "duplicate", "nan", "inf", "columns"],
)
def test_each_validation_failure_names_itself(storj_data, damage, error, words):
    catalog, _, features = storj_data
    predictor = tiny_predictor(catalog, "storj", None)
    with pytest.raises(error) as caught:
        predictor.prepare_sequences(damage(features.copy()), fit=True)
    assert isinstance(caught.value, SequenceValidationError)
    assert str(caught.value).startswith(error.kind)
    assert words in str(caught.value)


def test_gaps_are_allowed_for_training_but_windows_never_cross_them(storj_data):
    catalog, _, features = storj_data
    predictor = tiny_predictor(catalog, "storj", None)
    full, _ = predictor.prepare_sequences(features, fit=True)
    gapped = features.drop(index=[100])
    X, _ = predictor.prepare_sequences(gapped, fit=True, allow_gaps=True)
    # the 24 windows (+ the one target) that touched hour 100 are gone
    assert len(X) == len(full) - 25


def test_trained_model_rejects_frames_without_its_features(trained):
    predictor, train, _ = trained
    with pytest.raises(FeatureMismatchError, match="trained on"):
        predictor.prepare_sequences(train.drop(columns=["volatility_24h"]))
    with pytest.raises(FeatureMismatchError):
        predictor.predict_next_24h(train[["ts", "earnings_usd"]])


# ----------------------------------------------------------------------------- training


def test_training_keeps_history_checkpoint_and_chronological_validation(trained):
    predictor, _, _ = trained
    assert predictor.epochs_run == 2
    assert {"loss", "val_loss", "mae", "val_mae", "mape"} <= set(predictor.history)
    assert all(len(v) == 2 for v in predictor.history.values() if isinstance(v, list))
    assert predictor.callback_names[:3] == ["EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"]
    assert predictor.checkpoint_path is not None and predictor.checkpoint_path.exists()
    saved = json.loads((predictor.checkpoint_path.parent / "history.json").read_text())
    assert saved["loss"] == pytest.approx(predictor.history["loss"])
    train_idx, val_idx = predictor.last_split
    assert train_idx.max() < val_idx.min()  # validation strictly after training windows
    assert len(val_idx) == pytest.approx(0.2 * (len(train_idx) + len(val_idx)), abs=1)


def test_early_stopping_restores_the_best_epoch(storj_data, tmp_path):
    catalog, _, features = storj_data
    # A learning rate this large diverges: early stopping must stop and keep the best epoch's weights.
    predictor = tiny_predictor(catalog, "storj", tmp_path, epochs=30, patience=2, learning_rate=0.5)
    predictor.train(features.iloc[:-72])
    assert predictor.epochs_run < 30
    best = int(np.argmin(predictor.history["val_loss"]))
    assert predictor.epochs_run == best + 1 + 2


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


def test_forecast_from_raw_telemetry_matches_forecast_from_features(trained, storj_data):
    predictor, train, _ = trained
    _, telemetry, _ = storj_data
    last = train["ts"].iloc[-1]
    raw = telemetry.loc[telemetry["ts"] <= last]
    np.testing.assert_allclose(predictor.predict_next_24h(raw), predictor.predict_next_24h(train), rtol=1e-5)


def test_predictions_are_fed_back_through_the_feature_functions(trained, monkeypatch):
    """With a network that always answers residual 0 the forecast is the origin's seasonal base, and every
    window the network sees after step 1 ends with the hour just predicted (earnings and ma_24h recomputed
    from a history that includes the predictions)."""
    predictor, train, _ = trained
    zero = -predictor.target_scaler.mean_[0] / predictor.target_scaler.scale_[0]
    seen: list[np.ndarray] = []

    def fake_network(x):
        seen.append(np.array(x[0], dtype=float))
        return np.array([[zero]], dtype=np.float32)

    monkeypatch.setattr(predictor, "_compiled", fake_network)
    monkeypatch.setattr(predictor.config, "residual_gain", 1.0)
    rows: list[float] = []
    real = predictor_module.next_earnings_row

    def spy(history, cursor, previous_ema):
        rows.append(float(history[cursor]))
        return real(history, cursor, previous_ema)

    monkeypatch.setattr(predictor_module, "next_earnings_row", spy)
    values = predictor.predict_next_24h(train)

    w24, w168, wseason, wrecent = predictor.config.base_weights
    floor = predictor.config.level_floor
    history = list(train["earnings_usd"].to_numpy())
    ts = pd.DatetimeIndex(train["ts"])
    season = lambda stamp: predictor._season(pd.DatetimeIndex([stamp]))[0]  # noqa: E731
    origin_level = max(np.mean(history[-24:]), floor)
    origin_recent = np.median([history[-k] / max(season(ts[-k]), 0.05) for k in range(1, 7)])
    # default path: the origin's allocation held; each lag is moved from the allocation it was observed at
    beta = predictor.config.allocation_beta
    alloc = np.clip(train["allocation"].to_numpy(dtype=float), 0.02, 1.0)
    scale = lambda h, lag: (alloc[-1] / alloc[-lag - 1 + h]) ** beta  # noqa: E731
    expected = [
        max(
            w24 * history[-24 + h - 1] * scale(h, 24)
            + w168 * history[-168 + h - 1] * scale(h, 168)
            + (wseason * origin_level + wrecent * origin_recent) * season(ts[-1] + pd.Timedelta(hours=h)),
            0.0,
        )
        for h in range(1, 25)
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-9)
    assert rows == list(values)  # every new feature row is built from the prediction just made

    scaler = predictor.feature_scaler
    e_col, ma_col = predictor._index["earnings_usd"], predictor._index["ma_24h"]
    for h in range(1, 24):
        history.append(values[h - 1])
        level = max(np.mean(history[-24:]), floor)
        last = seen[h][-1] * scaler.scale_ + scaler.mean_  # undo standardisation of the window's last row
        assert last[e_col] * level == pytest.approx(values[h - 1], rel=1e-5)
        assert last[ma_col] * level == pytest.approx(np.mean(history[-24:]), rel=1e-5)


def test_recomputed_rows_equal_the_feature_table_functions(storj_data):
    from earnopt_assets.ingestion.features import EARNINGS_FEATURES, earnings_features

    _, telemetry, _ = storj_data
    e = telemetry["earnings_usd"].to_numpy(dtype=float)[:400]
    full = earnings_features(e)
    for cursor in (200, 311, 399):
        row = predictor_module.next_earnings_row(e, cursor, full["ema_12"][cursor - 1])
        for name in EARNINGS_FEATURES:
            assert row[name] == pytest.approx(full[name][cursor], rel=1e-9, abs=1e-15), name


def test_forecast_needs_window_plus_lag_history(trained):
    predictor, train, _ = trained
    with pytest.raises((InsufficientHistoryError, MissingHoursError)):
        predictor.predict_next_24h(train.iloc[-30:])
    gapped = train.drop(index=train.index[-5])
    with pytest.raises(SequenceValidationError):
        predictor.predict_next_24h(gapped)


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
    catalog, _, features = storj_data
    predictor = tiny_predictor(catalog, "storj", tmp_path)
    with pytest.raises(ModelNotTrainedError):
        predictor.predict_next_24h(features)
    with pytest.raises(ModelNotTrainedError):
        predictor.save()


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path):
    predictor, train, holdout = trained
    predictor.model_dir = tmp_path
    predictor.evaluate(holdout, context=train)
    version_dir = predictor.save()
    assert {p.name for p in version_dir.iterdir()} == set(predictor_module.PART_FILES)
    assert current_version(tmp_path, "storj") == predictor.version == version_dir.name
    loaded = EarningsPredictor.load(tmp_path, "storj")
    np.testing.assert_array_equal(loaded.predict_next_24h(train), predictor.predict_next_24h(train))
    assert loaded.config.base_weights == predictor.config.base_weights
    assert loaded.metrics["model"]["mape"] == pytest.approx(predictor.metrics["model"]["mape"])
    assert loaded.history["loss"] == pytest.approx(predictor.history["loss"])
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["parameter_count"] == predictor.parameter_count() > 0


def test_crash_during_save_leaves_the_previous_model_loadable(trained, tmp_path, monkeypatch):
    predictor, train, _ = trained
    predictor.model_dir = tmp_path
    first = predictor.save()
    before = EarningsPredictor.load(tmp_path, "storj").predict_next_24h(train)

    def explode(*args, **kwargs):
        raise OSError("disk full (simulated) half way through the save")

    monkeypatch.setattr(predictor_module, "atomic_write_json", explode)
    with pytest.raises(OSError, match="simulated"):
        predictor.save()
    monkeypatch.undo()
    versions = tmp_path / "storj" / "versions"
    assert [p.name for p in versions.iterdir()] == [first.name]  # no half-written version, no staging dir
    assert current_version(tmp_path, "storj") == first.name
    np.testing.assert_array_equal(EarningsPredictor.load(tmp_path, "storj").predict_next_24h(train), before)


def test_load_validates_every_part(trained, tmp_path):
    predictor, _, _ = trained
    predictor.model_dir = tmp_path
    version_dir = predictor.save()
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "storj", copy / "storj")
    (copy / "storj" / "versions" / version_dir.name / "scaler.json").unlink()
    with pytest.raises(ModelLoadError, match="scaler.json"):
        EarningsPredictor.load(copy, "storj")
    config = version_dir / "config.json"
    config.write_text(config.read_text().replace('"timezone"', '"timezone" ', 1))
    with pytest.raises(ModelLoadError, match="checksum"):
        EarningsPredictor.load(tmp_path, "storj")
    with pytest.raises(ModelLoadError, match="no saved model"):
        EarningsPredictor.load(tmp_path, "akash")
    (tmp_path / "storj" / "CURRENT").write_text("20990101T000000000Z-deadbeef\n")
    with pytest.raises(ModelLoadError, match="does not exist"):
        EarningsPredictor.load(tmp_path, "storj")


def test_old_versions_are_pruned_but_recent_ones_stay_loadable(trained, tmp_path):
    predictor, train, _ = trained
    predictor.model_dir = tmp_path
    saved = [predictor.save().name for _ in range(5)]
    remaining = sorted(p.name for p in (tmp_path / "storj" / "versions").iterdir())
    assert remaining == saved[-predictor_module.KEEP_VERSIONS :]
    older = EarningsPredictor.load(tmp_path, "storj", remaining[0])
    assert older.version == remaining[0]
    assert len(older.predict_next_24h(train)) == 24
