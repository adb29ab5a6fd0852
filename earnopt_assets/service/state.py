"""What the service holds in memory between requests: settings, catalog, loaded models, the anomaly
detector, the allocator and the training launcher. Built by the app's lifespan; released on shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from earnopt_assets.catalog import Catalog, ProtocolSpec, UnknownProtocolError, load_catalog
from earnopt_assets.service import forecast_adapter
from earnopt_assets.service.errors import NotFound
from earnopt_assets.service.metrics import ServiceMetrics
from earnopt_assets.service.prediction import IntervalCache
from earnopt_assets.service.serving import ServingDecisions
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets.service.training import GraphQLTrainLauncher, InstanceTrainLauncher

log = logging.getLogger("earnopt.service")


@dataclass
class LoadedModel:
    protocol: str
    predictor: Any | None
    version: str | None
    trained_at: datetime | None
    metadata: dict[str, Any]
    fingerprint: tuple | None
    error: str | None = None
    forecaster: Any | None = None  # BatchedForecaster of ``predictor``

    @property
    def loaded(self) -> bool:
        return self.predictor is not None


@dataclass
class ModelRegistry:
    """Forecasting models by protocol. A model whose files changed on disk (a finished training run) is
    reloaded on the next request after ``reload_seconds``; a model that fails to load keeps the last good
    one in memory and records the error."""

    models_dir: Path
    protocols: list[str]
    reload_seconds: float = 5.0
    entries: dict[str, LoadedModel] = field(default_factory=dict)
    _checked: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _load(self, protocol: str, previous: LoadedModel | None) -> LoadedModel:
        fingerprint = forecast_adapter.model_fingerprint(self.models_dir, protocol)
        if fingerprint is None:
            return LoadedModel(protocol, None, None, None, {}, None, error="no trained model")
        try:
            predictor = forecast_adapter.load_predictor(self.models_dir, protocol)
            forecaster = forecast_adapter.batched_forecaster(predictor)
        except Exception as exc:  # corrupt files must not take the service down
            log.warning("cannot load model for %s from %s: %s", protocol, self.models_dir, exc)
            if previous is not None and previous.loaded:
                return LoadedModel(
                    protocol, previous.predictor, previous.version, previous.trained_at, previous.metadata,
                    fingerprint, error=f"newer files failed to load, serving the previous version: {exc}",
                    forecaster=previous.forecaster,
                )
            return LoadedModel(protocol, None, None, None, {}, fingerprint, error=f"model files failed to load: {exc}")
        info = forecast_adapter.describe(predictor)
        log.info("loaded model %s version %s", protocol, info["version"])
        return LoadedModel(protocol, predictor, info["version"], info["trained_at"], info["metadata"], fingerprint, forecaster=forecaster)

    def load_all(self) -> None:
        for protocol in self.protocols:
            self.entries[protocol] = self._load(protocol, None)
            self._checked[protocol] = time.monotonic()

    def peek(self, protocol: str) -> LoadedModel | None:
        """The entry if no freshness check is due (no I/O at all), else None."""
        entry = self.entries.get(protocol)
        if entry is not None and time.monotonic() - self._checked.get(protocol, 0.0) < self.reload_seconds:
            return entry
        return None

    def get(self, protocol: str) -> LoadedModel:
        now = time.monotonic()
        entry = self.entries.get(protocol)
        if entry is not None and now - self._checked.get(protocol, 0.0) < self.reload_seconds:
            return entry
        with self._lock:
            entry = self.entries.get(protocol)
            self._checked[protocol] = now
            fingerprint = forecast_adapter.model_fingerprint(self.models_dir, protocol)
            if entry is None or fingerprint != entry.fingerprint:
                entry = self._load(protocol, entry)
                self.entries[protocol] = entry
            return entry

    def loaded(self) -> list[LoadedModel]:
        return [e for e in self.entries.values() if e.loaded]

    def close(self) -> None:
        self.entries.clear()
        self._checked.clear()


@dataclass
class DetectorHolder:
    """The anomaly detector, loaded on first use: loading it imports scikit-learn, skops and SciPy
    (~1.7 s CPU, ~75 MB RSS), which the forecasting service should not pay at start. :meth:`probe` (at
    start) only looks for the saved files; :meth:`get` loads them, and reloads after a retraining."""

    directory: Path
    detector: Any | None = None
    error: str | None = None
    fingerprint: tuple | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _fingerprint(self) -> tuple | None:
        from earnopt_assets.anomaly.detector import DETECTOR_NAME, detector_store

        return detector_store(self.directory).fingerprint(DETECTOR_NAME)

    def probe(self) -> None:
        """Record whether a detector is saved, without loading it."""
        self.fingerprint = self._fingerprint()
        self.detector = None
        self.error = None if self.fingerprint is not None else f"no anomaly detector saved under {self.directory}"

    @property
    def available(self) -> bool:
        """A detector is loaded, or saved and not (yet) known to fail loading."""
        return self.detector is not None or (self.fingerprint is not None and self.error is None)

    def load(self) -> None:
        self.fingerprint = self._fingerprint()
        if self.fingerprint is None:
            self.detector, self.error = None, f"no anomaly detector saved under {self.directory}"
            return
        from earnopt_assets.anomaly.detector import AnomalyDetector

        try:
            self.detector, self.error = AnomalyDetector.load(self.directory), None
        except Exception as exc:
            log.warning("cannot load anomaly detector: %s", exc)
            self.error = f"anomaly detector failed to load: {exc}"  # a previously loaded one keeps serving

    def get(self) -> Any | None:
        with self._lock:
            fingerprint = self._fingerprint()
            if fingerprint != self.fingerprint or (self.detector is None and fingerprint is not None and self.error is None):
                self.load()
            return self.detector


class PredictionCache:
    """LRU of encoded prediction responses by key, plus single-flight: concurrent misses on one key await the
    same computation. Only successful answers are stored (errors are recomputed, they are cheap)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        if self.size <= 0:
            return None
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return item

    def put(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    async def compute_once(self, key: str, compute: Callable[[], Awaitable[Any]], encode: Callable[[Any], Any] = lambda v: v) -> Any:
        self.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        except BaseException:  # cancelled: waiters retry on their own
            future.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        self.put(key, encode(value))
        return value

    def clear(self) -> None:
        self._items.clear()


class ServiceState:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.metrics = ServiceMetrics()
        self.catalog: Catalog = load_catalog(settings.catalog)
        self.models = ModelRegistry(self.paths.models, self.catalog.enabled_names, settings.model_reload_seconds)
        self.detector = DetectorHolder(self.paths.models / "anomaly")
        self.predictions = PredictionCache(settings.prediction_cache_size)
        self.serving = ServingDecisions(self.paths.models, settings.model_reload_seconds)
        self.launcher: InstanceTrainLauncher | GraphQLTrainLauncher
        if settings.dagster_graphql_url:
            self.launcher = GraphQLTrainLauncher(settings.dagster_graphql_url, job_name=settings.train_job)
        else:
            self.launcher = InstanceTrainLauncher(
                settings.resolved_dagster_home,
                job_name=settings.train_job,
                workspace_module=settings.workspace_module,
                data_dir=self.paths.data_dir,
                catalog_path=Path(settings.catalog),
            )
        self.batcher: Any = None  # PredictionBatcher, created in the running event loop by the app's lifespan
        self.request_forecaster: Any = None  # prediction.RequestForecaster: what the batcher runs for /predict/earnings
        self.intervals = IntervalCache()
        self._allocator: Any = None
        self._allocator_lock = threading.Lock()
        self.started_at = datetime.now(UTC)

    def startup(self) -> None:
        self.models.load_all()
        self.detector.probe()
        log.info(
            "earnopt service ready: %d/%d models loaded, anomaly detector %s",
            len(self.models.loaded()), len(self.catalog.enabled_names), "saved (loads on first use)" if self.detector.available else "absent",
        )

    def shutdown(self) -> None:
        self.predictions.clear()
        self.models.close()
        self.detector.detector = None
        self.launcher.close()
        self._allocator = None

    def protocol(self, name: str) -> ProtocolSpec:
        """The catalog gate: unknown names become a 404 before they touch a path or a query."""
        try:
            return self.catalog.require(name)
        except UnknownProtocolError as exc:
            raise NotFound(str(exc), problem="unknown-protocol") from None

    def allocator(self) -> Any:
        from earnopt_assets.allocation.allocator import ResourceAllocator, ResourceConstraints

        with self._allocator_lock:
            if self._allocator is None:
                self._allocator = ResourceAllocator(ResourceConstraints.from_totals(self.catalog.host.available()))
            return self._allocator

    @property
    def db_path(self) -> Path:
        return self.paths.warehouse
