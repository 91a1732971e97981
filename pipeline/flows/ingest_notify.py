"""Ingest stage 5 (``ingest.notify``): an in-app notification for the mailbox owner per new linked inbound email.

Notifications are unique on ``email.received:<email id>``, so a repeat inserts nothing; re-indexed
copies (``silent``) and mail that just created a lead (already announced) notify no one.
The ``email.received`` webhook event (every new inbound email, linked or not, with its links) and
``email.linked`` (when it has links) are written in the same transaction, unique per email.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from models import Email, EmailAccount, EmailLink, Notification
from models.db import get_engine
from ops import metrics
from pipeline.flows import notifications
from pipeline.flows.chain import in_state, move
from pipeline.flows.events_outbox import email_payloads, record_events, wants

__all__ = ["notify_batch"]


def notify_batch(email_ids: list[str]) -> None:
    """Write notifications for the batch's emails in state ``leads`` and finish them."""
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "leads", "direction", "linked", "silent", "from_name", "from_email", "subject")
        if not emails:
            return
        owners = dict(s.execute(select(EmailAccount.id, EmailAccount.user_id).where(
            col(EmailAccount.id).in_({e.account_id for e in emails}))).all())
        wanted = [e for e in emails if e.direction == "inbound" and e.linked and not e.silent]
        announced = set(s.execute(select(Notification.email_id).where(
            col(Notification.email_id).in_([e.id for e in wanted]), Notification.kind == "lead.created")).scalars())
        links: dict[str, list[tuple[str, str]]] = {}
        for email_id, etype, eid in s.execute(select(EmailLink.email_id, EmailLink.entity_type, EmailLink.entity_id).where(
                col(EmailLink.email_id).in_([e.id for e in wanted]))).all():
            links.setdefault(email_id, []).append((etype, eid))
        rows = [{
            "org_id": e.org_id, "user_id": owners[e.account_id], "kind": "email.received",
            "title": f"New email from {e.from_name or e.from_email or 'unknown sender'}"[:500],
            "body": e.subject[:2000], "email_id": e.id,
            "data": {"links": [{"entity_type": t, "entity_id": i} for t, i in links.get(e.id, [])]},
            "dedupe_key": f"email.received:{e.id}",
        } for e in wanted if e.id not in announced]
        rows = notifications.insert_new(s, rows)
        _record_webhook_events(s, [e for e in emails if e.direction == "inbound" and not e.silent])
        move(s, [e.id for e in emails], "done")
        s.commit()
    metrics.INGESTED.labels("notify", "ok").inc(len(rows))
    notifications.publish(rows)


def _record_webhook_events(s: Session, emails: list[Email]) -> None:
    """``email.received`` and ``email.linked`` outbox events for new inbound emails (in the caller's transaction)."""
    emails = [e for e in emails if wants(s, e.org_id, "email.received", "email.linked")]
    if not emails:
        return
    payloads = email_payloads(s, [e.id for e in emails])
    by_org: dict[str, list[tuple[str, dict[str, Any], str | None]]] = {}
    for e in emails:
        data = payloads.get(e.id)
        if data is None:
            continue
        events = by_org.setdefault(e.org_id, [])
        events.append(("email.received", data, f"email.received:{e.id}"))
        if any(data[k] for k in ("contact_ids", "lead_ids", "account_ids", "opportunity_ids")):
            events.append(("email.linked", {**data, "source": "auto"}, f"email.linked:{e.id}"))
    for org_id, events in by_org.items():
        record_events(s, org_id, events)
