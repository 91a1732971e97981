"""The retention policy: an organization's emails older than its ``retention_days`` are purged
(:func:`pipeline.flows.purge.purge_emails`, like an erase: files, rows, and remembered so no sync
brings them back), in small batches that each hold their locks for one short transaction.

The daily sweep hands each organization with a policy to the ``privacy`` queue (at most once a day,
by ``retention_run_at``); ``mailpipe retention run`` calls :func:`apply_retention` for every one now.
An email's age is its received (inbound) or sent (outbound) time, else when it was stored.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from models import Email, Organization, utcnow
from models.db import get_engine
from pipeline import jobs
from pipeline.flows.purge import BUSY_STATES, SENDING, PurgeCounts, purge_emails
from pipeline.scheduler import register_sweep

__all__ = ["BATCH", "apply_retention", "retention_all", "sweep_retention"]

log = structlog.get_logger("mailpipe.retention")

BATCH = 100
EVERY = timedelta(days=1)


def apply_retention(org_id: str, *, now: datetime | None = None, budget_seconds: float | None = None) -> tuple[PurgeCounts, bool]:
    """Purge this organization's emails older than its policy; returns what was deleted and whether
    more is left (the time budget ran out first)."""
    now = now or utcnow()
    total = PurgeCounts()
    with Session(get_engine()) as s:
        org = s.get(Organization, org_id)
        days = org.retention_days if org is not None else None
        s.execute(update(Organization).where(col(Organization.id) == org_id).values(retention_run_at=now))
        s.commit()
    if not days or days <= 0:
        return total, False
    cutoff = now - timedelta(days=days)
    age = func.coalesce(Email.received_at, Email.sent_at, Email.created_at)
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    more = False
    while True:
        if deadline is not None and time.monotonic() > deadline:
            more = True
            break
        with Session(get_engine(), expire_on_commit=False) as s:
            ids = list(s.execute(select(Email.id).where(
                Email.org_id == org_id, age < cutoff,
                # mail still in the ingest chain, or waiting to be sent or being sent, is left for a later run
                col(Email.pipeline_state).not_in(BUSY_STATES), col(Email.status).not_in((*SENDING, "scheduled")),
            ).order_by(age).limit(BATCH)).scalars())
            if not ids:
                break
            total.add(purge_emails(s, org_id, ids, reason="retention"))
    if total.emails:
        log.info("retention_applied", org_id=org_id, days=days, more=more, **total.as_dict())
    return total, more


def retention_all(now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Apply every organization's policy now (``mailpipe retention run``)."""
    with Session(get_engine()) as s:
        orgs = list(s.execute(select(Organization.id).where(col(Organization.retention_days).is_not(None))).scalars())
    return {org_id: apply_retention(org_id, now=now)[0].as_dict() for org_id in orgs}


@register_sweep("retention")
def sweep_retention(session: Session, now: datetime) -> int:
    """Once a day per organization with a policy: hand it to the ``privacy`` queue."""
    due = list(session.execute(select(Organization.id).where(
        col(Organization.retention_days).is_not(None),
        or_(col(Organization.retention_run_at).is_(None), col(Organization.retention_run_at) < now - EVERY)).limit(100)).scalars())
    if not due:
        return 0
    # Marked first: a lost message waits a day at most, and a long purge is never started twice.
    session.execute(update(Organization).where(col(Organization.id).in_(due)).values(retention_run_at=now))
    session.commit()
    for org_id in due:
        jobs.PRIVACY_RETENTION.send(org_id)
    return len(due)
