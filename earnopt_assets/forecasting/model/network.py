"""Keras build + train of the correction network (keras/TensorFlow imported inside functions only).

Serving never comes here: trained weights are exported to NumPy (:mod:`earnopt_assets.forecasting.inference`).
Training runs at low priority: :func:`lower_training_priority` renices the calling worker and
:func:`configure_tensorflow` caps TensorFlow's intra/inter-op thread pools before its first op.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earnopt_assets.forecasting.model.config import ModelConfig

log = logging.getLogger(__name__)

_tf_threads: int | None = None


def keras_module():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def configure_tensorflow(threads: int) -> int:
    """Cap TensorFlow's intra- and inter-op thread pools at ``threads`` (only possible before its first
    op: later calls keep the first setting and say so). Returns the setting in force."""
    global _tf_threads
    keras_module()
    import tensorflow as tf

    if _tf_threads is None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
            _tf_threads = int(threads)
        except RuntimeError:  # TensorFlow already initialised by someone else in this process
            _tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or -1
            log.info("TensorFlow was initialised before the thread cap; keeping %s threads", _tf_threads)
    elif _tf_threads != threads:
        log.info("TensorFlow thread pools already fixed at %s (asked %s)", _tf_threads, threads)
    return _tf_threads


def lower_training_priority(increment: int) -> int:
    """``os.nice(increment)`` for the CURRENT process: call it only in a training worker (the Dagster
    training step's process, a training subprocess), never in a long-lived process that also serves.
    Returns the new niceness (unchanged where the platform has no ``nice``)."""
    if increment <= 0 or not hasattr(os, "nice"):
        return os.nice(0) if hasattr(os, "nice") else 0
    return os.nice(int(increment))


def build_network(config: ModelConfig, channels: int, seed: int) -> Any:
    """LSTM(u1) → Dropout → [LSTM(u2) → Dropout] → Dense(outputs), compiled with Adam + MSE."""
    keras = keras_module()
    keras.utils.set_random_seed(int(seed))
    units = config.lstm_units
    layers: list[Any] = [keras.Input(shape=(config.sequence_length, channels), name="window")]
    for position, u in enumerate(units, start=1):
        layers.append(keras.layers.LSTM(u, return_sequences=position < len(units), name=f"lstm_{position}"))
        layers.append(keras.layers.Dropout(config.dropout, name=f"dropout_{position}"))
    layers.append(keras.layers.Dense(config.outputs, name="correction"))
    model = keras.Sequential(layers, name=f"earnings_lstm_{config.protocol}".replace("-", "_"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate), loss="mse", metrics=["mae"])
    return model


@dataclass
class NetworkFit:
    model: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))


def train_network(
    config: ModelConfig,
    X_train: np.ndarray,
    Y_train: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    seed: int,
    initial_weights: list[np.ndarray] | None = None,
    verbose: int = 0,
) -> NetworkFit:
    """Fit one network: EarlyStopping(val_loss, patience, best weights restored) and ReduceLROnPlateau.

    ``initial_weights`` (the champion's, same architecture) warm-starts the fit instead of a random init.
    """
    configure_tensorflow(config.train_threads)
    keras = keras_module()
    model = build_network(config, X_train.shape[2], seed)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, config.patience // 2), min_lr=1e-5),
    ]
    started = time.perf_counter()
    fitted = model.fit(
        X_train.astype(np.float32),
        Y_train.astype(np.float32),
        validation_data=(X_val.astype(np.float32), Y_val.astype(np.float32)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    return NetworkFit(model, history, time.perf_counter() - started)
