"""Ingest stage 4 (``ingest.leads``): a lead for an unknown human sender (org setting ``auto_create_leads``).

Lead ids are derived from (organization, address), so two emails from the same new sender — in
one batch or racing in two workers — create one lead, and a redelivered message creates none.
A batch inserts its leads in one statement in id order, so two racing batches lock them in the
same order (no deadlock). The owner's ``lead.created`` notification is written with the lead and
pushed to their websocket after the commit, like every notification; the ``lead.created`` webhook
event is written in the same transaction (unique per lead).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlmodel import Session, col, select

from models import EmailAccount, Lead, Organization
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from pipeline.flows import notifications
from pipeline.flows.chain import in_state, move
from pipeline.flows.events_outbox import email_payloads, record_events, wants
from pipeline.flows.ingest_link import store_links
from pipeline.stages.autolink import LinkDecision
from pipeline.stages.leads import decide_lead, lead_notification_text

__all__ = ["create_batch", "lead_id_for"]


def lead_id_for(org_id: str, address: str) -> str:
    """A stable 24-hex id for the lead mailpipe creates for ``address``."""
    return hashlib.sha256(f"{org_id}:{address}".encode()).hexdigest()[:24]


def create_batch(email_ids: list[str]) -> None:
    """Decide and create leads for linked-stage emails, link them, notify the mailbox owner."""
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "linked", "direction", "from_email", "from_name", "headers", "linked",
                          "needs_review", "subject", "suspicious_sender", "kind")
        if not emails:
            return
        orgs = {o.id: o for o in s.execute(select(Organization).where(col(Organization.id).in_({e.org_id for e in emails}))).scalars()}
        accounts = {a.id: a for a in s.execute(select(EmailAccount).where(
            col(EmailAccount.id).in_({e.account_id for e in emails}))).scalars()}
        leads: dict[str, dict[str, Any]] = {}
        notes: list[dict[str, Any]] = []
        for e in emails:
            if e.kind != "message":  # a delivery report or complaint is no new contact
                continue
            org, acct = orgs[e.org_id], accounts[e.account_id]
            headers = {k.replace("_", "-"): str(v) for k, v in (e.headers or {}).items()}
            decision = decide_lead(enabled=org.auto_create_leads, direction=e.direction, from_email=e.from_email,
                                   from_name=None if e.suspicious_sender else e.from_name, headers=headers, already_linked=e.linked,
                                   own_addresses=(acct.email_norm,), org_domains=org.own_domains or ())
            if not decision.create or decision.draft is None:
                continue
            draft = decision.draft
            lead_id = lead_id_for(org.id, draft.email)
            if lead_id not in leads:  # the first email of the batch from this sender names the lead
                first = draft.firstName[:200] if draft.firstName else None
                leads[lead_id] = {"org_id": org.id, "id": lead_id, "firstName": first, "lastName": draft.lastName[:200],
                                  "email": draft.email, "email_norm": draft.email, "status": draft.status,
                                  "lead_source": draft.lead_source, "assigned_to": acct.user_id, "source_email_id": e.id}
                notes.append({"org_id": org.id, "user_id": acct.user_id, "kind": "lead.created",
                              "title": lead_notification_text(draft)[:500], "body": e.subject[:2000], "email_id": e.id,
                              "data": {"lead_id": lead_id, "email": draft.email}, "dedupe_key": f"lead.created:{lead_id}"})
            store_links(s, e, [LinkDecision("lead", lead_id, draft.email, "auto:lead_created")], needs_review=False)
        created = insert_ignore(s, Lead, sorted(leads.values(), key=lambda r: (r["org_id"], r["id"])), ["org_id", "id"])
        pushed = notifications.insert_new(s, notes)
        _record_webhook_events(s, list(leads.values()))
        move(s, [e.id for e in emails], "leads")
        s.commit()
    metrics.INGESTED.labels("leads", "created").inc(created)
    notifications.publish(pushed)


def _record_webhook_events(s: Session, leads: list[dict[str, Any]]) -> None:
    """``lead.created`` outbox events (in the caller's transaction); a lead that existed already has its
    event recorded before, so the dedupe key writes nothing twice."""
    leads = [r for r in leads if wants(s, r["org_id"], "lead.created")]
    if not leads:
        return
    payloads = email_payloads(s, [r["source_email_id"] for r in leads])
    by_org: dict[str, list[tuple[str, dict[str, Any], str | None]]] = {}
    for r in leads:
        src = payloads.get(r["source_email_id"], {})
        data = {**src, "lead_id": r["id"], "lead": {"id": r["id"], "firstName": r["firstName"], "lastName": r["lastName"],
                                                    "email": r["email"], "status": r["status"], "lead_source": r["lead_source"],
                                                    "assigned_to": r["assigned_to"]}}
        by_org.setdefault(r["org_id"], []).append(("lead.created", data, f"lead.created:{r['id']}"))
    for org_id, events in by_org.items():
        record_events(s, org_id, events)
