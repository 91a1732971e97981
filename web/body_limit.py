"""Request bodies capped while they are read, per route.

Each documented route's ASGI app is wrapped in :class:`BodyLimit` (``web.api.ApiRouter.routes``)
with that route's cap. A ``Content-Length`` over the cap is refused at once with a 413 before a
byte of the body is read; a chunked or lying stream is counted as it arrives and refused (413,
raised from ``receive`` into the handler that is reading it) as soon as it passes the cap, so a
300 MB upload costs at most one chunk past the cap in memory. The refusal asks the server to
close the connection, since the rest of the body was never read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import ApiError, error_response

__all__ = ["DEFAULT_MAX_BODY", "BodyLimit", "BodyTooLarge"]

DEFAULT_MAX_BODY = 1024 * 1024  # 1 MiB: every JSON body except sends (attachments) and templates


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"request body larger than {limit} bytes", {"max_bytes": limit})


class BodyLimit:
    """ASGI wrapper: at most ``limit`` body bytes reach the wrapped app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        if declared:
            if len(declared) > 1 or not declared[0].isdigit() or len(declared[0]) > 18:
                await self._refuse(scope, receive, send, ApiError(400, "bad_request", "invalid Content-Length header"))
                return
            if int(declared[0]) > self.limit:
                await self._refuse(scope, receive, send, BodyTooLarge(self.limit))
                return
        received = 0
        tripped = False

        async def limited_receive() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    tripped = True
                    raise BodyTooLarge(self.limit)
            return message

        async def closing_send(message: Message) -> None:
            if tripped and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
        response = error_response(error.status, error.code, error.message, error.details)
        response.headers["Connection"] = "close"  # the body was not read: this connection cannot carry another request
        await response(scope, receive, send)
