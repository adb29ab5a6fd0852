"""Which source serves each protocol's forecast in the service: the decision its latest training run recorded
(``<models>/serving/<protocol>.json``, :mod:`earnopt_assets.forecasting.registry`), re-read when the file
changes (checked at most every ``reload_seconds``). JSON only: no model, no TensorFlow."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from earnopt_assets.forecasting.registry import ServingDecision, read_serving_decision, serving_path


@dataclass
class ServingDecisions:
    models_dir: Path
    reload_seconds: float = 5.0
    _entries: dict[str, tuple[tuple | None, ServingDecision | None]] = field(default_factory=dict)
    _checked: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _stamp(self, protocol: str) -> tuple | None:
        try:
            stat = serving_path(self.models_dir, protocol).stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def get(self, protocol: str) -> ServingDecision | None:
        """The protocol's decision (None before any training run decided); the protocol is catalog-checked by the caller."""
        now = time.monotonic()
        entry = self._entries.get(protocol)
        if entry is not None and now - self._checked.get(protocol, 0.0) < self.reload_seconds:
            return entry[1]
        with self._lock:
            self._checked[protocol] = now
            stamp = self._stamp(protocol)
            entry = self._entries.get(protocol)
            if entry is None or entry[0] != stamp:
                entry = (stamp, read_serving_decision(self.models_dir, protocol) if stamp is not None else None)
                self._entries[protocol] = entry
            return entry[1]
