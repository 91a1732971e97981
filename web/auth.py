"""Bearer API-key authentication for ``/api/v1/*``; public paths pass through.

The key's organization is put in ``scope["state"]["org_id"]``; every query is scoped to it. A request
may name the acting user (``X-Mailpipe-User``, API.md "Conversations, shared inboxes and delegation"):
it goes to ``scope["state"]["acting_user"]`` (None without the header) and :func:`web.access.actor`
turns both into the :class:`models.access.Actor` every route asks.
"""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from models.db import get_engine
from ops.orgs import org_for_key
from web.errors import error_response

__all__ = ["ApiKeyAuth", "PUBLIC_API_PATHS", "WS_UNAUTHORIZED", "acting_user", "refuse_websocket"]

WS_UNAUTHORIZED = 4401  # websocket close code: missing, invalid or expired credentials (HTTP 401's analogue)

PUBLIC_API_PATHS = re.compile(
    r"^/api/v1/(openapi\.json|oauth/[a-z]+/callback|notion/callback|notifications/ws)$"
)


async def refuse_websocket(receive: Receive, send: Send, reason: str = "unauthorized") -> None:
    """Refuse a websocket with close code 4401 that the client actually sees.

    A ``websocket.close`` sent before ``websocket.accept`` ends the handshake instead: uvicorn
    answers it with HTTP 403 and the client never gets a close code. So: accept, then close.
    """
    message = await receive()
    if message["type"] != "websocket.connect":  # the client is already gone
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": WS_UNAUTHORIZED, "reason": reason})


class ApiKeyAuth:
    """ASGI middleware: 401 JSON unless a valid ``Authorization: Bearer <key>`` is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith("/api/") or PUBLIC_API_PATHS.match(path):
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        org_id = None
        if scheme.lower() == "bearer" and token.strip():
            org_id = await run_in_threadpool(org_for_key, get_engine(), token.strip())
        if org_id is None:
            if scope["type"] == "websocket":
                await refuse_websocket(receive, send)
                return
            message = "missing API key" if not header else "invalid API key"
            response = error_response(401, "unauthorized", message)
            response.headers["WWW-Authenticate"] = 'Bearer realm="mailpipe"'
            await response(scope, receive, send)
            return
        acting, problem = acting_user(scope)
        if problem is not None:
            if scope["type"] == "websocket":
                await refuse_websocket(receive, send, problem)
                return
            await error_response(422, "validation_error", f"X-Mailpipe-User: {problem}", {"errors": [
                {"field": "X-Mailpipe-User", "message": problem, "type": "value_error"}]})(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["org_id"] = org_id
        state["acting_user"] = acting
        await self.app(scope, receive, send)


_USER_ID = re.compile(r"[^\x00-\x20\x7f]{1,64}")


def acting_user(scope: Scope) -> tuple[str | None, str | None]:
    """(the ``X-Mailpipe-User`` user id or None, a problem with it or None)."""
    values = [v for n, v in scope.get("headers", []) if n == b"x-mailpipe-user"]
    if not values:
        return None, None
    if len(values) > 1:
        return None, "give the header once"
    try:
        value = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "must be UTF-8"
    if not _USER_ID.fullmatch(value):
        return None, "must be a user id: 1 to 64 characters, no spaces or control characters"
    return value, None
