"""NumPy inference equals Keras for every architecture the config allows; serving never imports TensorFlow."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from earnopt_assets.forecasting.inference import (
    Ensemble,
    NumpyNetwork,
    ensemble_from_arrays,
    ensemble_to_arrays,
    export_keras_model,
    lstm_forward,
)
from earnopt_assets.forecasting.model.base import COMPONENTS, StatisticalBase
from earnopt_assets.forecasting.model.config import HORIZON_HOURS, ModelConfig
from earnopt_assets.forecasting.model.forecast import CHANNELS, FittedState
from earnopt_assets.forecasting.model.predictor import EarningsPredictor

ARCHITECTURES = [
    ("direct", (8, 4), 6),
    ("direct", (5,), 4),
    ("recursive", (7, 3), 5),
    ("recursive", (6,), 3),
    ("direct", (128, 64), 24),  # the seed architecture
]


@pytest.mark.parametrize(("head", "units", "steps"), ARCHITECTURES, ids=lambda v: str(v))
def test_numpy_forward_pass_equals_keras(head, units, steps):
    from earnopt_assets.forecasting.model.network import build_network

    config = ModelConfig(protocol="storj", head=head, lstm_units=units, sequence_length=steps)
    model = build_network(config, len(CHANNELS), seed=3)
    rng = np.random.default_rng(11)
    # random (not initial) weights, including biases, so every gate block matters
    model.set_weights([rng.normal(0.0, 0.4, size=w.shape).astype(np.float32) for w in model.get_weights()])
    x = rng.normal(size=(7, steps, len(CHANNELS))).astype(np.float32)
    expected = np.asarray(model(x, training=False), dtype=float)
    network = export_keras_model(model)
    got = network(x)
    assert got.shape == (7, config.outputs)
    difference = float(np.max(np.abs(got - expected)))
    print(f"max |numpy - keras| for {head} {units}: {difference:.2e}")
    assert difference < 1e-5
    # the exported arrays round-trip through npz (no pickle) unchanged
    spec, arrays = ensemble_to_arrays(Ensemble([network]))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        loaded = ensemble_from_arrays(spec, {k: npz[k] for k in npz.files})
    np.testing.assert_array_equal(loaded(x), got)


def test_lstm_gate_order_is_i_f_c_o():
    """A hand-set cell: only the input gate block open and the candidate block at +inf gives h = o * tanh(i)."""
    units = 1
    kernel = np.zeros((1, 4))
    recurrent = np.zeros((1, 4))
    bias = np.array([50.0, -50.0, 50.0, 0.0])  # i = 1, f = 0, c~ = tanh(50) = 1, o = sigmoid(0) = 0.5
    h = lstm_forward(np.zeros((1, 1, 1)), kernel, recurrent, bias, return_sequences=False)
    assert h.shape == (1, units)
    assert h[0, 0] == pytest.approx(0.5 * np.tanh(1.0), rel=1e-9)


def test_ensemble_is_the_mean_of_its_members_and_shapes_are_checked():
    rng = np.random.default_rng(2)

    def member(scale):
        return NumpyNetwork([{"type": "dense", "units": 2}], [{"kernel": np.full((3, 2), scale), "bias": np.zeros(2)}])

    x = rng.normal(size=(4, 3))
    ensemble = Ensemble([member(1.0), member(3.0)])
    np.testing.assert_allclose(ensemble(x), member(2.0)(x))
    spec, arrays = ensemble_to_arrays(ensemble)
    arrays["m1_l0_kernel"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="kernel"):
        ensemble_from_arrays(spec, arrays)


def untrained_but_complete(models_dir, protocol="storj", head="direct", units=(6, 3)) -> EarningsPredictor:
    """A model with random weights and a plain base: enough to save, load and forecast without training."""
    rng = np.random.default_rng(5)
    config = ModelConfig(protocol=protocol, head=head, lstm_units=units, sequence_length=24)
    sizes = [len(CHANNELS), *units]
    layers, weights = [], []
    for i, u in enumerate(units):
        layers.append({"type": "lstm", "units": u, "return_sequences": i < len(units) - 1})
        weights.append({"kernel": rng.normal(0, 0.2, (sizes[i], 4 * u)), "recurrent_kernel": rng.normal(0, 0.2, (u, 4 * u)), "bias": np.zeros(4 * u)})
    layers.append({"type": "dense", "units": config.outputs})
    weights.append({"kernel": rng.normal(0, 0.1, (units[-1], config.outputs)), "bias": np.zeros(config.outputs)})
    model = EarningsPredictor(config, models_dir)
    model.network = Ensemble([NumpyNetwork(layers, weights)])
    base = StatisticalBase(np.tile(np.eye(len(COMPONENTS))[3], (HORIZON_HOURS, 1)))
    model.state = FittedState(base, None, 0.01, np.zeros(len(CHANNELS)), np.ones(len(CHANNELS)), 0.0, 0.1, 1.0)
    return model


def _series(hours=400):
    import pandas as pd

    ts = pd.date_range("2026-05-01", periods=hours, freq="h")
    hour = ts.hour.to_numpy()
    earnings = 1.0 + 0.5 * np.sin(2 * np.pi * hour / 24)
    return pd.DataFrame({"ts": ts, "earnings_usd": earnings, "allocation": 0.5})


@pytest.mark.parametrize("head", ["direct", "recursive"])
def test_saved_model_forecasts_identically_after_load(tmp_path, head):
    model = untrained_but_complete(tmp_path, head=head)
    frame = _series()
    before = model.predict_next_24h(frame)
    assert before.shape == (24,) and np.isfinite(before).all() and (before >= 0).all()
    model.save(promote=True)
    loaded = EarningsPredictor.load(tmp_path, "storj")
    np.testing.assert_array_equal(loaded.predict_next_24h(frame), before)


@pytest.mark.slow
def test_serving_loads_and_forecasts_without_importing_tensorflow(tmp_path):
    """A fresh interpreter imports the service app factory, loads a saved model through the service's
    adapter and forecasts: TensorFlow and Keras must never be imported."""
    model = untrained_but_complete(tmp_path)
    model.save(promote=True)
    script = textwrap.dedent(
        f"""
        import sys
        import pandas as pd, numpy as np
        from pathlib import Path
        from earnopt_assets.service.app import create_app
        from earnopt_assets.service import forecast_adapter
        from earnopt_assets.forecasting.batch import prepare_origin
        models = Path({str(tmp_path)!r})
        model = forecast_adapter.load_predictor(models, "storj")
        forecaster = forecast_adapter.batched_forecaster(model)
        ts = pd.date_range("2026-05-01", periods=400, freq="h")
        frame = pd.DataFrame({{"ts": ts, "earnings_usd": 1.0 + 0.5 * np.sin(np.arange(400) / 4), "allocation": 0.5}})
        values = forecaster.forecast([prepare_origin(model, frame)])
        assert values.shape == (1, 24) and np.isfinite(values).all()
        loaded = [m for m in ("tensorflow", "keras") if m in sys.modules]
        print("LOADED", loaded)
        sys.exit(1 if loaded else 0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LOADED []" in done.stdout
