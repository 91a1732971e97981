"""Sending: ``POST /api/v1/emails/send``, reply, forward and cancel (API.md "Emails").

The handlers validate, record the send (``pipeline.flows.outbound.submit``) and hand it to the send
actor; they answer 202 with the email id before any SMTP traffic. Errors are 4xx JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from models import Document, Email, EmailAccount
from models.db import get_engine
from pipeline.flows.outbound import Outgoing, SendRejected, Submitted, cancel, submit
from pipeline.flows.outreach import recent_outreach
from pipeline.flows.send_due import enqueue_send
from pipeline.stages.quoting import forward_block, forward_subject, quote_for_reply, reply_subject
from web.access import Actor, actor
from web.api import ApiRouter
from web.errors import ApiError
from web.schemas.emails import CancelOut, SendAccepted
from web.validation import Body, IsoDateTime, parse_body

router = ApiRouter("sending")

SEND_MAX_BODY = 30 * 1024 * 1024  # attachments travel inline as base64

class AttachmentIn(Body):
    """A file given inline (base64) or by the id of an attachment mailpipe already stores."""

    filename: str | None = Field(default=None, max_length=255)
    content_type: str | None = Field(default=None, max_length=255)
    content_base64: str | None = None
    attachment_id: str | None = Field(default=None, max_length=24)
    content_id: str | None = Field(default=None, max_length=250)

    @model_validator(mode="after")
    def _one_source(self) -> AttachmentIn:
        if (self.content_base64 is None) == (self.attachment_id is None):
            raise ValueError("give exactly one of content_base64 or attachment_id")
        if self.content_base64 is not None and not self.filename:
            raise ValueError("filename is required with content_base64")
        return self


class _Common(Body):
    account_id: str = Field(min_length=1, max_length=24)
    cc: list[Annotated[str, StringConstraints(max_length=998)]] = Field(default_factory=list, max_length=100)
    bcc: list[Annotated[str, StringConstraints(max_length=998)]] = Field(default_factory=list, max_length=100)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=50)
    send_at: IsoDateTime | None = None
    track_opens: bool = True
    track_clicks: bool = True
    category: Literal["sales", "marketing"] = "sales"
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    sync_after: bool = Field(default=False, description="send and sync: fetch the mailbox right after sending")

    @field_validator("send_at")
    @classmethod
    def _offset(cls, v: Any) -> Any:
        if v is not None and v.utcoffset() is None:
            raise ValueError("send_at must be ISO-8601 with a UTC offset, e.g. 2026-12-01T09:00:00+01:00")
        return v


class MergeIn(Body):
    """The CRM records whose fields fill the template's {{merge fields}}."""

    contact_id: str | None = Field(default=None, max_length=64)
    lead_id: str | None = Field(default=None, max_length=64)
    account_id: str | None = Field(default=None, max_length=64)
    opportunity_id: str | None = Field(default=None, max_length=64)


class SendIn(_Common):
    to: list[Annotated[str, StringConstraints(max_length=998)]] = Field(min_length=1, max_length=100)
    subject: str = Field(default="", max_length=998)
    body_html: str | None = Field(default=None, max_length=5_000_000)
    body_text: str | None = Field(default=None, max_length=5_000_000)
    template_id: str | None = Field(default=None, max_length=24)
    merge: MergeIn | None = None
    in_reply_to_email_id: str | None = Field(default=None, max_length=24)


class ReplyIn(_Common):
    body_html: str | None = Field(default=None, max_length=5_000_000)
    body_text: str | None = Field(default=None, max_length=5_000_000)
    template_id: str | None = Field(default=None, max_length=24)
    reply_all: bool = False
    include_quote: bool = True


class ForwardIn(_Common):
    to: list[Annotated[str, StringConstraints(max_length=998)]] = Field(min_length=1, max_length=100)
    note_html: str | None = Field(default=None, max_length=5_000_000)
    include_attachments: bool = True


def _outgoing(body: _Common, **fields: Any) -> Outgoing:
    return Outgoing(account_id=body.account_id, cc=list(body.cc), bcc=list(body.bcc),
                    attachments=[a.model_dump() for a in body.attachments], send_at=body.send_at,
                    track_opens=body.track_opens, track_clicks=body.track_clicks, category=body.category,
                    idempotency_key=body.idempotency_key, sync_after=body.sync_after, **fields)


async def _accept(who: Actor, req: Outgoing) -> JSONResponse:
    req.acting_user = who.user_id

    def run() -> tuple[Submitted, list[dict[str, Any]]]:
        with Session(get_engine()) as s:
            owner = who.account(s, req.account_id).user_id  # a mailbox the caller may not use does not exist
        try:
            result = submit(who.org_id, req)
        except SendRejected as exc:
            raise ApiError(exc.status, exc.code, exc.message, exc.details) from None
        if result.created and result.status == "queued":  # handed over at once: the send starts while we answer
            enqueue_send(result.email_id)
        with Session(get_engine()) as s:  # teammates who mailed these recipients lately (duplicate outreach)
            outreach = recent_outreach(s, who, addresses=[*req.to, *req.cc, *req.bcc], exclude_user=who.user_id or owner)
        return result, outreach

    result, outreach = await run_in_threadpool(run)
    return JSONResponse({"id": result.email_id, "status": result.status, "created": result.created,
                         "recent_outreach": outreach}, status_code=202)


@router.route("POST", "/api/v1/emails/send", summary="Send (or schedule) an email from a connected mailbox", body=SendIn,
              status=202, response=SendAccepted, max_body=SEND_MAX_BODY,
              responses={404: "account, template or attachment not found", 409: "idempotency key reused",
                         413: "body or attachments too large"})
async def send(request: Request) -> JSONResponse:
    body = await parse_body(request, SendIn)
    return await _accept(actor(request), _outgoing(
        body, to=list(body.to), subject=body.subject, body_html=body.body_html, body_text=body.body_text,
        template_id=body.template_id, in_reply_to_email_id=body.in_reply_to_email_id,
        merge=body.merge.model_dump() if body.merge is not None else None))


def _original(who: Actor, email_id: str) -> tuple[Email, list[Document], str | None]:
    with Session(get_engine(), expire_on_commit=False) as s:
        e = who.email(s, email_id)
        docs = list(s.execute(select(Document).where(Document.email_id == e.id).order_by(col(Document.part_index))).scalars())
        own = s.execute(select(EmailAccount.email_norm).where(EmailAccount.id == e.account_id)).scalar_one_or_none()
        return e, docs, own


def _reply_to(e: Email) -> str | None:
    """The address a reply goes to: Reply-To when the sender set one, else From."""
    headers = {k.lower(): v for k, v in (e.headers or {}).items()}
    value = headers.get("reply-to")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str) and "@" in value:
        from email.utils import parseaddr

        spec = parseaddr(value)[1]
        if spec:
            return spec
    return e.from_email


def _sender(e: Email) -> str:
    return f"{e.from_name} <{e.from_email}>" if e.from_name else (e.from_email or "")


def _with_quote(original: Email, html: str | None, text: str | None) -> tuple[str | None, str | None]:
    """The reply's HTML and text with the original quoted under them (run in a worker thread)."""
    q_html, q_text = quote_for_reply(original.body_html, original.body_text, sender=_sender(original),
                                     sent_at=original.sent_at or original.received_at)
    if html is not None:  # the text part is derived from the HTML, quote included
        return f"{html}\n<br>\n{q_html}", (f"{text}\n\n{q_text}" if text is not None else None)
    if text is not None:
        return html, f"{text}\n\n{q_text}"
    return html, text


def _forwarded(original: Email, note: str) -> str:
    """The forward's HTML: the note, then the "Forwarded message" block (run in a worker thread)."""
    f_html, _ = forward_block(original.body_html, original.body_text, from_=_sender(original), to=original.to_emails,
                              subject=original.subject, sent_at=original.sent_at or original.received_at)
    return f"{note}\n<br>\n{f_html}" if note else f_html


@router.route("POST", "/api/v1/emails/{id}/reply", summary="Reply to an email (threading headers, quoted original)",
              body=ReplyIn, status=202, response=SendAccepted, max_body=SEND_MAX_BODY,
              responses={404: "email or account not found", 409: "idempotency key reused", 413: "body or attachments too large"})
async def reply(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    body = await parse_body(request, ReplyIn)
    if body.body_html is None and body.body_text is None and body.template_id is None:
        raise ApiError(422, "validation_error", "give body_html, body_text or a template_id")
    original, _, own = await run_in_threadpool(_original, who, email_id)
    if original.direction == "outbound":
        to = list(original.to_emails)
        cc = list(original.cc_emails) if body.reply_all else []
    else:
        first = _reply_to(original)
        to = [first] if first else []
        cc = [a for a in (*original.to_emails, *original.cc_emails) if a.lower() != (own or "")] if body.reply_all else []
    html, text = body.body_html, body.body_text
    if body.include_quote:  # the original is a stranger's: quoting is CPU work, kept off the event loop
        html, text = await run_in_threadpool(_with_quote, original, html, text)
    seen = {a.lower() for a in to}
    unique_cc = []
    for a in [*cc, *body.cc]:
        if a.lower() not in seen:
            seen.add(a.lower())
            unique_cc.append(a)
    cc = unique_cc
    req = _outgoing(body, to=to, subject=reply_subject(original.subject), body_html=html, body_text=text,
                    template_id=body.template_id, in_reply_to_email_id=original.id, kind="reply")
    req.cc = cc
    req.references_from = original
    return await _accept(who, req)


@router.route("POST", "/api/v1/emails/{id}/forward", summary="Forward an email with its attachments and a note",
              body=ForwardIn, status=202, response=SendAccepted, max_body=SEND_MAX_BODY,
              responses={404: "email or account not found", 409: "idempotency key reused", 413: "body or attachments too large"})
async def forward(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]
    body = await parse_body(request, ForwardIn)
    original, docs, _ = await run_in_threadpool(_original, who, email_id)
    html = await run_in_threadpool(_forwarded, original, body.note_html or "")
    attachments = [{"attachment_id": d.id, "filename": d.document_name, "content_type": d.document_file_mimeType,
                    "content_id": None, "content_base64": None} for d in docs if not d.inline] if body.include_attachments else []
    req = _outgoing(body, to=list(body.to), subject=forward_subject(original.subject), body_html=html, body_text=None,
                    kind="forward")
    req.attachments = [*attachments, *req.attachments]
    return await _accept(who, req)


@router.route("POST", "/api/v1/emails/{id}/cancel", summary="Cancel a scheduled send", response=CancelOut,
              responses={404: "email not found", 409: "not scheduled"})
async def cancel_send(request: Request) -> JSONResponse:
    who, email_id = actor(request), request.path_params["id"]

    def run() -> str:
        with Session(get_engine()) as s:
            who.email(s, email_id)
        try:
            return cancel(who.org_id, email_id)
        except SendRejected as exc:
            raise ApiError(exc.status, exc.code, exc.message, exc.details) from None

    return JSONResponse({"id": email_id, "status": await run_in_threadpool(run)})
