"""ASGI middleware counting HTTP requests by route template (never the raw path), method and status."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops import metrics

__all__ = ["HttpMetrics"]


class HttpMetrics:
    """``mailpipe_http_requests_total{route,method,status}`` and the duration histogram per route.

    The route is the matched route's path template (``/api/v1/emails/{id}``), read from the scope
    after Starlette's router has set it; a path no route matched counts as ``unmatched``, so a
    scanner walking random URLs cannot grow the label set.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(template, scope.get("method", "GET"), str(status)).inc()
            metrics.HTTP_SECONDS.labels(template).observe(time.perf_counter() - started)
