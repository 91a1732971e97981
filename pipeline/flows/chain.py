"""The ingest chain's states: parse → store attachments → auto-link → create lead → notify.

Each email records how far it got (``pipeline_state``); the stage flows read the emails waiting in
their input state (:func:`in_state`) and move them on (:func:`move`), so a redelivered or re-swept
message is a no-op for work already done. Messages carry lists of email ids. The
``resume_ingest`` sweep restarts the chain for emails that stopped moving (a lost message, a killed
worker); after :data:`MAX_ATTEMPTS` sweeps an email is quarantined with the reason, never retried
forever.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import update
from sqlalchemy.orm import load_only
from sqlmodel import Session, col, select

from models import Email, Outbox, utcnow
from models.db import get_engine
from pipeline import jobs
from pipeline.scheduler import register_sweep

__all__ = ["FINAL_STATES", "MAX_ATTEMPTS", "STATES", "chain_sent", "in_state", "move", "raw_digest", "resume_ingest", "start_chain",
           "start_sent_chains"]

log = structlog.get_logger("mailpipe.ingest")

STATES = ("fetched", "parsed", "stored", "linked", "leads", "done", "quarantined")
FINAL_STATES = ("done", "quarantined")
MAX_ATTEMPTS = 8
STALL = timedelta(minutes=15)  # long enough that a queue backlog is not mistaken for a stall
CHAIN_BATCH = 100
SENT_CLAIM = timedelta(minutes=1)  # a batch handed to the chain: other batchers skip it (the stall clock starts later)


def raw_digest(raw: bytes) -> str:
    """Content address of a raw message in storage."""
    return hashlib.sha256(raw).hexdigest()


def start_chain(email_ids: Sequence[str]) -> None:
    """Enqueue the chain for ids, in batches (whether to notify is recorded on each email)."""
    ids = list(email_ids)
    for i in range(0, len(ids), CHAIN_BATCH):
        jobs.ingest_chain(ids[i : i + CHAIN_BATCH]).run()


def chain_sent(account_id: str) -> None:
    """A sent email of this mailbox waits in ``fetched`` for the ingest chain: hand the mailbox's sent
    emails to it together (:func:`start_sent_chains`), rather than one chain per email.

    Sending does not wait for the chain (it links the sent email to contacts, threads it...): under
    load, while the ``ingest.sent`` messages queue behind busy workers, the sends of one mailbox share
    one chain of five messages. A lost message only delays the chain until the ``resume_ingest``
    sweep restarts it. The message is not delayed on purpose: waiting 100 ms batched more, but the
    bigger batches' bursts stalled other sends (p99 one at a time 92-97 ms against 65-71 ms); a queue
    behind busy workers batches by itself.
    """
    jobs.INGEST_SENT.send(account_id)


def start_sent_chains(account_id: str, *, now: datetime | None = None) -> int:
    """Start the chain for the mailbox's sent emails waiting in ``fetched`` (up to a batch); the number handed over.

    The batch is claimed by moving the emails' stall clock a minute ahead in one UPDATE, so
    concurrent batchers (one message per sent email) never start two chains for one email: a row
    another batcher claimed no longer matches ``stage_at <= now``.
    """
    now = now or utcnow()
    with Session(get_engine()) as s:
        waiting = select(Email.id).join(Outbox, col(Outbox.email_id) == col(Email.id)).where(
            col(Outbox.account_id) == account_id, col(Email.pipeline_state) == "fetched", col(Email.stage_at) <= now,
        ).order_by(col(Email.stage_at)).limit(CHAIN_BATCH)
        ids = list(s.execute(waiting).scalars())
        if not ids:
            return 0
        claimed = list(s.execute(
            update(Email).where(col(Email.id).in_(ids), col(Email.pipeline_state) == "fetched", col(Email.stage_at) <= now)
            .values(stage_at=now + SENT_CLAIM).returning(col(Email.id)).execution_options(synchronize_session=False)).scalars())
        s.commit()
    start_chain(claimed)
    return len(claimed)


_PREVIOUS = {"parsed": ("fetched",), "quarantined": ("fetched",), "stored": ("parsed",), "linked": ("stored",),
             "leads": ("linked",), "done": ("leads",)}


def move(session: Session, email_ids: Sequence[str], to_state: str) -> None:
    """Advance emails to ``to_state`` (only from the state before it, so a duplicate chain can never
    move an email backwards) and restart their stall clock. Emails loaded in ``session`` keep their
    old ``pipeline_state`` in memory: read the state from the database after a move."""
    if email_ids:
        # synchronize_session=False: no stage reads the state back from its loaded rows, so the ORM
        # need not re-evaluate the WHERE clause in Python over every object in the session (the
        # rows' other changes are flushed before this statement and are all the commit writes).
        session.execute(update(Email).where(col(Email.id).in_(list(email_ids)), col(Email.pipeline_state).in_(_PREVIOUS[to_state]))
                        .values(pipeline_state=to_state, stage_at=utcnow()).execution_options(synchronize_session=False))


def in_state(session: Session, email_ids: Sequence[str], state: str, *columns: str) -> list[Email]:
    """The emails among ``email_ids`` waiting for the stage that consumes ``state``.

    Name ``columns`` to load only those (bodies are large; most stages never read them).
    """
    stmt = select(Email).where(col(Email.id).in_(list(email_ids)), Email.pipeline_state == state)
    if columns:
        stmt = stmt.options(load_only(*(getattr(Email, c) for c in ("id", "org_id", "account_id", *columns))))
    return list(session.execute(stmt).scalars())


@register_sweep("resume_ingest")
def resume_ingest(session: Session, now: datetime) -> int:
    """Restart the chain for emails stuck mid-pipeline; quarantine those that keep stalling."""
    stuck = list(session.execute(
        select(Email.id, Email.ingest_attempts, Email.pipeline_state)
        .where(col(Email.pipeline_state).not_in(FINAL_STATES), col(Email.stage_at) < now - STALL)
        .limit(2000)
    ).all())
    if not stuck:
        return 0
    give_up = [row.id for row in stuck if row.ingest_attempts + 1 >= MAX_ATTEMPTS]
    retry = [row.id for row in stuck if row.ingest_attempts + 1 < MAX_ATTEMPTS]
    for row in stuck:
        if row.id in give_up:
            session.execute(update(Email).where(Email.id == row.id).values(
                pipeline_state="quarantined", stage_at=now,
                parse_error=f"ingest stalled {MAX_ATTEMPTS} times after stage '{row.pipeline_state}'"))
    if give_up:
        log.warning("ingest_quarantined", count=len(give_up))
    if retry:
        session.execute(update(Email).where(col(Email.id).in_(retry)).values(
            stage_at=now, ingest_attempts=Email.ingest_attempts + 1))
        session.flush()
        start_chain(retry)
    return len(stuck)
