"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path): a request log line with
method, path, status and duration; Prometheus request metrics; and the request body size limit."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from earnopt_assets.service.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_log = logging.getLogger("earnopt.service.requests")


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestLogMiddleware:
    """Logs ``METHOD path status duration_ms`` for every HTTP request and feeds the request metrics.

    Metrics use the route template (``/predict/earnings/{protocol}``), so label cardinality stays bounded
    whatever paths clients try.
    """

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            status = status_holder["status"]
            template = _route_template(scope)
            self.metrics.observe_request(scope["method"], template, status, duration)
            request_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, duration * 1000.0)


class BodySizeLimitMiddleware:
    """Answers 413 (problem+json) when a body exceeds ``max_bytes``: by Content-Length up front, and by
    counting streamed chunks for chunked uploads, so a lying or absent Content-Length cannot get around it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "type": PROBLEM_BASE + "body-too-large",
                "title": "Content Too Large",
                "status": 413,
                "detail": f"request body exceeds the limit of {self.max_bytes} bytes",
                "instance": scope.get("path", ""),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(scope, send)
                    return
        received = 0
        too_large = False
        forwarded_start = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge(f"body exceeds {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal forwarded_start
            # Once the body overflowed, whatever the app answers (FastAPI turns the read error into a
            # 400) is replaced by the 413 below.
            if too_large and not forwarded_start:
                return
            if message["type"] == "http.response.start":
                forwarded_start = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not forwarded_start:
            await self._reject(scope, send)


class _BodyTooLarge(Exception):
    pass
