"""Handing outbound emails to the ``send.email`` job: now, after a delay, when an account is
reconnected, and the scheduler sweep that re-sends whatever the broker lost.

The database is the source of truth (:mod:`pipeline.flows.outbound` records the intent): a lost
message only delays a send until the ``send_due`` sweep finds it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from models import Email, Outbox, utcnow
from models.db import get_engine, is_postgres
from pipeline import jobs
from pipeline.flows.send_lease import SEND_LEASE, due
from pipeline.scheduler import register_sweep

__all__ = ["REQUEUE_AFTER", "enqueue_send", "release_held", "sweep_send_due"]

log = structlog.get_logger("mailpipe.send")

REQUEUE_AFTER = timedelta(minutes=2)  # a queued email not claimed by then is handed to the broker again


def enqueue_send(email_id: str, delay_ms: int | None = None) -> None:
    """Hand an email to the send job (best effort: the sweep re-sends what the broker lost)."""
    try:
        jobs.SEND_EMAIL.send(email_id, delay_ms=delay_ms or None)
    except Exception as exc:  # broker down: the database still has it; the sweep will enqueue it
        log.warning("send_enqueue_failed", email_id=email_id, error=type(exc).__name__)


def release_held(account_id: str) -> int:
    """An account was (re)connected: its mail held for a token goes now (cap-deferred mail re-checks its window)."""
    now = utcnow()
    with Session(get_engine()) as s:
        held = list(s.execute(select(Outbox.email_id).where(
            col(Outbox.account_id) == account_id, col(Outbox.state) == "queued", col(Outbox.deferred_until) > now)).scalars())
        if not held:
            return 0
        s.execute(update(Outbox).where(col(Outbox.email_id).in_(held), col(Outbox.state) == "queued")
                  .values(deferred_until=None, next_attempt_at=None, enqueued_at=now))
        s.commit()
    for email_id in held:
        enqueue_send(email_id)
    log.info("send_released", account_id=account_id, emails=len(held))
    return len(held)


@register_sweep("send_due")
def sweep_send_due(session: Session, now: datetime) -> int:
    """Release scheduled sends that are due, and hand every email with due send work to the broker.

    Work is due when it is queued or mid-send with its retry time reached and no live lease (a
    killed worker's lease runs out), or sent with the Sent copy unfinished. An email handed over
    less than :data:`REQUEUE_AFTER` ago is left alone so a backlog is not enqueued twice.
    """
    released = list(session.execute(select(Outbox.email_id).where(
        col(Outbox.state) == "scheduled", col(Outbox.send_at) <= now).limit(1000)).scalars())
    if released:
        session.execute(update(Outbox).where(col(Outbox.email_id).in_(released), col(Outbox.state) == "scheduled")
                        .values(state="queued", next_attempt_at=None, updated_at=now))
        session.execute(update(Email).where(col(Email.id).in_(released), col(Email.status) == "scheduled")
                        .values(status="queued"))
    stmt = select(Outbox.email_id).where(
        due(now), SEND_LEASE.free(now),
        or_(col(Outbox.enqueued_at).is_(None), col(Outbox.enqueued_at) < now - REQUEUE_AFTER, col(Outbox.email_id).in_(released)),
    ).order_by(col(Outbox.created_at)).limit(1000)
    if is_postgres(session.get_bind()):
        stmt = stmt.with_for_update(skip_locked=True, key_share=True)
    ready = list(session.execute(stmt).scalars())  # ids only: drafts can be megabytes
    if ready:
        session.execute(update(Outbox).where(col(Outbox.email_id).in_(ready)).values(enqueued_at=now))
    session.commit()  # the hand-off time is durable before the messages exist
    for email_id in ready:
        enqueue_send(email_id)
    return len(ready)
