"""Reading mail: list with filters (``linked=false`` is the unlinked inbox), one email with its
attachments and links, attachment download, manual link/unlink."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Row, and_, func, or_, update
from sqlmodel import Session, col, select
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from models import CRM_TABLES, Document, Email, EmailLink, EmailSentiment
from models.db import get_engine
from models.search import RANK_WINDOW, SEARCH_TABLE, headline, highlights, marked, matches, order_by_rank, prepare_search
from ops.settings import get_settings
from pipeline.flows.events_outbox import email_payloads, record_event
from pipeline.flows.flag_store import request_flag_change
from pipeline.stages.safe_html import safe_html
from pipeline.stages.search_doc import LANGUAGES
from web.access import Actor, actor
from web.api import ApiRouter, Raw
from web.cursors import CURSOR, keyset_cursor, offset_cursor, read_keyset, read_offset
from web.errors import ApiError
from web.params import Param
from web.present import iso
from web.schemas.emails import EmailOut, EmailsPage, LinkAdded
from web.validation import Body, parse_body

router = ApiRouter("emails")

ENTITY_MODELS = {"contact": CRM_TABLES["contacts"], "lead": CRM_TABLES["leads"], "account": CRM_TABLES["accounts"],
                 "opportunity": CRM_TABLES["opportunities"]}


def _load(s: Session, who: Actor, email_id: str) -> Email:
    """The email, when the caller may see its mailbox (404 otherwise)."""
    return who.email(s, email_id)


PIPELINE_STATES = ("fetched", "parsed", "stored", "linked", "leads", "done", "quarantined", "outbox")
_REF = "a CRM record id"
LIST_PARAMS = (
    Param.text("account_id", max_length=64, description="one mailbox"),
    Param.boolean("linked", description="false: the unlinked inbox"),
    Param.boolean("needs_review"),
    Param.text("contact_id", max_length=64, description=_REF),
    Param.text("lead_id", max_length=64, description=_REF),
    Param.text("entity_account_id", max_length=64, description=_REF + " (a CRM account)"),
    Param.text("opportunity_id", max_length=64, description=_REF),
    Param.choice("direction", ("inbound", "outbound")),
    Param.choice("state", PIPELINE_STATES, description="pipeline_state"),
    Param.choice("sentiment", ("positive", "neutral", "negative"), description="inbound mail with this sentiment label"),
    Param.text("q", max_length=200, description="full-text search over subject, participants (names and addresses), "
               "body (text and HTML) and attachment names; web-search syntax: words, \"a phrase\", or, -word; results "
               "ranked by relevance, each with search.highlight"),
    Param.choice("lang", LANGUAGES[1:], description="language the q words are stemmed in (default english); exact "
                 "words match in any language"),
    Param.integer("limit", 50, maximum=200),
    CURSOR,
)


def sentiment_json(row: EmailSentiment | Row[Any] | None) -> dict[str, Any] | None:
    """``{label, score, model}`` of a classified inbound email; None before classification (or when it failed)."""
    if row is None or row.label is None:
        return None
    return {"label": row.label, "score": row.score, "model": row.model}


#: What :func:`summary_json` reads, for lists that select columns rather than load Email objects
#: (the bodies and headers are the bulk of an email row and a list shows none of them).
SUMMARY_COLUMNS = tuple(getattr(Email, name) for name in (
    "id", "account_id", "direction", "status", "message_id", "thread_id", "from_email", "from_name", "to_emails",
    "cc_emails", "subject", "snippet", "received_at", "sent_at", "linked", "needs_review", "attachment_count",
    "open_count", "click_count", "pipeline_state", "seen", "flagged", "answered", "deleted_on_server", "kind"))
SENTIMENT_COLUMNS = (EmailSentiment.label, EmailSentiment.score, EmailSentiment.model)


def summary_json(e: Email | Row[Any], sentiment: EmailSentiment | Row[Any] | None = None) -> dict[str, Any]:
    """An email in lists: no bodies, a snippet instead (``e``: an Email, or a row of :data:`SUMMARY_COLUMNS`;
    ``sentiment``: its EmailSentiment, or a row with :data:`SENTIMENT_COLUMNS`)."""
    return {
        "id": e.id, "account_id": e.account_id, "direction": e.direction, "status": e.status, "message_id": e.message_id,
        "thread_id": e.thread_id, "from_email": e.from_email, "from_name": e.from_name, "to_emails": e.to_emails,
        "cc_emails": e.cc_emails, "subject": e.subject, "snippet": e.snippet, "received_at": iso(e.received_at),
        "sent_at": iso(e.sent_at), "linked": e.linked, "needs_review": e.needs_review,
        "attachment_count": e.attachment_count, "open_count": e.open_count, "click_count": e.click_count,
        "pipeline_state": e.pipeline_state, "sentiment": sentiment_json(sentiment),
        "flags": {"seen": e.seen, "flagged": e.flagged, "answered": e.answered},
        "deleted_on_server": e.deleted_on_server,
        "kind": e.kind,
        # badge data for outbound mail: unopened / opened / clicked (human events only)
        "tracking_status": None if e.direction != "outbound" else
        "clicked" if e.click_count else "opened" if e.open_count else "unopened",
    }


def _list(who: Actor, request: Request) -> dict[str, Any]:
    q = {p.name: p.read(request) for p in LIST_PARAMS}
    limit = q["limit"]
    stmt = (select(Email, EmailSentiment).outerjoin(EmailSentiment, col(EmailSentiment.email_id) == col(Email.id))
            .where(col(Email.org_id) == who.org_id, col(Email.deleted_at).is_(None), who.visible(Email.account_id)))
    if q["account_id"]:
        stmt = stmt.where(Email.account_id == q["account_id"])
    if q["linked"] is not None:
        stmt = stmt.where(col(Email.linked).is_(q["linked"]))
    if q["needs_review"] is not None:
        stmt = stmt.where(col(Email.needs_review).is_(q["needs_review"]))
    if q["direction"]:
        stmt = stmt.where(Email.direction == q["direction"])
    for param, etype in (("contact_id", "contact"), ("lead_id", "lead"), ("entity_account_id", "account"),
                         ("opportunity_id", "opportunity")):
        if q.get(param):
            stmt = stmt.where(select(EmailLink.id).where(EmailLink.email_id == Email.id, EmailLink.entity_type == etype,
                                                         EmailLink.entity_id == q[param]).exists())
    if q["state"]:
        stmt = stmt.where(Email.pipeline_state == q["state"])
    if q["sentiment"]:
        stmt = stmt.where(col(EmailSentiment.label) == q["sentiment"])
    if q["q"]:
        return _search(who.org_id, stmt, q)
    at = func.coalesce(Email.received_at, Email.sent_at, Email.created_at)
    cursor = read_keyset(q["cursor"])
    if cursor is not None:
        when_dt, last = cursor
        stmt = stmt.where(or_(at < when_dt, and_(at == when_dt, col(Email.id) < last)))
    stmt = stmt.order_by(at.desc(), col(Email.id).desc()).limit(limit + 1)
    with Session(get_engine()) as s:
        pairs = list(s.execute(stmt).all())
    rows = [e for e, _ in pairs]
    items = [summary_json(e, sentiment) for e, sentiment in pairs[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last_row = rows[limit - 1]
        next_cursor = keyset_cursor(last_row.received_at or last_row.sent_at or last_row.created_at, last_row.id)
    return {"items": items, "next_cursor": next_cursor}


def _search(org_id: str, stmt: Any, q: dict[str, Any]) -> dict[str, Any]:
    """A full-text search page: the filtered emails matching ``q``, best first, with highlighted passages.

    PostgreSQL ranks the newest :data:`~models.search.RANK_WINDOW` matches that pass the filters
    (more when paging deeper); SQLite ranks every match, asking the index for a few pages' worth
    first and widening when the filters leave too few.
    """
    limit, offset, lang = q["limit"], read_offset(q["cursor"]), q["lang"] or "english"
    engine = get_engine()
    want = offset + limit + 1
    postgres = engine.dialect.name == "postgresql"
    top: int | None = max(RANK_WINDOW, want) if postgres else max(4 * want, 200)
    # columns, not Email objects: a page of 50 would otherwise read and decode every body and header
    columns = (*SUMMARY_COLUMNS, *SENTIMENT_COLUMNS)
    mark = headline(q["q"], lang) if postgres else None
    with Session(engine) as s:
        prepare_search(s)
        while True:
            found = matches(engine.dialect.name, org_id, q["q"], lang, top=top, within=stmt if postgres else None,
                            keep=want if postgres else None)
            if found is None:
                return {"items": [], "next_cursor": None}
            page = stmt.with_only_columns(*columns, found.c.rank).join(found, found.c.email_id == Email.id)
            if mark is not None:  # PostgreSQL: the highlights in the same query, for the page's rows only
                page = page.add_columns(mark.label("highlight")).join(SEARCH_TABLE, SEARCH_TABLE.c.email_id == Email.id)
            page = page.order_by(*order_by_rank(found, col(Email.id))).offset(offset).limit(limit + 1)
            rows = list(s.execute(page).all())
            if postgres or top is None or len(rows) > limit:
                break
            if s.execute(select(func.count()).select_from(found)).scalar_one() < top:  # every match was in the window
                break
            top = top * 8 if top < 100_000 else None
        if mark is not None:
            marks = {r.id: marked(r.highlight) for r in rows[:limit]}
        elif postgres:
            marks = {}
        else:
            marks = highlights(s, [r.id for r in rows[:limit]], q["q"], lang)
    items = [{**summary_json(r, r), "search": {"rank": float(r.rank or 0), "highlight": marks.get(r.id, "")}}
             for r in rows[:limit]]
    return {"items": items, "next_cursor": offset_cursor(offset + limit) if len(rows) > limit else None}


@router.route("GET", "/api/v1/emails", summary="List emails (linked=false is the unlinked inbox)",
              query=LIST_PARAMS, response=EmailsPage)
async def list_emails(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(_list, actor(request), request))


_CACHE_MAX_BODY = 512 * 1024  # larger bodies are sanitized per read rather than held in the cache


@lru_cache(maxsize=128)
def _cached_safe_html(html: str, cid_urls: tuple[tuple[str, str], ...], remote_content: bool) -> str:
    return safe_html(html, cid_urls=dict(cid_urls), remote_content=remote_content)


def _safe_html(html: str, cid_urls: tuple[tuple[str, str], ...], remote_content: bool) -> str:
    """Sanitized HTML, computed once per (body, attachment URLs, remote choice) in this process."""
    if len(html) > _CACHE_MAX_BODY:
        return safe_html(html, cid_urls=dict(cid_urls), remote_content=remote_content)
    return _cached_safe_html(html, cid_urls, remote_content)


def email_json(s: Session, e: Email, base_url: str, *, remote_content: bool = False) -> dict[str, Any]:
    """The full API view of one email (API.md "Emails")."""
    docs = list(s.execute(select(Document).where(Document.email_id == e.id).order_by(col(Document.part_index))).scalars())
    cids = tuple(sorted((d.content_id, f"{base_url}/api/v1/emails/{e.id}/attachments/{d.id}") for d in docs if d.content_id))
    links = list(s.execute(select(EmailLink).where(EmailLink.email_id == e.id)).scalars())
    by_type: dict[str, list[str]] = {"contact": [], "lead": [], "account": [], "opportunity": []}
    for link in links:
        by_type.setdefault(link.entity_type, []).append(link.entity_id)
    send = send_json(s, e)
    return {
        **summary_json(e, s.get(EmailSentiment, e.id)),
        "send_at": send["send_at"] if send else None, "deferred_until": send["deferred_until"] if send else None,
        "bcc_emails": e.bcc_emails, "body_text": e.body_text, "body_html": e.body_html,
        "body_html_safe": _safe_html(e.body_html, cids, remote_content) if e.body_html else None,
        "bounces": e.bounces or [],
        "in_reply_to": e.in_reply_to, "references": e.references,
        "attachments": [{"id": d.id, "filename": d.document_name, "content_type": d.document_file_mimeType, "size": d.size,
                         "inline": d.inline, "content_id": d.content_id,
                         "url": f"{base_url}/api/v1/emails/{e.id}/attachments/{d.id}"} for d in docs],
        "links": {"contact_ids": by_type["contact"], "lead_ids": by_type["lead"], "account_ids": by_type["account"],
                  "opportunity_ids": by_type["opportunity"], "needs_review": e.needs_review,
                  "details": [{"entity_type": link.entity_type, "entity_id": link.entity_id, "how": link.how} for link in links]},
        "tracking": {"open_count": e.open_count, "click_count": e.click_count, "first_open_at": iso(e.first_open_at),
                     "last_open_at": iso(e.last_open_at)},
        "template_id": e.template_id, "notion_page_url": e.notion_page_url, "send": send,
        # the From display name holds another address ("ceo@client.example" <x@elsewhere.example>)
        "suspicious_sender": e.suspicious_sender,
        "parse_error": e.parse_error, "defects": e.defects, "error": e.error,
    }


def send_json(s: Session, e: Email) -> dict[str, Any] | None:
    """Where an outbound email is in sending: schedule, cap deferral, retries, each SMTP transaction."""
    from models import Delivery, Outbox

    box = s.get(Outbox, e.id)
    if box is None:
        return None
    deliveries = list(s.execute(select(Delivery).where(Delivery.email_id == e.id).order_by(col(Delivery.seq))).scalars())
    return {
        "state": box.state, "kind": box.kind, "category": box.category, "send_at": iso(box.send_at),
        "deferred_until": iso(box.deferred_until), "next_attempt_at": iso(box.next_attempt_at),
        "track_opens": box.track_opens, "track_clicks": box.track_clicks, "idempotency_key": box.idempotency_key,
        "sent_copy": {"state": box.sent_copy, "error": box.sent_copy_error},
        "attempts": sum(d.attempts for d in deliveries),
        "deliveries": [{"recipients": d.recipients, "state": d.state, "attempts": d.attempts, "smtp_code": d.smtp_code,
                        "smtp_message": d.smtp_message, "error_code": d.error_code, "refused": d.refused,
                        "log": d.log} for d in deliveries],
    }


REMOTE_CONTENT = Param.boolean("remote_content", False, description="true: body_html_safe keeps remote images (they may track the reader)")


@router.route("GET", "/api/v1/emails/{id}", summary="One email with bodies, attachments, links, tracking", response=EmailOut,
              query=(REMOTE_CONTENT,), responses={404: "not found"})
async def get_email(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    remote = bool(REMOTE_CONTENT.read(request))

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            return email_json(s, _load(s, who, email_id), get_settings().public_url, remote_content=remote)

    return JSONResponse(await run_in_threadpool(run))


@router.route("GET", "/api/v1/emails/{id}/attachments/{attachment_id}", summary="Download an attachment",
              response=Raw("*/*", {"type": "string", "format": "binary"}), responses={404: "not found"})
async def download_attachment(request: Request) -> Response:
    who, email_id, att_id = actor(request), request.path_params["id"], request.path_params["attachment_id"]

    def find() -> Document:
        with Session(get_engine()) as s:
            _load(s, who, email_id)
            doc = s.get(Document, att_id)
            if doc is None or doc.email_id != email_id:
                raise ApiError.not_found("attachment")
            return doc

    doc = await run_in_threadpool(find)
    from pipeline.clients.storage import StorageNotFound, get_storage

    storage = get_storage()
    try:
        exists = await run_in_threadpool(storage.exists, doc.storage_key)
    except StorageNotFound:
        exists = False
    if not exists:
        raise ApiError(404, "not_found", "attachment bytes are missing from storage")
    safe_name = doc.document_name.replace('"', "'")
    from urllib.parse import quote

    ascii_name = safe_name.encode("ascii", "replace").decode()
    headers = {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(doc.document_name)}",
               "Content-Length": str(doc.size), "X-Content-Type-Options": "nosniff"}
    return StreamingResponse(iterate_in_threadpool(storage.open_stream(doc.storage_key)), media_type=doc.document_file_mimeType,
                             headers=headers)


class FlagsIn(Body):
    seen: bool | None = Field(default=None, description="true: mark read (\\Seen) on every location; false: unread")
    flagged: bool | None = Field(default=None, description="true: star (\\Flagged); false: unstar")


@router.route("PATCH", "/api/v1/emails/{id}", summary="Mark read/unread or flagged: written to the server (UID STORE) on every location",
              body=FlagsIn, response=EmailOut, responses={404: "not found"})
async def patch_email(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    body = await parse_body(request, FlagsIn)

    def run() -> dict[str, Any]:
        with Session(get_engine()) as s:
            _load(s, who, email_id)
        if not request_flag_change(who.org_id, email_id, seen=body.seen, flagged=body.flagged, user_id=who.user_id):
            raise ApiError.not_found("email")
        with Session(get_engine()) as s:
            return email_json(s, _load(s, who, email_id), get_settings().public_url)

    return JSONResponse(await run_in_threadpool(run))


class LinkIn(Body):
    entity_type: Literal["contact", "lead", "account", "opportunity"]
    entity_id: str = Field(min_length=1, max_length=64)


@router.route("POST", "/api/v1/emails/{id}/links", summary="Link an email to a CRM record by hand", body=LinkIn,
              response=LinkAdded, responses={404: "email or record not found"})
async def add_link(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    org_id = who.org_id
    body = await parse_body(request, LinkIn)

    def run() -> dict[str, Any]:
        from models.upsert import insert_ignore

        with Session(get_engine()) as s:
            e = _load(s, who, email_id)
            if s.get(ENTITY_MODELS[body.entity_type], (org_id, body.entity_id)) is None:
                raise ApiError.not_found(body.entity_type)
            how = f"manual:{who.user_id}"[:64] if who.user_id else "manual"  # who linked it, when a user did
            added = insert_ignore(s, EmailLink, [{"org_id": org_id, "email_id": e.id, "entity_type": body.entity_type,
                                                  "entity_id": body.entity_id, "how": how}], ["email_id", "entity_type", "entity_id"])
            e.linked = True
            s.add(e)
            if added:  # the webhook event, in the link's transaction
                s.flush()
                data = email_payloads(s, [e.id]).get(e.id, {"email_id": e.id})
                record_event(s, org_id, "email.linked", {**data, "source": "manual", "entity_type": body.entity_type,
                                                         "entity_id": body.entity_id})
            s.commit()
            return email_json(s, e, get_settings().public_url)["links"]

    return JSONResponse({"email_id": email_id, "links": await run_in_threadpool(run)})


@router.route("DELETE", "/api/v1/emails/{id}/links/{entity_type}/{entity_id}", summary="Remove a link", status=204,
              path_params={"entity_type": Param.choice("entity_type", ("contact", "lead", "account", "opportunity"))},
              responses={404: "not found"})
async def remove_link(request: Request) -> Response:
    who, email_id = actor(request), request.path_params["id"]
    etype, eid = request.path_params["entity_type"], request.path_params["entity_id"]

    def run() -> None:
        with Session(get_engine()) as s:
            e = _load(s, who, email_id)
            link = s.execute(select(EmailLink).where(EmailLink.email_id == e.id, EmailLink.entity_type == etype,
                                                     EmailLink.entity_id == eid)).scalar_one_or_none()
            if link is None:
                raise ApiError.not_found("link")
            s.delete(link)
            s.flush()
            still = s.execute(select(EmailLink.id).where(EmailLink.email_id == e.id).limit(1)).first() is not None
            s.execute(update(Email).where(col(Email.id) == e.id).values(linked=still, needs_review=e.needs_review and still))
            s.commit()

    await run_in_threadpool(run)
    return Response(status_code=204)
