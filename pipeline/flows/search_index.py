"""Keeping the full-text index current: the search row of a parsed or sent email, and the backfill sweep.

The ingest chain writes an email's search row in the same transaction as its parse result
(:func:`pipeline.flows.ingest_parse.parse_batch` calls :func:`rows_for_parsed`); accepting a send
writes the outgoing email's. Deleting an email deletes its row in the database itself (see
``models/search.py``). :func:`sweep_search_backfill` indexes mail stored before the index existed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists
from sqlmodel import Session, col, select

from models import Document, Email
from models.search import EmailSearch, write_docs
from pipeline.scheduler import register_sweep
from pipeline.stages.parse import ParsedEmail
from pipeline.stages.search_doc import build_search_doc

__all__ = ["rows_for_parsed", "search_row", "sweep_search_backfill"]

BACKFILL_BATCH = 200
BACKFILL_EVERY = timedelta(seconds=30)
BACKFILL_IDLE_EVERY = timedelta(minutes=10)  # once nothing is left, look again rarely
_lock = threading.Lock()
_state: dict[str, Any] = {"at": None, "idle": False}


def search_row(email: Email, *, names: Iterable[str | None], attachment_names: Iterable[str]) -> dict[str, Any]:
    """The ``email_search`` row of ``email`` (its fields as stored, plus the display names and attachment names)."""
    doc = build_search_doc(
        subject=email.subject, names=[email.from_name, *names],
        addresses=[email.from_email, *email.to_emails, *email.cc_emails, *email.bcc_emails],
        body_text=email.body_text, body_html=email.body_html, attachment_names=attachment_names)
    return {"email_id": email.id, "org_id": email.org_id, "language": doc.language, "subject": doc.subject,
            "participants": doc.participants, "attachments": doc.attachments, "body": doc.body,
            "at": email.received_at or email.sent_at or email.created_at}


def rows_for_parsed(results: Iterable[tuple[Email, ParsedEmail]]) -> list[dict[str, Any]]:
    """Search rows for a parsed batch (names from the parsed headers, attachment names from the parts)."""
    return [search_row(e, names=[a.name for a in (*p.to, *p.cc)], attachment_names=[a.filename for a in p.attachments])
            for e, p in results]


@register_sweep("search_backfill")
def sweep_search_backfill(session: Session, now: datetime) -> int:
    """Index parsed mail that has no search row yet (mail stored before the index existed)."""
    with _lock:
        last = _state["at"]
        if last is not None and now - last < (BACKFILL_IDLE_EVERY if _state["idle"] else BACKFILL_EVERY):
            return 0
        _state["at"] = now
    emails = list(session.execute(
        select(Email).where(col(Email.pipeline_state).not_in(("fetched", "quarantined")), col(Email.deleted_at).is_(None),
                            ~exists().where(col(EmailSearch.email_id) == Email.id))
        .limit(BACKFILL_BATCH)).scalars())
    _state["idle"] = len(emails) < BACKFILL_BATCH
    if not emails:
        return 0
    names: dict[str, list[str]] = {}
    for email_id, name in session.execute(select(Document.email_id, Document.document_name).where(
            col(Document.email_id).in_([e.id for e in emails]))):
        names.setdefault(email_id, []).append(name)
    write_docs(session, [search_row(e, names=[], attachment_names=names.get(e.id, [])) for e in emails])
    return len(emails)
