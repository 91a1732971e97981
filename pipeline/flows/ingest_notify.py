"""Ingest stage 5 (``ingest.notify``): an in-app notification for the mailbox owner per new linked inbound email.

Notifications are unique on ``email.received:<email id>``, so a repeat inserts nothing; re-indexed
copies (``silent``) and mail that just created a lead (already announced) notify no one.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from models import EmailAccount, EmailLink, Notification
from models.db import get_engine
from ops import metrics
from pipeline.flows import notifications
from pipeline.flows.chain import in_state, move

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
        move(s, [e.id for e in emails], "done")
        s.commit()
    metrics.INGESTED.labels("notify", "ok").inc(len(rows))
    notifications.publish(rows)
