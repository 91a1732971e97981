"""The Starlette application: API, tracking endpoints, health and metrics."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from web.api import ApiRouter, Raw, openapi_document
from web.auth import ApiKeyAuth
from web.errors import exception_handlers
from web.guard import RejectNul
from web.http_metrics import HttpMetrics
from web.pixel import PixelFastPath
from web.routes import (
    accounts,
    conversations,
    crm,
    emails,
    health,
    notifications,
    notion,
    oauth,
    org,
    privacy,
    send,
    sentiment,
    templates,
    tracking,
    unsubscribe,
)
from web.routes import webhooks as webhook_routes

__all__ = ["MailpipeApp", "create_app"]

VERSION = "0.1.0"


class MailpipeApp(Starlette):
    """The Starlette app with the open pixel answered in front of it (:class:`web.pixel.PixelFastPath`).

    As a middleware the pixel ran inside Starlette's own outer layers (the app's call and its
    server-error wrapper, which re-wraps ``send`` per request); answered here it costs less than a
    bare Starlette route. The pixel path cannot raise (the intake swallows its own failures), so it
    needs no error wrapper; every other request takes Starlette's whole stack as before.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._front = PixelFastPath(super().__call__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)


def routers() -> list[ApiRouter]:
    """Every router, in matching order."""
    return [health.router, org.router, crm.router, accounts.router, oauth.router, send.router, tracking.router, emails.router,
            templates.router, notion.router, notifications.router, unsubscribe.router, sentiment.router, privacy.router,
            webhook_routes.router, conversations.router]


def create_app() -> Starlette:
    """Build the app; settings, database and broker are read lazily from the environment."""
    from pipeline.flows.ingest_link import enqueue_relink

    if enqueue_relink not in crm.AFTER_UPSERT:
        crm.AFTER_UPSERT.append(enqueue_relink)
    all_routers = routers()
    docs = ApiRouter("meta")
    spec_cache: dict[str, object] = {}

    @docs.route("GET", "/api/v1/openapi.json", summary="This document", public=True,
                response=Raw("application/json", {"type": "object"}))
    async def openapi(request: Request) -> JSONResponse:
        if "spec" not in spec_cache:
            spec_cache["spec"] = openapi_document([*all_routers, docs], version=VERSION)
        return JSONResponse(spec_cache["spec"])

    routes: list[BaseRoute] = []
    for r in [docs, *all_routers]:
        routes.extend(r.routes())
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from ops.settings import get_settings
        from pipeline.events import Listener

        url = get_settings().broker_url
        listener = Listener(url.split(";")[0].strip()) if url else None  # real-time pushes from other processes
        if listener is not None:
            listener.start()
        # Everything loaded so far lives as long as the process: keep it out of the cyclic GC's
        # scans, whose full passes over it otherwise show as pauses in the pixel's tail latency.
        gc.freeze()
        from web.intake import get_intake, spooled_files

        if spooled_files():  # events a stopped or dead process left behind: adopt and replay them now
            await run_in_threadpool(get_intake)
        try:
            yield
        finally:
            if listener is not None:
                await run_in_threadpool(listener.stop)
            from web.intake import reset_intake

            await run_in_threadpool(reset_intake)  # shutdown drains buffered tracking events (broker or spool)

    middleware = [Middleware(HttpMetrics), Middleware(RejectNul), Middleware(ApiKeyAuth)]
    return MailpipeApp(routes=routes, middleware=middleware, exception_handlers=exception_handlers, lifespan=lifespan)
