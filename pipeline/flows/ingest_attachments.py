"""Ingest stage 2 (``ingest.attachments``): store each attachment (and inline cid part) with a Documents record.

Storage keys are deterministic (email id + part index), and Documents rows are unique on
(email, part), so repeating the stage overwrites the same objects and inserts nothing twice.
"""

from __future__ import annotations

from sqlmodel import Session

from models import Document, Email
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from pipeline.clients.storage import forget_raw, get_storage, safe_key
from pipeline.flows.chain import in_state, move
from pipeline.flows.raw import raw_of
from pipeline.stages.parse import parse_email

__all__ = ["attachment_key", "store_batch"]


def attachment_key(email: Email, index: int, filename: str) -> str:
    """Where one attachment's bytes live."""
    return safe_key("org", email.org_id, "emails", email.id, f"{index:03d}-{filename}")


def store_batch(email_ids: list[str]) -> None:
    """Write attachments of parsed emails to storage and record them."""
    storage = get_storage()
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "parsed", "attachment_count", "raw_key", "defects")
        stored = 0
        for email in emails:
            if email.attachment_count == 0:
                continue
            raw = raw_of(s, email)
            if raw is None:  # gone from storage and from the server: keep the email, note the loss
                email.defects = [*(email.defects or []), "attachments not stored: raw message no longer available"]
                s.add(email)
                continue
            parsed = parse_email(raw)
            rows = []
            for index, att in enumerate(parsed.attachments):
                key = attachment_key(email, index, att.filename)
                storage.put(key, att.content, att.content_type)
                rows.append({"org_id": email.org_id, "email_id": email.id, "part_index": index,
                             "document_name": att.filename[:255], "document_file_mimeType": att.content_type[:255],
                             "size": att.size, "sha256": att.sha256, "content_id": att.content_id[:500] if att.content_id else None,
                             "inline": att.inline, "storage_key": key})
            stored += insert_ignore(s, Document, rows, ["email_id", "part_index"])
        move(s, [e.id for e in emails], "stored")
        s.commit()
    forget_raw([e.raw_key for e in emails])  # no later stage reads the raw message
    metrics.INGESTED.labels("attachments", "ok").inc(stored)
