"""``ingest.parse``: raw bytes from storage → structured email fields, thread id and snippet.

A message that cannot be used is quarantined with the reason (its raw bytes stay in storage);
one bad message never fails the batch, and nothing is retried forever.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import select
from sqlmodel import Session

from models import Email, EmailAccount, normalize_email
from models.db import get_engine
from ops import metrics
from pipeline.actors.ingest import in_state, move
from pipeline.broker import actor
from pipeline.clients.storage import StorageError, get_storage
from pipeline.stages.parse import ParsedEmail, parse_email, snippet
from pipeline.stages.threads import thread_key

__all__ = ["apply_parsed", "parse_emails"]

log = structlog.get_logger("mailpipe.parse")


def apply_parsed(email: Email, parsed: ParsedEmail, account_email: str | None) -> None:
    """Copy a parse result onto the email row (pure assignment; no I/O)."""
    email.message_id = email.message_id or parsed.message_id
    email.in_reply_to = parsed.in_reply_to
    email.references = list(parsed.references)
    email.subject = parsed.subject
    if parsed.from_ is not None:
        email.from_email = parsed.from_.email
        email.from_email_norm = normalize_email(parsed.from_.email)
        email.from_name = parsed.from_.name or None
    email.to_emails = [a.email for a in parsed.to]
    email.cc_emails = [a.email for a in parsed.cc]
    email.bcc_emails = [a.email for a in parsed.bcc]
    email.body_text = parsed.text
    email.body_html = parsed.html
    email.snippet = snippet(parsed.text, 100)
    email.headers = dict(parsed.headers)
    email.defects = list(parsed.defects)
    email.attachment_count = len(parsed.attachments)
    if parsed.date is not None:
        email.sent_at = parsed.date
    if email.received_at is None:
        email.received_at = parsed.date
    own = normalize_email(account_email)
    if own is not None and email.from_email_norm == own:
        email.direction = "outbound"
        email.status = "sent"


@actor(actor_name="ingest.parse", queue_name="pipeline", max_retries=3)
def parse_emails(email_ids: list[str]) -> list[str]:
    """Parse every email of the batch still in state ``fetched``."""
    storage = get_storage()
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "fetched")
        if not emails:
            return email_ids
        accounts = {a.id: a for a in s.execute(select(EmailAccount).where(
            EmailAccount.id.in_({e.account_id for e in emails}))).scalars()}  # type: ignore[attr-defined]
        parsed_ids, quarantined = [], []
        for email in emails:
            try:
                raw = storage.get(email.raw_key or "")
            except StorageError as exc:
                email.parse_error = f"raw message missing from storage: {exc}"
                quarantined.append(email.id)
                continue
            parsed = parse_email(raw)
            if parsed.error:
                email.parse_error = parsed.error
                email.defects = list(parsed.defects)
                quarantined.append(email.id)
                continue
            acct = accounts.get(email.account_id)
            apply_parsed(email, parsed, acct.email if acct else None)
            email.thread_id = _thread(s, email, parsed)
            parsed_ids.append(email.id)
            s.add(email)
            s.flush()
        s.add_all(e for e in emails if e.id in quarantined)
        move(s, parsed_ids, "parsed")
        move(s, quarantined, "quarantined")
        s.commit()
    metrics.INGESTED.labels("parse", "ok").inc(len(parsed_ids))
    if quarantined:
        metrics.INGESTED.labels("parse", "quarantined").inc(len(quarantined))
        log.warning("emails_quarantined", count=len(quarantined))
    return email_ids


def _thread(s: Session, email: Email, parsed: ParsedEmail) -> str:
    def known(ids: Sequence[str]) -> str | None:
        if not ids:
            return None
        rows = dict(s.execute(select(Email.message_id, Email.thread_id).where(
            Email.account_id == email.account_id, Email.message_id.in_(list(ids)),  # type: ignore[union-attr]
            Email.thread_id.is_not(None), Email.id != email.id)).all())  # type: ignore[union-attr]
        for candidate in ids:
            if rows.get(candidate):
                return str(rows[candidate])
        return None

    return thread_key(message_id=email.message_id, in_reply_to=parsed.in_reply_to, references=parsed.references,
                      gm_thrid=email.gm_thrid, known_threads=known, fallback=f"email:{email.id}")
