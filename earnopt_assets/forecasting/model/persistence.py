"""Save/load of the earnings model through the versioned :class:`earnopt_assets.modelstore.ModelStore`.

A version (``<models>/lstm/<protocol>/versions/<version>/``) holds ``config.json`` (:class:`ModelConfig`),
``state.json`` (base weights, beta, scalers, blend), ``network.json`` + ``network.npz`` (NumPy weights of
every ensemble member, :mod:`earnopt_assets.forecasting.inference`; loaded with ``allow_pickle=False``),
``history.json``, ``metrics.json`` and ``metadata.json`` (sha256 of every other part, format version).
The store adds ``MANIFEST.json``. Saving lands a version in ``versions/`` WITHOUT moving ``CURRENT``
(``promote=True`` or :meth:`ModelStore.promote` does that: a governance decision). No Keras file is
written or read: serving never needs TensorFlow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from earnopt_assets.atomic import atomic_write_json
from earnopt_assets.forecasting.inference import ensemble_from_arrays, ensemble_to_arrays
from earnopt_assets.forecasting.model.config import ModelConfig, check_protocol_name
from earnopt_assets.forecasting.model.errors import ModelLoadError, ModelNotTrainedError
from earnopt_assets.forecasting.model.forecast import FittedState
from earnopt_assets.modelstore import ModelStore, ModelStoreError, sha256_file

log = logging.getLogger(__name__)

MODEL_KIND = "lstm"
MODEL_FORMAT_VERSION = 4
# format 3 = before the frozen-ETS base term: still read (its base loads with the ETS weight 0, same forecasts)
READABLE_FORMAT_VERSIONS: tuple[int, ...] = (3, MODEL_FORMAT_VERSION)
KEEP_VERSIONS = 3
METADATA_FILE = "metadata.json"
PART_FILES: tuple[str, ...] = ("config.json", "state.json", "network.json", "network.npz", "history.json", "metrics.json", METADATA_FILE)


def model_store(models_dir: str | Path) -> ModelStore:
    return ModelStore(models_dir, MODEL_KIND)


def model_root(models_dir: str | Path, protocol: str) -> Path:
    """Directory of one protocol's model versions and its CURRENT pointer."""
    return model_store(models_dir).model_dir(check_protocol_name(protocol))


def current_version(models_dir: str | Path, protocol: str) -> str | None:
    """The version CURRENT names, or None when the protocol has no promoted model."""
    return model_store(models_dir).current(check_protocol_name(protocol))


def _json_safe(obj: Any) -> Any:
    from earnopt_assets.forecasting.model.predictor import _json_safe as safe

    return safe(obj)


def save_model(model: Any, store: ModelStore | str | Path | None, extra_metadata: Mapping[str, Any] | None, *, promote: bool = False) -> Path:
    """Stage every part, rename the version into place, optionally promote, prune; return its directory."""
    if not model.is_fitted:
        raise ModelNotTrainedError(f"{model.protocol}: nothing to save; train first")
    if store is None:
        if model.model_dir is None:
            raise ValueError("save() needs a ModelStore or the model's model_dir")
        store = model_store(model.model_dir)
    elif not isinstance(store, ModelStore):
        store = model_store(store)
    spec, arrays = ensemble_to_arrays(model.network)
    with store.stage(model.protocol, mutable=(METADATA_FILE,)) as staged:
        directory = Path(staged)
        parts = {
            "config.json": model.config.to_json(),
            "state.json": model.state.to_json(),
            "network.json": spec,
            "history.json": model.history,
            "metrics.json": model.metrics,
        }
        for name, payload in parts.items():
            atomic_write_json(directory / name, _json_safe(payload))
        with open(directory / "network.npz", "wb") as handle:
            np.savez(handle, **arrays)
        metadata = {
            "protocol": model.protocol,
            "version": staged.version,
            "kind": MODEL_KIND,
            "format_version": MODEL_FORMAT_VERSION,
            "trained_at": model.trained_at,
            "training_seconds": model.training_seconds,
            "epochs_run": model.epochs_run,
            "parameter_count": model.parameter_count(),
            "head": model.config.head,
            "ensemble_size": len(model.network.members),
            "blend": model.state.blend,
            "validation_mape_by_blend": model.state.validation_scores,
            "naive_weight": model.state.naive_weight,  # weight of the weekly seasonal naive in the combination
            "naive_kind": model.state.naive_kind,
            "training": model.training.to_json() if getattr(model, "training", None) is not None else None,
            "allocation_beta": model.state.allocation_beta,
            "allocation_response": model.state.allocation_response,
            "files": {name: sha256_file(directory / name) for name in PART_FILES if name != METADATA_FILE},
            **dict(extra_metadata or {}),
        }
        atomic_write_json(directory / METADATA_FILE, _json_safe(metadata))
    model.version = staged.version
    if promote:
        store.promote(model.protocol, staged.version)
    store.prune(model.protocol, keep=KEEP_VERSIONS)
    log.info("%s saved model version %s (%s)", model.protocol, staged.version, "promoted" if promote else "not promoted")
    return staged.path


def load_model(cls: type, models_dir: str | Path, protocol: str, version: str | None = None) -> Any:
    """Load ``version`` (default: CURRENT) after checking the manifest, every part's sha256 and their agreement."""
    store = model_store(models_dir)
    check_protocol_name(protocol)
    version = version or store.current(protocol)
    if version is None:
        raise ModelLoadError(f"no saved model for {protocol!r} under {store.model_dir(protocol)}")
    try:
        directory = store.path(protocol, version)
    except ValueError as exc:
        raise ModelLoadError(f"{protocol}: {exc}") from None
    if not directory.is_dir():
        raise ModelLoadError(f"{protocol}: version {version!r} does not exist ({directory})")
    missing = [name for name in PART_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(f"{protocol} {version}: missing part(s) {', '.join(missing)} in {directory}")
    try:
        store.verify(protocol, version)
    except ModelStoreError as exc:
        raise ModelLoadError(f"{protocol} {version}: {exc} (checksum)") from None
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        for name, digest in metadata.get("files", {}).items():
            if sha256_file(directory / name) != digest:
                raise ModelLoadError(f"{protocol} {version}: {name} does not match its checksum in metadata.json")
        format_version = int(metadata.get("format_version", 0))
        if format_version not in READABLE_FORMAT_VERSIONS:
            raise ModelLoadError(f"{protocol} {version}: model format {format_version}, this code reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}")
        config = ModelConfig.from_json(json.loads((directory / "config.json").read_text(encoding="utf-8")))
        state = FittedState.from_json(json.loads((directory / "state.json").read_text(encoding="utf-8")))
        spec = json.loads((directory / "network.json").read_text(encoding="utf-8"))
        with np.load(directory / "network.npz", allow_pickle=False) as npz:
            network = ensemble_from_arrays(spec, {k: npz[k] for k in npz.files})
        history = json.loads((directory / "history.json").read_text(encoding="utf-8"))
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{protocol} {version}: unreadable part in {directory}: {exc}") from exc
    if config.protocol != protocol or metadata.get("protocol") != protocol:
        raise ModelLoadError(f"{directory}: saved for protocol {config.protocol!r}, asked for {protocol!r}")
    if metadata.get("allocation_beta") != state.allocation_beta:
        raise ModelLoadError(f"{protocol} {version}: allocation_beta in metadata.json ({metadata.get('allocation_beta')}) differs from state.json ({state.allocation_beta})")
    expected_inputs = len(state.channel_mean)
    for member in network.members:
        if member.input_channels != expected_inputs or member.outputs != config.outputs:
            raise ModelLoadError(
                f"{protocol} {version}: network takes {member.input_channels} channels / gives {member.outputs} outputs, "
                f"config says {expected_inputs} / {config.outputs}"
            )
    model = cls(config, models_dir)
    model.state, model.network = state, network
    model.history, model.metrics, model.version = history, metrics, version
    model.trained_at = metadata.get("trained_at")
    model.training_seconds = metadata.get("training_seconds")
    model.epochs_run = metadata.get("epochs_run")
    log.info("loaded %s model %s: %d parameters, head %s, blend %.2f", protocol, version, model.parameter_count(), config.head, state.blend)
    return model
