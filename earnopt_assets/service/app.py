"""The FastAPI application: ``create_app(settings)`` for tests and embedding, ``run_server`` for
``earnopt serve``.

Startup (lifespan) loads the catalog, every available forecasting model (compiled forward pass traced
once) and the anomaly detector; shutdown drops them. CPU-bound endpoints are plain ``def`` so FastAPI
runs them in its threadpool, off the event loop.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from earnopt_assets.api_schemas import state_the_contract
from earnopt_assets.service.errors import install_problem_handlers
from earnopt_assets.service.metrics import StateCollector
from earnopt_assets.service.middleware import BodySizeLimitMiddleware, RequestLogMiddleware
from earnopt_assets.service.routers import allocation, anomalies, forecasts, models, ops, predict, training
from earnopt_assets.service.settings import ServiceSettings
from earnopt_assets.service.state import ServiceState

log = logging.getLogger("earnopt.service")

DESCRIPTION = """
Serves what the earnopt asset graph produces: per-protocol earnings forecasts (LSTM, seasonal-naive
fallback), allocation optimisation with the full reallocation analysis, anomaly scoring, model metadata,
health and Prometheus metrics. Training runs through Dagster (`POST /train/{protocol}` → `GET /runs/{id}`).

Errors are `application/problem+json` (RFC 7807). `POST /train` needs `Authorization: Bearer <token>`.
"""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from fastapi.concurrency import run_in_threadpool

        from earnopt_assets.service.batcher import PredictionBatcher

        state = ServiceState(settings)
        await run_in_threadpool(state.startup)
        state.batcher = PredictionBatcher(
            max_batch=settings.predict_batch_max,
            max_wait_s=settings.predict_batch_wait_ms / 1000.0,
            timeout_s=settings.predict_timeout_seconds,
        )
        state.request_forecaster = predict.request_forecaster()
        # Startup leaves millions of long-lived objects (TensorFlow, Keras, pandas, the models); a full
        # garbage collection scanning them stalls the event loop for ~100-200 ms under load. Freeze them
        # out of the collector's generations (requests' own garbage is still collected).
        gc.collect()
        gc.freeze()
        state.metrics.add_state_collector(StateCollector(lambda: ops.metrics_snapshot(state)))
        app.state.earnopt = state
        middleware_metrics.target = state.metrics
        try:
            yield
        finally:
            await state.batcher.close()
            state.shutdown()
            log.info("earnopt service stopped; models released")

    app = FastAPI(
        title="earnopt ML service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    middleware_metrics = _MetricsProxy()
    # Order: added last = outermost. CORS answers preflights before the size check; the log sees everything.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )
    app.add_middleware(RequestLogMiddleware, metrics=middleware_metrics)
    for router in (predict.router, forecasts.router, allocation.router, anomalies.router, models.router, training.router, ops.router):
        app.include_router(router)
    _document_raw_bodies(app, settings)
    return app


def _document_raw_bodies(app: FastAPI, settings: ServiceSettings) -> None:
    """``/predict/earnings`` reads its body itself (so cache hits skip parsing); put its request model
    into the OpenAPI components so ``/docs`` still shows and validates it. The document then states the
    contract the validators enforce: protocol names as an enum of the catalog's (read at build time),
    errors as ``application/problem+json`` (``api_schemas.state_the_contract``)."""
    from pydantic.json_schema import models_json_schema

    from earnopt_assets.service.schemas import PredictionRequest

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()
            _, extra = models_json_schema([(PredictionRequest, "validation")], ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
            app.openapi_schema = state_the_contract(spec, _catalog_names(settings))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _catalog_names(settings: ServiceSettings) -> list[str]:
    from earnopt_assets.catalog import load_catalog

    return list(load_catalog(settings.catalog).enabled_names)


class _MetricsProxy:
    """The middleware is built before the lifespan creates the state; requests only arrive after it."""

    target = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if self.target is not None:
            self.target.observe_request(method, route, status, seconds)


def run_server(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve with uvicorn (``earnopt serve``). Settings come from ``EARNOPT_*`` environment variables."""
    import uvicorn

    settings = ServiceSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A keep-alive longer than clients' idle gaps avoids the close-while-reusing race under load.
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
