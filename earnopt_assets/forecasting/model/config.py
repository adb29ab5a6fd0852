"""The ONE settings type of the earnings model (saved as ``config.json`` with every version).

It replaces the predictor's config, the training settings' model knobs and the batch/service copies:
the Dagster run config, GOVERN's training and the tests all build a :class:`ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from earnopt_assets.catalog import PROTOCOL_NAME_PATTERN

HORIZON_HOURS = 24
HEADS: tuple[str, ...] = ("direct", "recursive")
BLEND_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_protocol_name(name: str) -> str:
    """Protocol names become directory names: reject anything outside the catalog's safe alphabet."""
    if not isinstance(name, str) or not PROTOCOL_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid protocol name {name!r}; must match {PROTOCOL_NAME_PATTERN.pattern}")
    return name


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, training and data-window settings of one protocol's model.

    Network (seed design): LSTM(u1, return_sequences) → Dropout(d) → LSTM(u2) → Dropout(d) → Dense(k),
    ``lstm_units`` of length 1 drops the second LSTM; ``head="direct"`` → k = 24 outputs (one per horizon
    hour, one network call per forecast), ``head="recursive"`` → k = 1 (24 calls, each fed the previous
    prediction). Adam(``learning_rate``), MSE, early stopping on the validation loss (``patience``).

    Data: the network trains on every ``sample_stride_hours``-th origin of the last ``max_train_hours`` of
    the training frame (the cost cap: 365 days of history train in about the time 90 days do; the base
    still uses every training origin); ``validation_hours`` (default ``validation_fraction``
    of that window, at least 7 days) at its end are never trained on: early stopping and the blend weight
    between base and base + correction are chosen there. ``ensemble_size`` networks with seeds ``seed``,
    ``seed + 1``, ... are averaged. ``use_ets``: the base gets the frozen-parameter ETS term of
    :mod:`.ets` (fitted once per training, a matrix product per forecast). ``train_threads`` caps TensorFlow's intra/inter-op threads;
    ``train_nice`` is the niceness increment of the training worker (``os.nice``).
    """

    protocol: str
    head: str = "direct"
    sequence_length: int = 24
    lstm_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    learning_rate: float = 1e-3
    epochs: int = 30
    batch_size: int = 64
    patience: int = 3
    seed: int = 7
    ensemble_size: int = 1
    max_train_hours: int = 90 * 24
    validation_fraction: float = 0.2
    validation_hours: int | None = None
    min_validation_hours: int = 7 * 24
    sample_stride_hours: int = 2
    timezone: str = "UTC"
    train_threads: int = 1
    train_nice: int = 10
    blend_grid: tuple[float, ...] = BLEND_GRID
    use_ets: bool = True
    host_totals: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        check_protocol_name(self.protocol)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.sequence_length < 2:
            raise ValueError("sequence_length must be at least 2")
        units = tuple(int(u) for u in self.lstm_units)
        if len(units) not in (1, 2) or min(units) < 1:
            raise ValueError("lstm_units must be one or two positive layer sizes")
        object.__setattr__(self, "lstm_units", units)
        object.__setattr__(self, "blend_grid", tuple(float(g) for g in self.blend_grid))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError("validation_fraction must be in (0, 0.5)")
        if self.ensemble_size < 1 or self.epochs < 1 or self.batch_size < 1 or self.sample_stride_hours < 1:
            raise ValueError("ensemble_size, epochs, batch_size and sample_stride_hours must be >= 1")
        if self.max_train_hours < 14 * 24:
            raise ValueError("max_train_hours must cover at least 14 days (the base needs weeks of lags)")
        if self.train_threads < 1:
            raise ValueError("train_threads must be >= 1")
        if self.host_totals is not None:
            object.__setattr__(self, "host_totals", {str(k): float(v) for k, v in dict(self.host_totals).items()})

    @property
    def outputs(self) -> int:
        return HORIZON_HOURS if self.head == "direct" else 1

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lstm_units"] = list(self.lstm_units)
        data["blend_grid"] = list(self.blend_grid)
        data["host_totals"] = dict(self.host_totals) if self.host_totals is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}")
        values = dict(data)
        for name in ("lstm_units", "blend_grid"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)
