"""The light-tenant levers of the service (issue 16 §2): what it does NOT load at start, and that the
faster NumPy forward pass answers exactly what the reference recurrence answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from earnopt_assets.service.state import DetectorHolder
from earnopt_assets_tests.service.helpers import train_tiny_detector


def test_the_detector_is_found_at_start_and_loaded_on_first_use(small_catalog, data_dir: Path):
    models = data_dir / "models"
    holder = DetectorHolder(models / "anomaly")
    holder.probe()
    assert not holder.available and holder.error and holder.get() is None  # nothing saved yet
    train_tiny_detector(small_catalog, models)
    holder = DetectorHolder(models / "anomaly")
    holder.probe()
    assert holder.available and holder.detector is None and holder.error is None  # found, not loaded
    detector = holder.get()
    assert detector is not None and holder.detector is detector and holder.get() is detector  # loaded once


def test_a_corrupt_saved_detector_is_reported_on_first_use(small_catalog, data_dir: Path):
    models = data_dir / "models"
    train_tiny_detector(small_catalog, models)
    for path in (models / "anomaly").rglob("*"):
        if path.is_file() and path.suffix not in (".json", "") and path.name != "CURRENT":
            path.write_bytes(b"not a model")
    holder = DetectorHolder(models / "anomaly")
    holder.probe()
    assert holder.available
    assert holder.get() is None and holder.error and not holder.available


def test_service_start_imports_no_anomaly_or_training_stack(small_catalog_path: Path, data_dir: Path):
    """Start (state + every model + the detector probe) must not import scikit-learn, skops, SciPy,
    statsforecast or TensorFlow: they cost ~1.7 s CPU and ~75 MB RSS the forecasts never use."""
    code = (
        "import sys\n"
        "from earnopt_assets.service.app import create_app\n"
        "from earnopt_assets.service.settings import ServiceSettings\n"
        "from earnopt_assets.service.state import ServiceState\n"
        f"state = ServiceState(ServiceSettings(data_dir={str(data_dir)!r}, catalog={str(small_catalog_path)!r}))\n"
        "state.startup()\n"
        "print(' '.join(m for m in ('sklearn', 'skops', 'scipy', 'statsforecast', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def _reference_lstm(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, return_sequences: bool) -> np.ndarray:
    """The Keras recurrence written out gate by gate (blocks i, f, c, o), one window at a time."""
    units = recurrent.shape[0]
    out = []
    for window in x:
        h, c, seq = np.zeros(units), np.zeros(units), []
        for step in window:
            g = step @ kernel + h @ recurrent + bias
            i, f = 1 / (1 + np.exp(-g[:units])), 1 / (1 + np.exp(-g[units : 2 * units]))
            candidate, o = np.tanh(g[2 * units : 3 * units]), 1 / (1 + np.exp(-g[3 * units :]))
            c = f * c + i * candidate
            h = o * np.tanh(c)
            seq.append(h)
        out.append(np.stack(seq) if return_sequences else h)
    return np.stack(out)


@pytest.mark.parametrize("batch", [1, 5])
def test_fused_gate_forward_equals_the_reference_recurrence(batch: int):
    from earnopt_assets.forecasting.inference import NumpyNetwork

    rng = np.random.default_rng(3)
    layers = [{"type": "lstm", "units": 16, "return_sequences": True}, {"type": "lstm", "units": 8, "return_sequences": False}, {"type": "dense", "units": 24}]
    weights = [
        {"kernel": rng.normal(0, 0.3, (5, 64)), "recurrent_kernel": rng.normal(0, 0.3, (16, 64)), "bias": rng.normal(0, 0.3, 64)},
        {"kernel": rng.normal(0, 0.3, (16, 32)), "recurrent_kernel": rng.normal(0, 0.3, (8, 32)), "bias": rng.normal(0, 0.3, 32)},
        {"kernel": rng.normal(0, 0.3, (8, 24)), "bias": rng.normal(0, 0.3, 24)},
    ]
    network = NumpyNetwork(layers, weights)
    x = rng.normal(size=(batch, 12, 5))
    hidden = _reference_lstm(x, *weights[0].values(), True)
    expected = _reference_lstm(hidden, *weights[1].values(), False) @ weights[2]["kernel"] + weights[2]["bias"]
    np.testing.assert_allclose(network(x), expected, rtol=0, atol=1e-12)
    # the reordered weights are cached per layer, and rebuilt when a weights array is replaced
    weights[0]["bias"] = weights[0]["bias"] + 0.5
    hidden = _reference_lstm(x, *weights[0].values(), True)
    expected = _reference_lstm(hidden, *weights[1].values(), False) @ weights[2]["kernel"] + weights[2]["bias"]
    np.testing.assert_allclose(network(x), expected, rtol=0, atol=1e-12)


def test_statistical_sources_grid_the_posted_columns_as_the_frame_path_does():
    """The no-DataFrame context of a statistical answer equals ``OriginContext.from_frame`` (unordered rows, gaps)."""
    import pandas as pd

    from earnopt_assets.forecasting.candidates import OriginContext, statistical_candidates
    from earnopt_assets.service.telemetry import hourly_grid

    rng = np.random.default_rng(4)
    ts = pd.date_range("2026-11-01", periods=400, freq="h").to_numpy()
    keep = np.sort(rng.choice(400, size=380, replace=False))  # 20 missing hours
    order = rng.permutation(len(keep))
    ts_posted = ts[keep][order]
    earnings = rng.gamma(2.0, 0.01, len(keep))
    allocation = rng.uniform(0.2, 1.0, len(keep))
    frame = pd.DataFrame({"ts": ts_posted, "earnings_usd": earnings, "allocation": allocation})
    expected = OriginContext.from_frame(frame)
    grid, values = hourly_grid(ts_posted.astype("datetime64[ns]").astype(np.int64), {"earnings_usd": earnings, "allocation": allocation})
    context = OriginContext(ts=grid, earnings=values["earnings_usd"], allocation=values["allocation"])
    np.testing.assert_array_equal(context.ts, expected.ts)
    np.testing.assert_array_equal(context.earnings, expected.earnings)
    np.testing.assert_array_equal(context.allocation, expected.allocation)
    for name in ("seasonal_naive_24", "seasonal_naive_168"):
        candidate = statistical_candidates()[name]
        np.testing.assert_array_equal(candidate(context), candidate(expected))
    # rows so sparse that the grid would dwarf them are left to the frame path
    assert hourly_grid(np.array([0, 1000 * 3_600_000_000_000]), {"earnings_usd": np.ones(2)}) is None
