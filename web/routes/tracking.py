"""Open pixel and click redirect (public), and ``GET /api/v1/emails/{id}/tracking``.

The pixel always answers 200 with a 43-byte GIF and no-store headers, for valid, forged and
unknown ids alike; the hit is handed to the intake (``web.intake``, never a blocking broker
call) and verified by the recording actor, so a forged id records nothing. HEAD and prefetch
requests are answered but not handed over. The click redirect goes only to the URL stored for
that link hash at send time (and whose HMAC verifies); anything else is a 404 page, and request
query parameters are never appended. Hits beyond the per-token and per-address rates are dropped
by the intake's throttle (``web.hit_throttle``); the answer is the same. The client IP is the
socket's, or — only when the socket peer is in ``MAILPIPE_TRUSTED_PROXIES`` — the rightmost
untrusted ``X-Forwarded-For`` entry.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import OrderedDict
from functools import lru_cache, partial
from typing import Any

from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from models import TrackedLink
from models.db import get_engine
from ops.keys import get_keyring
from ops.settings import get_settings
from pipeline.stages.tracking_ids import verify_link_hash
from web.access import actor
from web.api import ApiRouter, Raw
from web.cursors import CURSOR, read_keyset
from web.intake import event_id
from web.params import Param
from web.schemas.emails import TrackingOut
from web.tracking_page import DEFAULT_LIMIT, MAX_LIMIT, tracking_page

router = ApiRouter("tracking")

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
            "Expires": "Thu, 01 Jan 1970 00:00:00 GMT", "X-Robots-Tag": "noindex"}
_PIXEL_HEADERS = {**NO_STORE, "Content-Length": str(len(GIF))}
_ID = re.compile(r"^[0-9a-f]{24}$")
_TOKEN = re.compile(r"^[0-9a-f]{8,64}$")
_LINKS: OrderedDict[tuple[str, str], str] = OrderedDict()  # (email id, link hash) → verified target
_LINK_CACHE = 50_000


@lru_cache(maxsize=8)
def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in raw.split(",") if c.strip())


def _trusted() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _networks(get_settings().trusted_proxies)


def _is_trusted(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in _trusted())


def client_ip(request: Request) -> str | None:
    """The socket peer, or through trusted proxies the rightmost X-Forwarded-For entry that is not one."""
    return client_ip_from(request.scope.get("client"), ",".join(request.headers.getlist("x-forwarded-for")))


def client_ip_from(client: Any, forwarded_for: str) -> str | None:
    """:func:`client_ip` from an ASGI ``client`` tuple and the X-Forwarded-For header value(s)."""
    peer = client[0] if client else None
    if peer is None or not _trusted() or not _is_trusted(peer):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: believe only the socket
    return peer


def _prefetch(request: Request) -> bool:
    h = request.headers
    return "prefetch" in (h.get("sec-purpose", "") + h.get("purpose", "") + h.get("x-purpose", "") + h.get("x-moz", "")).lower()


def _event(request: Request, kind: str, email_id: str, token: str) -> dict[str, Any]:
    h = request.headers
    return {"id": event_id(), "kind": kind, "email_id": email_id, "token": token, "at": time.time(),
            "ip": client_ip(request), "ua": h.get("user-agent", "")[:1000], "method": request.method,
            "dnt": h.get("dnt") == "1" or h.get("sec-gpc") == "1"}


def _submit(event: dict[str, Any]) -> None:
    from web.intake import get_intake

    try:
        get_intake().submit(event)
    except Exception:  # the pixel never fails, whatever happens to the intake
        pass


@router.route("GET", "/track/open/{email_id}/{recipient_hash}", summary="Open-tracking pixel (always a 1x1 GIF)", public=True,
              response=Raw("image/gif", {"type": "string", "format": "binary"}))
async def pixel(request: Request) -> Response:
    email_id, token = request.path_params["email_id"], request.path_params["recipient_hash"]
    if request.method == "GET" and not _prefetch(request) and _ID.match(email_id) and _TOKEN.match(token):
        _submit(_event(request, "open", email_id, token))
    return Response(GIF if request.method != "HEAD" else b"", media_type="image/gif", headers=_PIXEL_HEADERS)


def _target(email_id: str, link_hash: str) -> str | None:
    key = (email_id, link_hash)
    url = _LINKS.get(key)
    if url is not None:
        _LINKS.move_to_end(key)
        return url
    with Session(get_engine()) as s:
        url = s.execute(select(TrackedLink.url).where(TrackedLink.email_id == email_id,
                                                      TrackedLink.link_hash == link_hash)).scalar_one_or_none()
    if url is None or not verify_link_hash(partial(get_keyring().verify, "click"), email_id, url, link_hash):
        return None
    _LINKS[key] = url
    while len(_LINKS) > _LINK_CACHE:
        _LINKS.popitem(last=False)
    return url


_NOT_FOUND = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Link not found</title></head>"
              "<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><h1>This link is not valid</h1>"
              "<p>It may have been mistyped or shortened.</p></body></html>")


@router.route("GET", "/track/click/{email_id}/{link_hash}", summary="Click redirect to the URL stored at send time",
              public=True, status=302, responses={404: ("unknown or forged link", Raw("text/html"))})
async def click(request: Request) -> Response:
    email_id, token = request.path_params["email_id"], request.path_params["link_hash"]
    url = await run_in_threadpool(_target, email_id, token) if _ID.match(email_id) and _TOKEN.match(token) else None
    if url is None:
        return HTMLResponse(_NOT_FOUND, status_code=404, headers=NO_STORE)
    if not _prefetch(request):
        _submit(_event(request, "click", email_id, token))
    return RedirectResponse(url, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


_LIMIT = Param.integer("limit", DEFAULT_LIMIT, maximum=MAX_LIMIT, description="events per page")


@router.route("GET", "/api/v1/emails/{id}/tracking", summary="Opens and clicks of a sent email, chronological, paged",
              query=(_LIMIT, CURSOR), response=TrackingOut, responses={404: "not found"})
async def tracking(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    limit = _LIMIT.read(request)
    cursor = CURSOR.read(request)
    read_keyset(cursor)  # a malformed cursor is a 422 before any database work

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            return tracking_page(s, who.email(s, email_id), limit=limit, cursor=cursor)

    return JSONResponse(await run_in_threadpool(run))
