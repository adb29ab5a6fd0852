"""Prometheus metrics for the service, on a registry owned by each app (tests build many apps).

Request metrics are updated by the request middleware. Model ages, the latest forecast per protocol and
open alerts are computed at scrape time by :class:`StateCollector`, so they are never stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("earnopt.service")

# Latency buckets tuned for a service whose target p99 is 50 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "earnopt_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "earnopt_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "earnopt_predictions_total",
            "Earnings predictions served, by protocol and source (model or baseline).",
            ["protocol", "source"],
            registry=self.registry,
        )
        self.train_launches = Counter(
            "earnopt_train_runs_launched_total",
            "Training runs launched through /train, by protocol.",
            ["protocol"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def add_state_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Scrape-time gauges from the loaded models and the warehouse (read-only, short connection).

    ``snapshot`` returns ``{"models": {protocol: trained_at_epoch}, "forecasts": {protocol: (value,
    target_epoch)}, "alerts": {(protocol, severity): count}, "telemetry_age": seconds|None}``.
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            snap = self._snapshot()
        except Exception:  # a scrape must not fail because the warehouse is busy
            log.exception("metrics snapshot failed")
            snap = {}
        now = time.time()
        loaded = GaugeMetricFamily("earnopt_model_loaded", "1 if the protocol's forecasting model is loaded.", labels=["protocol"])
        ages = GaugeMetricFamily("earnopt_model_age_seconds", "Seconds since the loaded model was trained.", labels=["protocol"])
        for protocol, trained_at in sorted(snap.get("models", {}).items()):
            loaded.add_metric([protocol], 1.0)
            if trained_at is not None:
                ages.add_metric([protocol], max(0.0, now - trained_at))
        yield loaded
        yield ages
        forecast = GaugeMetricFamily(
            "earnopt_latest_forecast_usd", "Latest stored forecast ($/h) for the next target hour.", labels=["protocol", "source"]
        )
        for protocol, (value, source) in sorted(snap.get("forecasts", {}).items()):
            forecast.add_metric([protocol, source or "unknown"], float(value))
        yield forecast
        alerts = GaugeMetricFamily("earnopt_open_alerts", "Open alerts by protocol and severity.", labels=["protocol", "severity"])
        for (protocol, severity), count in sorted(snap.get("alerts", {}).items()):
            alerts.add_metric([protocol, severity], float(count))
        yield alerts
        telemetry_age = snap.get("telemetry_age")
        if telemetry_age is not None:
            yield GaugeMetricFamily(
                "earnopt_telemetry_age_seconds", "Seconds since the newest raw_earnings hour.", value=float(telemetry_age)
            )
