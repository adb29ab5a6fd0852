"""NumPy forward pass of the earnings LSTM, from weights exported at save time (no TensorFlow at serve time).

Layers as Keras 3 defines them (checked against keras 3.x, the installed version; a test proves equality
with Keras within 1e-5 for every architecture the config allows):

* LSTM(u), input x_s (C,), state (h, c) = 0 at s = 0; kernel K (C, 4u), recurrent kernel U (u, 4u),
  bias b (4u) with the gate blocks in the order i, f, c, o::

      g   = x_s K + h_{s-1} U + b
      i   = sigmoid(g[0:u]); f = sigmoid(g[u:2u]); c~ = tanh(g[2u:3u]); o = sigmoid(g[3u:4u])
      c_s = f * c_{s-1} + i * c~;   h_s = o * tanh(c_s)

  (recurrent activation = the exact logistic sigmoid, activation = tanh); ``return_sequences`` passes
  all h_s to the next layer, else only the last.
* Dropout: identity at inference.
* Dense(k): y = h W + b.

Everything is computed in float64 over a whole batch of windows (n, L, C) at once. The forward pass
reorders the gate blocks once per layer (i, f, o, c) and halves the three sigmoid gates' weights, so that
with sigmoid(v) = (1 + tanh(v / 2)) / 2 every step takes ONE tanh over all four blocks (halving is exact
in binary floating point: the same numbers as before, fewer NumPy calls per step); the input projection
of all steps is one GEMM.
Export format: ``network.json`` = ``{"members": [{"layers": [{"type": "lstm", "units": u,
"return_sequences": bool} | {"type": "dense", "units": k}], ...}]}`` and ``network.npz`` with arrays
``m{member}_l{layer}_{kernel|recurrent_kernel|bias}`` (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def gates_ifoc(kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras' gate blocks (i, f, c, o) reordered to (i, f, o, c), the three sigmoid gates' columns halved:
    a step then takes tanh of all four blocks at once (sigmoid(v) = (1 + tanh(v / 2)) / 2)."""
    units = recurrent.shape[0]
    order = np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]
    scale = np.r_[np.full(3 * units, 0.5), np.ones(units)]
    return (
        np.ascontiguousarray(kernel[:, order] * scale),
        np.ascontiguousarray(recurrent[:, order] * scale),
        np.ascontiguousarray(bias[order] * scale),
    )


def lstm_forward_ifoc(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, return_sequences: bool) -> np.ndarray:
    """The LSTM of the module docstring with the weights of :func:`gates_ifoc` (blocks i, f, o, c; the
    sigmoid blocks halved).

    The input part of every step is one GEMM over the whole sequence; each step then costs one
    ``h U`` GEMM and in-place elementwise work on preallocated buffers (no temporaries per gate; the
    first layer's h is written straight into its output sequence)."""
    n, steps, _ = x.shape
    units = recurrent.shape[0]
    projected = x @ kernel
    projected += bias  # (n, L, 4u)
    h = np.zeros((n, units))
    c = np.zeros((n, units))
    g = np.empty((n, 4 * units))
    scratch = np.empty((n, units))
    sig, candidate = g[:, : 3 * units], g[:, 3 * units :]
    i, f, o = sig[:, :units], sig[:, units : 2 * units], sig[:, 2 * units :]
    outputs = np.empty((n, steps, units)) if return_sequences else None
    for s in range(steps):
        np.matmul(h, recurrent, out=g)
        g += projected[:, s, :]
        np.tanh(g, out=g)  # sigmoid blocks: tanh(v / 2) (weights halved); candidate: tanh(v)
        sig += 1.0
        sig *= 0.5
        c *= f
        np.multiply(i, candidate, out=scratch)
        c += scratch
        np.tanh(c, out=scratch)
        if outputs is not None:
            h = outputs[:, s, :]
        np.multiply(o, scratch, out=h)
    return outputs if outputs is not None else h


def lstm_forward(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, return_sequences: bool) -> np.ndarray:
    """The LSTM of the module docstring with Keras' weight layout (gate blocks i, f, c, o)."""
    return lstm_forward_ifoc(np.asarray(x, dtype=np.float64), *gates_ifoc(kernel, recurrent, bias), return_sequences)


@dataclass
class NumpyNetwork:
    """One exported network: layer specs and their float64 weight arrays."""

    layers: list[dict[str, Any]]
    weights: list[dict[str, np.ndarray]]
    # (i, f, o, c)-ordered copies of the LSTM weights by layer, rebuilt if a weights array is replaced
    _fused: dict[int, tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _lstm_weights(self, index: int, w: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        source = (w["kernel"], w["recurrent_kernel"], w["bias"])
        cached = self._fused.get(index)
        if cached is None or any(a is not b for a, b in zip(cached[0], source)):
            cached = (source, gates_ifoc(*source))
            self._fused[index] = cached
        return cached[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(x, dtype=np.float64)
        for index, (spec, w) in enumerate(zip(self.layers, self.weights)):
            if spec["type"] == "lstm":
                out = lstm_forward_ifoc(out, *self._lstm_weights(index, w), bool(spec["return_sequences"]))
            elif spec["type"] == "dense":
                out = out @ w["kernel"] + w["bias"]
            else:  # pragma: no cover - rejected at load
                raise ValueError(f"unknown layer type {spec['type']!r}")
        return out

    @property
    def input_channels(self) -> int:
        return int(self.weights[0]["kernel"].shape[0])

    @property
    def outputs(self) -> int:
        return int(self.weights[-1]["kernel"].shape[1])

    def parameter_count(self) -> int:
        return int(sum(a.size for w in self.weights for a in w.values()))


@dataclass
class Ensemble:
    """The mean output of several exported networks (a seed ensemble; one member is the plain network)."""

    members: list[NumpyNetwork]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)

    def parameter_count(self) -> int:
        return sum(m.parameter_count() for m in self.members)

    @property
    def outputs(self) -> int:
        return self.members[0].outputs


def export_keras_model(model: Any) -> NumpyNetwork:
    """Layer specs + weights of a Keras Sequential of LSTM / Dropout / Dense layers (dropout skipped)."""
    layers: list[dict[str, Any]] = []
    weights: list[dict[str, np.ndarray]] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dropout":
            continue
        arrays = [np.asarray(a, dtype=np.float64) for a in layer.get_weights()]
        if kind == "LSTM":
            cfg = layer.get_config()
            if cfg.get("activation") != "tanh" or cfg.get("recurrent_activation") != "sigmoid" or not cfg.get("use_bias", True):
                raise ValueError(f"layer {layer.name}: only tanh/sigmoid LSTMs with bias are exportable")
            layers.append({"type": "lstm", "units": int(layer.units), "return_sequences": bool(layer.return_sequences)})
            weights.append({"kernel": arrays[0], "recurrent_kernel": arrays[1], "bias": arrays[2]})
        elif kind == "Dense":
            if layer.get_config().get("activation") not in ("linear", None):
                raise ValueError(f"layer {layer.name}: only linear Dense heads are exportable")
            layers.append({"type": "dense", "units": int(layer.units)})
            weights.append({"kernel": arrays[0], "bias": arrays[1]})
        else:
            raise ValueError(f"layer {layer.name}: {kind} has no NumPy forward pass")
    return NumpyNetwork(layers, weights)


def ensemble_to_arrays(ensemble: Ensemble) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(``network.json`` payload, ``network.npz`` arrays) of an ensemble."""
    spec = {"members": [{"layers": m.layers} for m in ensemble.members]}
    arrays: dict[str, np.ndarray] = {}
    for mi, member in enumerate(ensemble.members):
        for li, w in enumerate(member.weights):
            for name, array in w.items():
                arrays[f"m{mi}_l{li}_{name}"] = array
    return spec, arrays


def ensemble_from_arrays(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Ensemble:
    """Inverse of :func:`ensemble_to_arrays`, checking every shape against the layer specs."""
    members = []
    for mi, member in enumerate(spec["members"]):
        layers = [dict(layer) for layer in member["layers"]]
        weights = []
        previous: int | None = None
        for li, layer in enumerate(layers):
            kind, units = layer.get("type"), int(layer.get("units", 0))
            names = ("kernel", "recurrent_kernel", "bias") if kind == "lstm" else ("kernel", "bias") if kind == "dense" else None
            if names is None or units < 1:
                raise ValueError(f"member {mi} layer {li}: unknown layer {layer!r}")
            w = {}
            for name in names:
                key = f"m{mi}_l{li}_{name}"
                if key not in arrays:
                    raise ValueError(f"weights array {key} is missing")
                w[name] = np.asarray(arrays[key], dtype=np.float64)
            gates = 4 * units if kind == "lstm" else units
            if w["kernel"].ndim != 2 or w["kernel"].shape[1] != gates or w["bias"].shape != (gates,):
                raise ValueError(f"member {mi} layer {li}: kernel {w['kernel'].shape} / bias {w['bias'].shape} do not fit {units} units")
            if previous is not None and w["kernel"].shape[0] != previous:
                raise ValueError(f"member {mi} layer {li}: takes {w['kernel'].shape[0]} inputs, previous layer gives {previous}")
            if kind == "lstm" and w["recurrent_kernel"].shape != (units, gates):
                raise ValueError(f"member {mi} layer {li}: recurrent kernel {w['recurrent_kernel'].shape} does not fit {units} units")
            previous = units
            weights.append(w)
        members.append(NumpyNetwork(layers, weights))
    if not members:
        raise ValueError("network.json lists no ensemble member")
    if len({(m.input_channels, m.outputs) for m in members}) != 1:
        raise ValueError("ensemble members disagree on input channels or outputs")
    return Ensemble(members)


def stack_members(members: Sequence[NumpyNetwork]) -> Ensemble:
    return Ensemble(list(members))
