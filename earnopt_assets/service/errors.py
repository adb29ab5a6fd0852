"""RFC 7807 problem responses. Every error leaves the service as ``application/problem+json``;
stack traces stay in the server log."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://earnopt.dev/problems/"

log = logging.getLogger("earnopt.service")


class ServiceError(Exception):
    """An expected failure with an HTTP status, a stable problem type and a human-readable detail."""

    status: int = 500
    problem: str = "internal"

    def __init__(self, detail: str, *, status: int | None = None, problem: str | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if problem is not None:
            self.problem = problem
        self.extra = extra


class NotFound(ServiceError):
    status = 404
    problem = "not-found"


class UnprocessableData(ServiceError):
    """Posted data that is well-formed JSON but cannot be used; ``field`` names the culprit."""

    status = 422
    problem = "invalid-data"

    def __init__(self, detail: str, *, field: str, **extra: Any):
        super().__init__(detail, errors=[{"field": field, "message": detail}], **extra)


class ModelUnavailable(ServiceError):
    status = 503
    problem = "model-unavailable"


class Forbidden(ServiceError):
    status = 403
    problem = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    problem = "unauthorized"


class ServiceUnavailable(ServiceError):
    status = 503
    problem = "unavailable"


def problem_response(
    status: int, detail: str, *, problem: str | None = None, instance: str | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> JSONResponse:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (problem or phrase.lower().replace(" ", "-")),
        "title": phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_name(loc: tuple | list) -> str:
    # FastAPI prefixes with "body"/"path"/"query"; keep it, it tells the caller where to look.
    return ".".join(str(part) for part in loc)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(
            exc.status, exc.detail, problem=exc.problem, instance=request.url.path, headers=headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(err.get("loc", ())), "message": err.get("msg", "invalid"), "type": err.get("type")}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(422, detail, problem="validation", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal error; the server log has the details", problem="internal", instance=request.url.path
        )
