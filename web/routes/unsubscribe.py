"""Unsubscribe links of marketing mail (public): ``/unsubscribe/{email_id}/{recipient_hash}``.

``GET`` shows a confirmation page with a button (a link prefetcher or scanner must not
unsubscribe anyone); ``POST`` unsubscribes: it is the RFC 8058 one-click target named by
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` and the page's form target. The hash is the
recipient HMAC (its own "unsubscribe" key purpose, not the pixel's) of a marketing email's
per-recipient copy, so a forged or unknown link changes nothing and answers 404. An unsubscribed
address is skipped by the organization's later marketing sends.
"""

from __future__ import annotations

import html
from functools import partial

from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from models import Delivery, Outbox, Suppression, normalize_email
from models.db import get_engine
from models.upsert import insert_ignore
from ops.keys import get_keyring
from pipeline.stages.tracking_ids import verify_recipient_hash
from web.api import ApiRouter, Raw

router = ApiRouter("unsubscribe")

_HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}
_PAGE = ("<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">"
         "<title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">{body}</body></html>")


def _recipient(email_id: str, rhash: str) -> tuple[str, str] | None:
    """(org_id, address) whose copy of this email carries ``rhash``, or None."""
    verify = partial(get_keyring().verify, "unsubscribe")
    with Session(get_engine()) as s:
        org_id = s.execute(select(Outbox.org_id).where(Outbox.email_id == email_id, Outbox.category == "marketing")).scalar_one_or_none()
        if org_id is None:
            return None
        for address in s.execute(select(Delivery.tracked_for).where(Delivery.email_id == email_id,
                                                                    col(Delivery.tracked_for).is_not(None))).scalars():
            if address and verify_recipient_hash(verify, email_id, address, rhash):
                return org_id, address
    return None


def _page(status: int, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status, headers=_HEADERS)


def _not_found() -> HTMLResponse:
    return _page(404, "Link not valid", "<h1>This unsubscribe link is not valid</h1><p>Nothing was changed.</p>")


@router.route("GET", "/unsubscribe/{email_id}/{rhash}", summary="Unsubscribe confirmation page", public=True,
              response=Raw("text/html"), responses={404: ("unknown or forged link", Raw("text/html"))})
async def confirm_page(request: Request) -> HTMLResponse:
    email_id, rhash = request.path_params["email_id"], request.path_params["rhash"]
    found = await run_in_threadpool(_recipient, email_id, rhash)
    if found is None:
        return _not_found()
    return _page(200, "Unsubscribe", f"<h1>Unsubscribe {html.escape(found[1])}?</h1>"
                 "<p>You will no longer receive marketing emails from this sender.</p>"
                 "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
                 "<button type=\"submit\">Unsubscribe</button></form>")


@router.route("POST", "/unsubscribe/{email_id}/{rhash}", summary="Unsubscribe (RFC 8058 one-click)", public=True,
              response=Raw("text/html"), responses={404: ("unknown or forged link", Raw("text/html"))})
async def unsubscribe(request: Request) -> HTMLResponse:
    email_id, rhash = request.path_params["email_id"], request.path_params["rhash"]
    found = await run_in_threadpool(_recipient, email_id, rhash)
    if found is None:
        return _not_found()
    org_id, address = found

    def record() -> None:
        with Session(get_engine()) as s:
            insert_ignore(s, Suppression, [{"org_id": org_id, "address_norm": normalize_email(address) or address,
                                            "reason": "unsubscribe", "email_id": email_id}], ["org_id", "address_norm"])
            s.commit()

    await run_in_threadpool(record)
    return _page(200, "Unsubscribed", f"<h1>{html.escape(address)} is unsubscribed</h1>"
                 "<p>You will not receive further marketing emails from this sender.</p>")
