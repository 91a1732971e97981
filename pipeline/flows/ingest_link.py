"""Ingest stage 3 (``ingest.link``): auto-link emails to contacts, leads and accounts; and retroactive
linking (``link.retro``) when the CRM later pushes a matching record."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from models import Contact, CrmAccount, Email, EmailAccount, EmailAddress, EmailLink, Lead, RelinkRequest, normalize_email, utcnow
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from pipeline import jobs
from pipeline.flows.chain import in_state, move
from pipeline.flows.ingest_sentiment import fan_out as fan_out_sentiment
from pipeline.scheduler import register_sweep
from pipeline.stages.autolink import CrmMatch, DictDirectory, Direction, EntityType, LinkDecision, links_for_new_record, plan_links

__all__ = ["SqlDirectory", "enqueue_relink", "link_batch", "relink_record", "store_links", "sweep_relinks"]


class SqlDirectory:
    """CRM lookups by normalized address for one organization (one query per table)."""

    def __init__(self, session: Session, org_id: str) -> None:
        self.session = session
        self.org_id = org_id

    def lookup(self, normalized_emails: Collection[str]) -> Mapping[str, Sequence[CrmMatch]]:
        wanted = sorted(set(normalized_emails))
        out: dict[str, list[CrmMatch]] = defaultdict(list)
        if not wanted:
            return out
        s, org = self.session, self.org_id
        for c in s.execute(select(Contact.id, Contact.email_norm, Contact.account)
                           .where(Contact.org_id == org, col(Contact.email_norm).in_(wanted))):
            out[c.email_norm].append(CrmMatch("contact", c.id, "contacts.email", c.account))
        for c in s.execute(select(Contact.id, Contact.personal_email_norm, Contact.account).where(
                Contact.org_id == org, col(Contact.personal_email_norm).in_(wanted))):
            out[c.personal_email_norm].append(CrmMatch("contact", c.id, "contacts.personal_email", c.account))
        for ld in s.execute(select(Lead.id, Lead.email_norm).where(Lead.org_id == org, col(Lead.email_norm).in_(wanted))):
            out[ld.email_norm].append(CrmMatch("lead", ld.id, "leads.email"))
        for a in s.execute(select(CrmAccount.id, CrmAccount.email_norm)
                           .where(CrmAccount.org_id == org, col(CrmAccount.email_norm).in_(wanted))):
            out[a.email_norm].append(CrmMatch("account", a.id, "accounts.email"))
        return out


def store_links(s: Session, email: Email, decisions: Iterable[LinkDecision], *, needs_review: bool) -> int:
    """Insert link rows (duplicates ignored) and update the email's flags; returns rows added."""
    rows = _link_rows(email, decisions, needs_review)
    added = insert_ignore(s, EmailLink, rows, ["email_id", "entity_type", "entity_id"])
    if rows:
        email.linked = True
        email.needs_review = email.needs_review or needs_review
        s.add(email)
    return added


def _link_rows(email: Email, decisions: Iterable[LinkDecision], needs_review: bool) -> list[dict[str, object]]:
    return [{"org_id": email.org_id, "email_id": email.id, "entity_type": d.entity_type, "entity_id": d.entity_id,
             "how": d.how, "needs_review": needs_review and d.entity_type in ("contact", "lead")} for d in decisions]


def link_batch(email_ids: list[str]) -> None:
    """Plan and store links for every email of the batch in state ``stored`` (set-at-a-time writes)."""
    with Session(get_engine(), expire_on_commit=False) as s:
        emails = in_state(s, email_ids, "stored", "direction", "from_email", "to_emails", "cc_emails", "linked", "needs_review",
                          "suspicious_sender", "received_at", "silent", "kind")
        if not emails:
            return
        own = dict(s.execute(select(EmailAccount.id, EmailAccount.email_norm).where(
            col(EmailAccount.id).in_({e.account_id for e in emails}))).all())
        by_org: dict[str, list[Email]] = defaultdict(list)
        for e in emails:
            by_org[e.org_id].append(e)
        addresses: list[dict[str, object]] = []
        links: list[dict[str, object]] = []
        flags: list[dict[str, object]] = []
        for org_id, batch in by_org.items():
            # One lookup for the whole batch, then plan each email against the in-memory result.
            batch = [e for e in batch if e.kind == "message"]  # delivery reports and complaints are never linked
            every = {addr for e in batch for addr in _addresses(e)}
            directory = DictDirectory(SqlDirectory(s, org_id).lookup(every))
            for e in batch:
                # the stage raises ValueError for a direction other than the two it names
                plan = plan_links(cast(Direction, e.direction), e.from_email, e.to_emails, e.cc_emails, directory,
                                  own_addresses=(own.get(e.account_id, ""),), suspicious_sender=e.suspicious_sender)
                addresses += [{"org_id": org_id, "email_id": e.id, "address_norm": a} for a in plan.addresses if len(a) <= 320]
                if plan.links:
                    links += _link_rows(e, plan.links, plan.needs_review)
                    flags.append({"id": e.id, "linked": True, "needs_review": bool(e.needs_review or plan.needs_review)})
        s.expunge_all()
        insert_ignore(s, EmailAddress, addresses, ["email_id", "address_norm"])
        insert_ignore(s, EmailLink, links, ["email_id", "entity_type", "entity_id"])
        if flags:
            s.execute(update(Email), flags)
        move(s, [e.id for e in emails], "linked")
        s.commit()
    # beside the chain: it never waits for sentiment (delivery reports and complaints have none)
    fan_out_sentiment([e.id for e in emails if e.direction == "inbound" and e.kind == "message"])
    metrics.INGESTED.labels("link", "linked").inc(len(flags))
    metrics.INGESTED.labels("link", "unlinked").inc(len(emails) - len(flags))
    _observe_arrivals(emails)


def _observe_arrivals(emails: list[Email]) -> None:
    """Arrival latency of new inbound mail (reached the server within the hour; not a re-index)."""
    now = utcnow()
    for e in emails:
        if e.direction == "inbound" and not e.silent and e.received_at is not None:
            waited = (now - e.received_at).total_seconds()
            if 0 <= waited < 3600:
                metrics.ARRIVAL_SECONDS.observe(waited)


def _addresses(e: Email) -> list[str]:
    raw = [e.from_email] if e.direction == "inbound" else [*e.to_emails, *e.cc_emails]
    return [a for a in (normalize_email(x) for x in raw if x) if a]


_RECORD_MODELS: dict[str, type[Contact] | type[Lead] | type[CrmAccount]] = {"contact": Contact, "lead": Lead, "account": CrmAccount}


def relink_record(org_id: str, entity_type: str, entity_id: str) -> int:
    """Link earlier unlinked mail to a contact/lead/account the CRM just created or changed."""
    model = _RECORD_MODELS[entity_type]  # KeyError for anything but the three EntityTypes
    with Session(get_engine(), expire_on_commit=False) as s:
        record = s.get(model, (org_id, entity_id))
        if record is None:
            return 0
        assert isinstance(record, (Contact, Lead, CrmAccount))  # s.get types it as their base, CrmRecord
        fields = {"email": record.email}
        if isinstance(record, Contact):
            fields["personal_email"] = record.personal_email
        account_id = record.account if isinstance(record, Contact) else None
        decisions = links_for_new_record(cast(EntityType, entity_type), entity_id, fields, account_id)
        if not decisions:
            return 0
        addresses = sorted({d.matched_email for d in decisions})
        rows = s.execute(
            select(Email, EmailAddress.address_norm)
            .join(EmailAddress, col(EmailAddress.email_id) == Email.id)
            .where(EmailAddress.org_id == org_id, col(EmailAddress.address_norm).in_(addresses), col(Email.linked).is_(False))
        ).all()
        touched = 0
        for email, address in rows:
            mine = [d for d in decisions if d.matched_email == address]
            if store_links(s, email, mine, needs_review=False):
                touched += 1
        s.commit()
    return touched


def enqueue_relink(org_id: str, entity_type: str, entity_id: str) -> None:
    """Hook for the CRM endpoints: retro-link right after a record is written (the fast path;
    :func:`sweep_relinks` repeats it from the durable request, so a lost message loses nothing)."""
    jobs.LINK_RETRO.send(org_id, entity_type, entity_id)


RELINK_EVERY = timedelta(minutes=1)
RELINK_FOR = timedelta(minutes=10)


@register_sweep("relink_requests")
def sweep_relinks(session: Session, now: datetime) -> int:
    """Re-run recent retro-link requests once a minute for ten minutes, then drop them."""
    session.execute(delete(RelinkRequest).where(col(RelinkRequest.created_at) < now - RELINK_FOR,
                                                col(RelinkRequest.last_run_at).is_not(None)))
    due = list(session.execute(select(RelinkRequest).where(or_(
        col(RelinkRequest.last_run_at).is_(None), col(RelinkRequest.last_run_at) < now - RELINK_EVERY)).limit(1000)).scalars())
    for req in due:
        req.last_run_at = now
        session.add(req)
    session.commit()
    for req in due:
        jobs.LINK_RETRO.send(req.org_id, req.entity_type, req.entity_id)
    return len(due)


