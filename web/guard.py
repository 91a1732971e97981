"""Rejects NUL characters in paths and query strings before they reach the database.

PostgreSQL text cannot hold U+0000, so such input would otherwise end as a 500; it is a 422.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from web.errors import error_response

__all__ = ["RejectNul"]


class RejectNul:
    """ASGI middleware: 422 JSON for a NUL byte anywhere in the path or query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            if b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
                refusal = error_response(422, "validation_error", "NUL characters are not allowed in paths or query strings")
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
