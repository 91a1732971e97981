"""Routes that act for the whole organization refuse an acting user.

Export and erase of a person, the suppression list, webhook endpoints and the organization's
settings reach across every mailbox of the organization, so a request made as a user
(``X-Mailpipe-User``, who may see only some mailboxes) is refused before the handler runs:
403 ``org_key_required``. The CRM's server makes these calls with the key alone.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from web.errors import error_response

__all__ = ["OrgOnly"]


class OrgOnly:
    """ASGI wrapper: the wrapped route answers only requests without an acting user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("state", {}).get("acting_user"):
            response = error_response(403, "org_key_required",
                                      "this operation acts for the whole organization: call it without X-Mailpipe-User")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
