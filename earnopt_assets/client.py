"""Python client of the earnopt ML service, for the orchestrator that applies allocations.

``MLClient`` (sync) and ``AsyncMLClient`` (asyncio) share one behaviour:

* responses are parsed into the pydantic models the service itself uses (``earnopt_assets.api_schemas``);
* connection errors, timeouts and 5xx answers are retried with exponential backoff and jitter:
  attempt ``k`` (0-based) waits ``d_k/2 + U(0, d_k/2)`` with ``d_k = min(backoff_max, backoff_base * 2**k)``,
  or the server's ``Retry-After`` when it sends one (capped at ``backoff_max``);
* 4xx answers are never retried: they raise at once;
* ``train`` is not idempotent (each call launches a run), so it is retried only when the connection
  could not be made at all, never after the request may have reached the server;
* every failure is a typed exception (:class:`MLClientError` and subclasses) carrying the problem
  document (RFC 7807) the service returned.

Example::

    from earnopt_assets.client import MLClient

    with MLClient("http://127.0.0.1:8000", token="s3cret", retries=3) as client:
        forecast = client.get_earnings_predictions("honeygain", telemetry_frame, fallback=True)
        plan = client.optimize_allocation({"honeygain": 0.5}, {"honeygain": [p.earnings_usd for p in forecast.predictions]})
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from earnopt_assets.api_schemas import (
    AlertsResponse,
    AllocationResponse,
    AnomalyDetectionResponse,
    EvaluationResponse,
    HealthResponse,
    ModelMetricsResponse,
    ModelsResponse,
    PredictionResponse,
    RunStatusResponse,
    TrainResponse,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

RETRY_STATUSES = frozenset({500, 502, 503, 504})
TERMINAL_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})


# ----------------------------------------------------------------------------- exceptions


class MLClientError(Exception):
    """Base of every error the client raises."""


class APIConnectionError(MLClientError):
    """The service could not be reached (after the retries)."""


class ResponseParseError(MLClientError):
    """The service answered 2xx with a body that does not match the expected schema."""


class APIError(MLClientError):
    """The service answered with an error status; ``problem`` is its RFC 7807 document."""

    def __init__(self, status_code: int, problem: dict[str, Any], *, attempts: int = 1):
        self.status_code = status_code
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status_code}")
        self.attempts = attempts
        super().__init__(f"HTTP {status_code}: {self.detail}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Field-level errors of a 422 (``[{"field": ..., "message": ...}]``)."""
        return list(self.problem.get("errors") or [])


class BadRequestError(APIError):
    """400 and other 4xx without a more specific class."""


class AuthenticationError(APIError):
    """401: missing or wrong bearer token."""


class PermissionDeniedError(APIError):
    """403: e.g. mutating endpoints disabled because the server has no token configured."""


class NotFoundError(APIError):
    """404: unknown protocol or run id."""


class PayloadTooLargeError(APIError):
    """413: the request body is over the server's limit."""


class UnprocessableError(APIError):
    """422: invalid data; :attr:`errors` names the fields."""


class ServerError(APIError):
    """5xx after the retries."""


class ModelUnavailableError(ServerError):
    """503: no usable model (ask ``fallback=True`` for the baseline) or a busy dependency."""


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    503: ModelUnavailableError,
}


def _error_for(response: httpx.Response, attempts: int) -> APIError:
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            problem = {"detail": str(problem)}
    except ValueError:
        problem = {"detail": response.text[:500] or response.reason_phrase}
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else BadRequestError)
    return cls(response.status_code, problem, attempts=attempts)


# ----------------------------------------------------------------------------- payload helpers


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "isoformat") and not isinstance(value, str):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _json_value(value.item())
    return value


def telemetry_records(data: Any) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts from a pandas DataFrame, pydantic rows or mappings. NaN becomes null
    and optional null fields are dropped (the server validates everything)."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame, without importing pandas
        rows: Iterable[Any] = data.to_dict(orient="records")
    else:
        rows = data
    out = []
    for row in rows:
        mapping = row.model_dump(mode="json") if isinstance(row, BaseModel) else dict(row)
        record = {str(k): _json_value(v) for k, v in mapping.items()}
        out.append({k: v for k, v in record.items() if not (v is None and k in ("latency_ms", "device", "protocol"))})
    return out


def _train_body(rows: Any, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    body: dict[str, Any] = {}
    if rows is not None:
        body["rows"] = telemetry_records(rows)
    if options:
        body["options"] = dict(options)
    return body or None


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    header = response.headers.get("retry-after")
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# ----------------------------------------------------------------------------- shared core


class _Core:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        *,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "earnopt-client/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def backoff(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (see the module docstring)."""
        hinted = _retry_after(response)
        if hinted is not None:
            return min(hinted, self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    @staticmethod
    def _retryable_exception(exc: httpx.TransportError, idempotent: bool) -> bool:
        if idempotent:
            return True
        # Nothing reached the server: safe to retry even a non-idempotent call.
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))

    @staticmethod
    def _parse(model: type[ModelT], response: httpx.Response) -> ModelT:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise ResponseParseError(f"{response.request.method} {response.request.url.path}: unexpected response body: {exc}") from None

    # request descriptions shared by both clients
    @staticmethod
    def _predict(protocol: str, data: Any, fallback: bool) -> tuple[str, str, dict[str, Any]]:
        return "POST", f"/predict/earnings/{protocol}", {"rows": telemetry_records(data), "fallback": fallback}

    @staticmethod
    def _allocation(allocations: Mapping[str, float] | None, earnings: Mapping[str, Any] | None, earnings_basis: str, use_latest_forecasts: bool) -> tuple[str, str, dict[str, Any]]:
        body: dict[str, Any] = {"current_allocations": dict(allocations or {}), "earnings_basis": earnings_basis,
                                "use_latest_forecasts": use_latest_forecasts}
        if earnings is not None:
            body["earnings"] = {name: ([float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]) for name, v in earnings.items()}
        return "POST", "/predict/allocation", body


# ----------------------------------------------------------------------------- sync client


class MLClient(_Core):
    """Synchronous client. Use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0, retries: int = 3, *,
                 backoff_base: float = 0.2, backoff_max: float = 5.0, transport: httpx.BaseTransport | None = None,
                 rng: random.Random | None = None, sleep: Any = time.sleep) -> None:
        super().__init__(base_url, token, timeout, retries, backoff_base=backoff_base, backoff_max=backoff_max, rng=rng)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self._headers(), transport=transport)
        self._sleep = sleep
        self.last_attempts = 0

    def __enter__(self) -> MLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, json: Any = None, idempotent: bool = True,
                 ok_statuses: frozenset[int] = frozenset()) -> httpx.Response:
        attempt = 0
        while True:
            self.last_attempts = attempt + 1
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if attempt < self.retries and self._retryable_exception(exc, idempotent):
                    self._sleep(self.backoff(attempt))
                    attempt += 1
                    continue
                raise APIConnectionError(f"{method} {self.base_url}{path} failed after {attempt + 1} attempt(s): {exc!r}") from exc
            if response.status_code < 400 or response.status_code in ok_statuses:
                return response
            if response.status_code in RETRY_STATUSES and idempotent and attempt < self.retries:
                self._sleep(self.backoff(attempt, response))
                attempt += 1
                continue
            raise _error_for(response, attempt + 1)

    def get_earnings_predictions(self, protocol: str, data: Any, *, fallback: bool = False) -> PredictionResponse:
        """24 hourly predictions from recent telemetry (DataFrame, dicts or TelemetryRow objects)."""
        method, path, body = self._predict(protocol, data, fallback)
        return self._parse(PredictionResponse, self._request(method, path, json=body))

    def optimize_allocation(self, allocations: Mapping[str, float] | None = None, earnings: Mapping[str, Any] | None = None, *,
                            earnings_basis: str = "current_allocation", use_latest_forecasts: bool = False) -> AllocationResponse:
        """Optimised allocations and the reallocation analysis; ``earnings=None`` uses the latest forecasts."""
        method, path, body = self._allocation(allocations, earnings, earnings_basis, use_latest_forecasts)
        return self._parse(AllocationResponse, self._request(method, path, json=body))

    def detect_anomalies(self, metrics: Any) -> AnomalyDetectionResponse:
        """Score telemetry rows (each with ``protocol``) with the stored anomaly detector."""
        return self._parse(AnomalyDetectionResponse, self._request("POST", "/detect/anomalies", json={"rows": telemetry_records(metrics)}))

    def evaluate(self, protocol: str, data: Any) -> EvaluationResponse:
        return self._parse(EvaluationResponse, self._request("POST", f"/evaluate/{protocol}", json={"rows": telemetry_records(data)}))

    def train(self, protocol: str, rows: Any = None, options: Mapping[str, Any] | None = None) -> TrainResponse:
        """Launch a training run (needs the token); ``options`` override the run config (e.g. ``epochs``).
        Not retried once the request may have been sent."""
        body = _train_body(rows, options)
        return self._parse(TrainResponse, self._request("POST", f"/train/{protocol}", json=body, idempotent=False))

    def run_status(self, run_id: str) -> RunStatusResponse:
        return self._parse(RunStatusResponse, self._request("GET", f"/runs/{run_id}"))

    def wait_for_run(self, run_id: str, *, timeout: float = 600.0, poll_seconds: float = 2.0) -> RunStatusResponse:
        """Poll ``/runs/{run_id}`` until the run finishes; raises ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.run_status(run_id)
            if status.finished:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status.status} after {timeout:.0f}s")
            self._sleep(poll_seconds)

    def health(self) -> HealthResponse:
        """Service health. A ``down`` service answers 503 with the same body: returned, not raised."""
        return self._parse(HealthResponse, self._request("GET", "/health", ok_statuses=frozenset({503})))

    def models(self) -> ModelsResponse:
        return self._parse(ModelsResponse, self._request("GET", "/models"))

    def model_metrics(self, protocol: str) -> ModelMetricsResponse:
        return self._parse(ModelMetricsResponse, self._request("GET", f"/models/{protocol}/metrics"))

    def alerts(self) -> AlertsResponse:
        return self._parse(AlertsResponse, self._request("GET", "/alerts"))


# ----------------------------------------------------------------------------- async client


class AsyncMLClient(_Core):
    """asyncio client with the same methods as :class:`MLClient` (awaitable)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0, retries: int = 3, *,
                 backoff_base: float = 0.2, backoff_max: float = 5.0, transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None, limits: httpx.Limits | None = None) -> None:
        super().__init__(base_url, token, timeout, retries, backoff_base=backoff_base, backoff_max=backoff_max, rng=rng)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=self._headers(), transport=transport,
                                       limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=100))
        self.last_attempts = 0

    async def __aenter__(self) -> AsyncMLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, json: Any = None, idempotent: bool = True,
                       ok_statuses: frozenset[int] = frozenset()) -> httpx.Response:
        attempt = 0
        while True:
            self.last_attempts = attempt + 1
            try:
                response = await self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if attempt < self.retries and self._retryable_exception(exc, idempotent):
                    await asyncio.sleep(self.backoff(attempt))
                    attempt += 1
                    continue
                raise APIConnectionError(f"{method} {self.base_url}{path} failed after {attempt + 1} attempt(s): {exc!r}") from exc
            if response.status_code < 400 or response.status_code in ok_statuses:
                return response
            if response.status_code in RETRY_STATUSES and idempotent and attempt < self.retries:
                await asyncio.sleep(self.backoff(attempt, response))
                attempt += 1
                continue
            raise _error_for(response, attempt + 1)

    async def get_earnings_predictions(self, protocol: str, data: Any, *, fallback: bool = False) -> PredictionResponse:
        method, path, body = self._predict(protocol, data, fallback)
        return self._parse(PredictionResponse, await self._request(method, path, json=body))

    async def optimize_allocation(self, allocations: Mapping[str, float] | None = None, earnings: Mapping[str, Any] | None = None, *,
                                  earnings_basis: str = "current_allocation", use_latest_forecasts: bool = False) -> AllocationResponse:
        method, path, body = self._allocation(allocations, earnings, earnings_basis, use_latest_forecasts)
        return self._parse(AllocationResponse, await self._request(method, path, json=body))

    async def detect_anomalies(self, metrics: Any) -> AnomalyDetectionResponse:
        return self._parse(AnomalyDetectionResponse, await self._request("POST", "/detect/anomalies", json={"rows": telemetry_records(metrics)}))

    async def evaluate(self, protocol: str, data: Any) -> EvaluationResponse:
        return self._parse(EvaluationResponse, await self._request("POST", f"/evaluate/{protocol}", json={"rows": telemetry_records(data)}))

    async def train(self, protocol: str, rows: Any = None, options: Mapping[str, Any] | None = None) -> TrainResponse:
        body = _train_body(rows, options)
        return self._parse(TrainResponse, await self._request("POST", f"/train/{protocol}", json=body, idempotent=False))

    async def run_status(self, run_id: str) -> RunStatusResponse:
        return self._parse(RunStatusResponse, await self._request("GET", f"/runs/{run_id}"))

    async def wait_for_run(self, run_id: str, *, timeout: float = 600.0, poll_seconds: float = 2.0) -> RunStatusResponse:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.run_status(run_id)
            if status.finished:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status.status} after {timeout:.0f}s")
            await asyncio.sleep(poll_seconds)

    async def model_metrics(self, protocol: str) -> ModelMetricsResponse:
        return self._parse(ModelMetricsResponse, await self._request("GET", f"/models/{protocol}/metrics"))

    async def health(self) -> HealthResponse:
        return self._parse(HealthResponse, await self._request("GET", "/health", ok_statuses=frozenset({503})))

    async def models(self) -> ModelsResponse:
        return self._parse(ModelsResponse, await self._request("GET", "/models"))

    async def alerts(self) -> AlertsResponse:
        return self._parse(AlertsResponse, await self._request("GET", "/alerts"))
