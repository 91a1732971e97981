"""Notion's API through the real ``notion-client``, pointed at ``MAILPIPE_NOTION_BASE_URL``.

Every call goes through :func:`call`, which turns the client's exceptions into :class:`NotionError`
and waits as Notion says on 429 ``rate_limited`` and 529 ``service_overload`` (``Retry-After``),
up to :data:`MAX_INLINE_WAIT` seconds in all; the client's own retries are off so that there is
one policy. Tokens are handed to the client and never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import structlog
from notion_client import Client
from notion_client.errors import HTTPResponseError, RequestTimeoutError
from notion_client.helpers import iterate_paginated_api

from ops.settings import get_settings
from pipeline.stages.notion_page import NotionVerdict, classify_error

__all__ = ["MAX_INLINE_WAIT", "NotionError", "call", "make_client", "results", "use_notion_transport"]

log = structlog.get_logger("mailpipe.notion")

MAX_INLINE_WAIT = 60.0  # seconds of Retry-After waits one call may sit through before it gives the job back
_transport: httpx.BaseTransport | None = None


class NotionError(Exception):
    """A Notion call failed; ``verdict`` says whether to wait, retry later, or fail for good."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.verdict: NotionVerdict = classify_error(status, code, message, retry_after)


def use_notion_transport(transport: httpx.BaseTransport | None) -> None:
    """Swap the HTTP transport under notion-client (unit tests: httpx.MockTransport)."""
    global _transport
    _transport = transport


def make_client(token: str | None) -> Client:
    settings = get_settings()
    quiet = logging.getLogger("mailpipe.notion.client")
    quiet.setLevel(logging.WARNING)
    return Client(client=httpx.Client(transport=_transport, timeout=30.0),
                  options={"auth": token, "base_url": settings.notion_base_url.rstrip("/"), "retry": False,
                           "timeout_ms": 30_000, "logger": quiet, "log_level": logging.WARNING})


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one client call, waiting out 429/529 as told (at most MAX_INLINE_WAIT in all).

    The answer is Notion's JSON body (``Any``): notion-client types its endpoints ``SyncAsync[Any]``
    for its sync and async clients alike, and ours is the sync :class:`Client`.
    """
    waited = 0.0
    while True:
        try:
            return fn(*args, **kwargs)
        except HTTPResponseError as exc:
            code = getattr(exc, "code", "") or ""
            code = str(getattr(code, "value", code))  # APIErrorCode members carry Notion's string
            err = NotionError(exc.status, code, str(exc)[:500], exc.headers.get("retry-after"))
        except RequestTimeoutError:
            err = NotionError(0, "timeout", "Notion did not answer in time")
        except httpx.HTTPError as exc:
            err = NotionError(0, "network", f"Notion unreachable: {type(exc).__name__}")
        if err.verdict.action == "wait" and waited + err.verdict.wait_seconds <= MAX_INLINE_WAIT:
            log.info("notion_wait", code=err.code, seconds=err.verdict.wait_seconds)
            time.sleep(err.verdict.wait_seconds)
            waited += err.verdict.wait_seconds
            continue
        raise err


def results(fn: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every result of a paginated Notion call (notion-client's own iterator, each page through :func:`call`)."""
    return iterate_paginated_api(partial(call, fn), page_size=100, **kwargs)
