"""The token endpoint client: one form POST, answered as (status, JSON body).

The real client is httpx; tests pass an ``httpx.MockTransport`` (httpx's own fake) with
:func:`use_token_transport`, or point the provider's token URL at a local stand-in server.
Credentials go in the form body (``client_secret_post``, which Google and Microsoft both take);
nothing here logs, and errors name the endpoint's host only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["TokenEndpointError", "TokenReply", "post_form", "use_token_transport"]

TIMEOUT = httpx.Timeout(20.0, connect=10.0)
_transport: httpx.BaseTransport | None = None


@dataclass(frozen=True, slots=True)
class TokenReply:
    status: int
    body: Any


class TokenEndpointError(Exception):
    """The endpoint could not be reached or did not answer in time (always temporary)."""


def use_token_transport(transport: httpx.BaseTransport | None) -> None:
    """Swap the HTTP transport (tests); None restores the network."""
    global _transport
    _transport = transport


def post_form(url: str, form: dict[str, str]) -> TokenReply:
    """POST ``form`` (application/x-www-form-urlencoded) and read the JSON answer."""
    host = urlsplit(url).hostname or "token endpoint"
    try:
        with httpx.Client(timeout=TIMEOUT, transport=_transport, follow_redirects=False) as client:
            r = client.post(url, data=form, headers={"Accept": "application/json"})
    except httpx.TimeoutException:
        raise TokenEndpointError(f"{host} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise TokenEndpointError(f"{host} unreachable: {type(exc).__name__}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    return TokenReply(r.status_code, body)
