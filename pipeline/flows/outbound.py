"""Accepting a send: validate, compose the canonical message, record the intent, hand it to the send actor.

Used by the API (``POST /api/v1/emails/send``, ``/reply``, ``/forward``); no HTTP here. The API hands the
accepted email to the send job (:func:`pipeline.flows.send_due.enqueue_send`) after this commit. Everything
the send actor needs is written in one transaction (email row, outbox row with the draft,
deliveries, attachment bytes in storage first), so a lost broker message or a crashed worker only
delays the mail: the ``send_due`` sweep finds it in the database. An ``idempotency_key`` seen
before returns the first email's id and sends nothing new.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models import Delivery, Document, Email, EmailAccount, Outbox, Suppression, Template, User, new_id, normalize_email, utcnow
from models.db import get_engine
from models.search import write_docs
from pipeline.clients.storage import StorageError, get_storage
from pipeline.flows.merge_fields import MergeRecordMissing, merge_values
from pipeline.flows.search_index import search_row
from pipeline.stages import outbound as plan
from pipeline.stages.compose import ComposeError, Draft, OutgoingAttachment, compose, envelope_recipients, recipient_groups
from pipeline.stages.html_text import html_to_text
from pipeline.stages.identity import message_identity
from pipeline.stages.merge import MergeSyntaxError, render_parts, suggest, unknown_fields
from pipeline.stages.parse import snippet
from pipeline.stages.quoting import reply_headers

__all__ = ["Outgoing", "SendRejected", "Submitted", "cancel", "draft_from_json", "submit", "suppressed_recipients"]

MAX_RECIPIENTS = 100
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # all attachments together (Gmail's and Outlook's limit)


class SendRejected(Exception):
    """A request that cannot be sent: ``status`` is the HTTP status, ``code`` the API error code."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


@dataclass
class Outgoing:
    """A validated send request (API.md ``POST /api/v1/emails/send``)."""

    account_id: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str = ""
    body_html: str | None = None
    body_text: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    send_at: datetime | None = None
    track_opens: bool = True
    track_clicks: bool = True
    in_reply_to_email_id: str | None = None
    category: str = "sales"
    idempotency_key: str | None = None
    template_id: str | None = None
    merge: dict[str, Any] | None = None  # {contact_id?, lead_id?, account_id?, opportunity_id?}: fills {{fields}}
    sync_after: bool = False
    kind: str = "send"
    references_from: Email | None = None  # reply: the parent, already loaded and checked
    acting_user: str | None = None  # X-Mailpipe-User: who sends (recorded on the outbox); None: the mailbox's owner

    def fingerprint(self) -> str:
        """sha256 of the request as sent, so a reused idempotency key with another body is caught."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("references_from", "idempotency_key")}
        if data.get("acting_user") is None:
            data.pop("acting_user", None)
        data["send_at"] = self.send_at.isoformat() if self.send_at else None
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Submitted:
    """The email id, its status, and whether this call created it (False: idempotent repeat)."""

    email_id: str
    status: str
    created: bool


def _existing(s: Session, org_id: str, key: str, fingerprint: str) -> Submitted | None:
    row = s.execute(select(Outbox.email_id, Outbox.request_hash).where(Outbox.org_id == org_id, Outbox.idempotency_key == key)).first()
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise SendRejected(409, "idempotency_conflict", "idempotency_key was already used for a different request")
    status = s.execute(select(Email.status).where(Email.id == row.email_id)).scalar_one()
    return Submitted(row.email_id, status, False)


def _attachment_bytes(s: Session, org_id: str, items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes, bool]]:
    """(descriptor, bytes, whether the bytes still have to be stored) per attachment."""
    out: list[tuple[dict[str, Any], bytes, bool]] = []
    total = 0
    storage = get_storage()
    for i, item in enumerate(items):
        if item.get("attachment_id"):
            doc = s.get(Document, item["attachment_id"])
            if doc is None or doc.org_id != org_id:
                raise SendRejected(404, "not_found", f"attachments[{i}]: attachment {item['attachment_id']!r} not found")
            total += doc.size
            if total > MAX_ATTACHMENT_BYTES:
                break
            try:
                content = storage.get(doc.storage_key)
            except StorageError:
                raise SendRejected(422, "validation_error", f"attachments[{i}]: the stored file is missing") from None
            out.append(({"filename": item.get("filename") or doc.document_name,
                         "content_type": item.get("content_type") or doc.document_file_mimeType,
                         "key": doc.storage_key, "content_id": item.get("content_id")}, content, False))
        else:
            try:
                content = base64.b64decode(item.get("content_base64") or "", validate=True)
            except (binascii.Error, ValueError):
                raise SendRejected(422, "validation_error", f"attachments[{i}].content_base64 is not valid base64") from None
            total += len(content)
            out.append(({"filename": item.get("filename") or "attachment",
                         "content_type": item.get("content_type") or "application/octet-stream",
                         "key": None, "content_id": item.get("content_id")}, content, True))
        if total > MAX_ATTACHMENT_BYTES:
            break
    if total > MAX_ATTACHMENT_BYTES:
        raise SendRejected(413, "payload_too_large", f"attachments exceed {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB in total")
    return out


def _merged(s: Session, org_id: str, merge: dict[str, Any] | None, user: User | None, sender_email: str,
            subject: str, html: str | None, text: str | None) -> tuple[str, str | None, str | None]:
    """Subject, HTML and text with their merge fields filled; strict: a field left without value or
    fallback, an unknown field, a syntax error or an unsafe URL value is a 422 naming it."""

    parts = [("subject", subject, "subject"), ("body_html", html, "html"), ("body_text", text, "text")]
    try:
        unknown = unknown_fields([p for _, p, _ in parts if p])
    except MergeSyntaxError as exc:
        raise SendRejected(422, "merge_syntax_error", exc.message, {"position": exc.position}) from None
    if unknown:
        raise SendRejected(422, "unknown_merge_field", f"unknown merge field(s): {', '.join(unknown)}",
                           {"unknown": unknown, "suggestions": {u: suggest(u) for u in unknown}})
    try:
        values = merge_values(s, org_id, merge, user, sender_email)
    except MergeRecordMissing as exc:
        raise SendRejected(404, "not_found", str(exc)) from None
    out, missing, unsafe = render_parts({name: (part, mode) for name, part, mode in parts}, values)
    if missing:
        raise SendRejected(422, "merge_fields_missing",
                           f"no value and no fallback for: {', '.join(missing)} (add a fallback like {{{{firstName|there}}}})",
                           {"missing": list(missing)})
    if unsafe:
        raise SendRejected(422, "unsafe_merge_value", f"values not allowed in a link: {', '.join(unsafe)}", {"unsafe": list(unsafe)})
    return out["subject"] or "", out["body_html"], out["body_text"]


def draft_from_json(d: dict[str, Any], attachments: tuple[OutgoingAttachment, ...], **changes: Any) -> Draft:
    """The stored draft as a compose :class:`Draft` (``changes`` override fields, e.g. the tracked HTML)."""
    fields = dict(
        from_email=d["from_email"], from_name=d.get("from_name"), to=tuple(d.get("to", ())), cc=tuple(d.get("cc", ())),
        bcc=tuple(d.get("bcc", ())), subject=d.get("subject", ""), html=d.get("html"), text=d.get("text"),
        attachments=attachments, message_id=d.get("message_id"),
        date=datetime.fromisoformat(d["date"]) if d.get("date") else None, in_reply_to=d.get("in_reply_to"),
        references=tuple(d.get("references", ())), mailpipe_email_id=d.get("email_id"),
    )
    fields.update(changes)
    return Draft(**fields)


def _compose_or_422(draft: Draft) -> tuple[bytes, str]:
    try:
        return compose(draft)
    except ComposeError as exc:
        raise SendRejected(422, "validation_error", str(exc), {"errors": [{"field": exc.field, "message": exc.message}]}) from None


def suppressed_recipients(s: Session, org_id: str, addresses: Sequence[str], *, marketing: bool) -> dict[str, str]:
    """The addresses among ``addresses`` on the organization's suppression list → their reason
    (unsubscribes only when ``marketing``)."""
    norms = {normalize_email(a) or a: a for a in addresses}
    if not norms:
        return {}
    rows = s.execute(select(Suppression.address_norm, Suppression.reason).where(
        Suppression.org_id == org_id, col(Suppression.address_norm).in_(list(norms)))).all()
    return {addr: reason for addr, reason in rows if marketing or reason != "unsubscribe"}


def submit(org_id: str, req: Outgoing, *, now: datetime | None = None) -> Submitted:
    """Record a send and return its id; the caller enqueues ``send.email`` when status is "queued"."""
    now = now or utcnow()
    fingerprint = req.fingerprint()
    if len(req.to) + len(req.cc) + len(req.bcc) > MAX_RECIPIENTS:
        raise SendRejected(422, "validation_error", f"at most {MAX_RECIPIENTS} recipients per email")
    if req.send_at is not None and req.send_at.utcoffset() is None:
        raise SendRejected(422, "validation_error", "send_at must carry a UTC offset, e.g. 2026-12-01T09:00:00+01:00")
    storage = get_storage()
    with Session(get_engine(), expire_on_commit=False) as s:
        if req.idempotency_key:
            found = _existing(s, org_id, req.idempotency_key, fingerprint)
            if found is not None:
                return found
        account = s.get(EmailAccount, req.account_id)
        if account is None or account.org_id != org_id or account.deleted_at is not None:
            raise SendRejected(404, "not_found", "account not found")
        if not account.smtp_host:
            raise SendRejected(409, "no_smtp", "the account has no SMTP server configured")
        # who sends: the acting user (a member writing from a shared mailbox signs as themselves), else the owner
        user = s.get(User, (org_id, req.acting_user or account.user_id))
        subject, html, text = req.subject, req.body_html, req.body_text
        template_id = None
        if req.template_id:
            template = s.get(Template, req.template_id)
            if template is None or template.org_id != org_id or template.deleted_at is not None:
                raise SendRejected(404, "not_found", "template not found")
            subject = subject or template.subject
            html = html if html is not None else template.body_html
            text = text if text is not None else template.body_text
            template_id = template.id
        if req.template_id or req.merge is not None:
            subject, html, text = _merged(s, org_id, req.merge, user, account.email, subject, html, text)
        if html is None and text is None:
            raise SendRejected(422, "validation_error", "give body_html, body_text or a template_id",
                               {"errors": [{"field": "body_html", "message": "a body is required"}]})
        in_reply_to: str | None = None
        references: tuple[str, ...] = ()
        parent = req.references_from
        if req.in_reply_to_email_id and parent is None:
            parent = s.get(Email, req.in_reply_to_email_id)
            if parent is None or parent.org_id != org_id or parent.deleted_at is not None:
                raise SendRejected(404, "not_found", "in_reply_to_email_id: email not found")
        if parent is not None:
            in_reply_to, references = reply_headers(parent.message_id, parent.references)
        email_id = new_id()
        atts = _attachment_bytes(s, org_id, req.attachments)
        outgoing = tuple(OutgoingAttachment(d["filename"], d["content_type"], content, d["content_id"]) for d, content, _ in atts)
        draft_json: dict[str, Any] = {
            "email_id": email_id, "from_email": account.email, "from_name": user.name if user else None,
            "to": list(req.to), "cc": list(req.cc), "bcc": list(req.bcc), "subject": subject, "html": html, "text": text,
            "in_reply_to": in_reply_to, "references": list(references),
            "date": (req.send_at or now).isoformat(),
        }
        if text is None and isinstance(html, str):
            # The text part compose would derive, computed once here (it is also the stored body_text).
            text = html_to_text(html.replace("\r\n", "\n").replace("\r", "\n"))
        base_draft = draft_from_json(draft_json, outgoing, text=text)
        # Everything is checked (addresses, header injection, sizes) before anything is stored.
        base_raw, message_id = _compose_or_422(base_draft)
        draft_json["message_id"] = message_id
        rcpts = envelope_recipients(base_draft)
        blocked = suppressed_recipients(s, org_id, rcpts, marketing=req.category == "marketing")
        if blocked and not (req.category == "marketing" and all(reason == "unsubscribe" for reason in blocked.values())):
            # Hard bounces, complaints and manual entries block every send; unsubscribes only marketing,
            # which keeps its per-recipient handling (the other recipients still get the mail).
            hard = {a: r for a, r in blocked.items() if r != "unsubscribe"}
            raise SendRejected(422, "recipient_suppressed", f"suppressed recipient(s): {', '.join(sorted(hard))}",
                               {"addresses": sorted(hard), "reasons": hard})
        # Attachment bytes and the canonical message go to storage first; the rows that point at them commit after.
        stored: list[dict[str, Any]] = []
        for i, (desc, content, new) in enumerate(atts):
            if new:
                key = f"outbox/{email_id}/{i}-{hashlib.sha256(content).hexdigest()[:16]}"
                storage.put(key, content, desc["content_type"])
                desc = {**desc, "key": key}
            stored.append(desc)
        base_key = f"raw/{account.id}/outbound-{email_id}.eml"
        storage.put(base_key, base_raw, "message/rfc822")

        tracking = (req.track_opens or req.track_clicks) and html is not None and not (user and user.tracking_opt_out)
        per_recipient = tracking or req.category == "marketing"
        to_specs, cc_specs, bcc_specs = (list(g) for g in recipient_groups(base_draft))
        plans = plan.plan_deliveries(to_specs, cc_specs, bcc_specs, per_recipient=per_recipient)
        suppressed: set[str] = set()
        if req.category == "marketing":
            norms = [normalize_email(a) or a for a in rcpts]
            suppressed = set(s.execute(select(Suppression.address_norm).where(
                Suppression.org_id == org_id, col(Suppression.address_norm).in_(norms))).scalars())
        status = "scheduled" if req.send_at is not None and req.send_at > now else "queued"
        ident = message_identity(base_raw)
        s.add(Email(
            id=email_id, org_id=org_id, account_id=account.id, direction="outbound", status=status,
            dedupe_key=ident.dedupe_key, message_id=ident.message_id, in_reply_to=in_reply_to, references=list(references),
            thread_id=parent.thread_id if parent is not None else None,
            from_email=account.email, from_email_norm=normalize_email(account.email), from_name=draft_json["from_name"],
            to_emails=to_specs, cc_emails=cc_specs, bcc_emails=bcc_specs, subject=subject, body_text=text or "",
            body_html=html, snippet=snippet(text or "", 100), size=len(base_raw), raw_key=base_key,
            pipeline_state="outbox", attachment_count=len(stored), template_id=template_id, created_at=now,
        ))
        s.flush()
        write_docs(s, [search_row(s.get_one(Email, email_id), names=[], attachment_names=[a["filename"] for a in stored])])
        s.add(Outbox(
            email_id=email_id, org_id=org_id, account_id=account.id, user_id=req.acting_user or account.user_id,
            idempotency_key=req.idempotency_key, request_hash=fingerprint, kind=req.kind, state=status, category=req.category,
            track_opens=bool(tracking and req.track_opens), track_clicks=bool(tracking and req.track_clicks),
            draft=draft_json, attachments=stored, base_key=base_key, send_at=req.send_at, sync_after=req.sync_after,
            sent_copy="skipped" if account.saves_sent_copy else "pending", created_at=now, updated_at=now,
            enqueued_at=now if status == "queued" else None,
        ))
        for seq, p in enumerate(plans):
            off = p.tracked_for is not None and (normalize_email(p.tracked_for) or "") in suppressed
            s.add(Delivery(email_id=email_id, seq=seq, recipients=list(p.recipients), tracked_for=p.tracked_for,
                           state="suppressed" if off else "pending", updated_at=now))
        try:
            if template_id:
                s.execute(update(Template).where(col(Template.id) == template_id).values(
                    usage_count=Template.usage_count + 1, last_used_at=now))
            s.commit()
        except IntegrityError:
            s.rollback()
            if req.idempotency_key:  # a concurrent request with the same key won the race
                found = _existing(s, org_id, req.idempotency_key, fingerprint)
                if found is not None:
                    return found
            raise
    return Submitted(email_id, status, True)


def load_attachments(stored: list[dict[str, Any]]) -> list[OutgoingAttachment]:
    """The stored attachment descriptors with their bytes read back from storage."""
    storage = get_storage()
    return [OutgoingAttachment(d["filename"], d["content_type"], storage.get(d["key"]), d.get("content_id")) for d in stored]


def cancel(org_id: str, email_id: str) -> str:
    """Cancel a scheduled send (atomic: a send the scheduler already released is not cancellable)."""
    with Session(get_engine()) as s:
        email = s.get(Email, email_id)
        if email is None or email.org_id != org_id or email.deleted_at is not None:
            raise SendRejected(404, "not_found", "email not found")
        res = s.exec(update(Outbox).where(col(Outbox.email_id) == email_id, col(Outbox.state) == "scheduled")
                        .values(state="cancelled", updated_at=utcnow()))
        if res.rowcount != 1:
            raise SendRejected(409, "not_cancellable", f"only scheduled emails can be cancelled; this one is {email.status}")
        s.execute(update(Email).where(col(Email.id) == email_id).values(status="cancelled"))
        s.commit()
    return "cancelled"
