"""The send lease on an outbound email: one run at a time works on it, and the rows a run reads.

A run claims the lease only when the email has send work due (queued or mid-send with its retry
time reached, or sent with the Sent copy unfinished), in the same transaction that reads the rows it
works on; every bookkeeping write renews it (:func:`guard`), so a run that lost it stops without
writing; the run's last write gives it back. See :mod:`models.lease`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, text
from sqlmodel import Session, col, select

from models import Delivery, Email, EmailAccount, Outbox, utcnow
from models.db import get_engine, is_postgres
from models.lease import Lease

__all__ = ["EARLY_TOLERANCE", "SEND_LEASE", "Loaded", "claim", "due", "guard", "load", "release", "tx"]

SEND_LEASE = Lease(Outbox, "email_id", "lease_owner", "lease_until", timedelta(minutes=5))
EARLY_TOLERANCE = timedelta(seconds=1)  # a delayed retry message may arrive a hair before its time


@dataclass
class Loaded:
    """The rows a run works on, read in the claiming transaction."""

    outbox: Outbox
    email: Email
    account: EmailAccount | None
    deliveries: list[Delivery]


def due(now: datetime) -> ColumnElement[bool]:
    """A WHERE clause: the email has send work due at ``now`` (not counting the lease)."""
    return or_(
        col(Outbox.state).in_(("queued", "sending"))
        & or_(col(Outbox.next_attempt_at).is_(None), col(Outbox.next_attempt_at) <= now)
        & or_(col(Outbox.deferred_until).is_(None), col(Outbox.deferred_until) <= now),
        (col(Outbox.state) == "sent") & col(Outbox.sent_copy).in_(("pending", "appending"))
        & or_(col(Outbox.next_attempt_at).is_(None), col(Outbox.next_attempt_at) <= now),
    )


def claim(email_id: str, owner: str, now: datetime,
          then: Callable[[Session, Loaded], None] | None = None) -> Loaded | None:
    """Take the email's lease when it has work due and nobody else (but a redelivery of us) holds it,
    and read what the run needs in the same transaction.

    ``then`` runs in that transaction before it commits, so a run's first bookkeeping writes (the
    cap slot, suppressed recipients, the first delivery's ``sending`` mark) cost no round trip of
    their own; what it raises rolls the claim back.
    """
    with tx() as s:
        if not SEND_LEASE.claim(s, email_id, owner, now=now, where=(due(now + EARLY_TOLERANCE),),
                                runs=Outbox.runs + 1, updated_at=now):
            s.rollback()
            return None
        loaded = load(s, email_id)
        if then is not None:
            s.expunge_all()  # ``then`` writes with UPDATE statements; the loaded rows are plain values from here
            then(s, loaded)
        s.commit()
        return loaded


def load(s: Session, email_id: str) -> Loaded:
    """The outbox row, its email and account (one query), and its deliveries."""
    outbox, email, account = s.execute(
        select(Outbox, Email, EmailAccount).join(Email, col(Email.id) == col(Outbox.email_id))
        .outerjoin(EmailAccount, col(EmailAccount.id) == col(Outbox.account_id)).where(col(Outbox.email_id) == email_id)).one()
    return Loaded(outbox, email, account,
                  list(s.execute(select(Delivery).where(Delivery.email_id == email_id).order_by(col(Delivery.seq))).scalars()))


@contextmanager
def tx(*, durable: bool = False) -> Iterator[Session]:
    """A session for one of the send's bookkeeping transactions.

    On PostgreSQL only the ``data`` mark is committed synchronously: it is the one fact a database
    crash must not lose (DATA may follow). WAL order makes every earlier commit durable with it, and
    losing a later one to a database crash at worst turns "sent" back into "data" — reconciled as
    unconfirmed, never resent. A worker crash loses nothing either way.
    """
    with Session(get_engine(), expire_on_commit=False) as s:
        if not durable and is_postgres():
            s.execute(text("SET LOCAL synchronous_commit TO OFF"))
        yield s


def guard(s: Session, email_id: str, owner: str, **values: Any) -> None:
    """Renew the lease inside the caller's transaction, writing the outbox ``values`` in the same
    statement; LeaseLost when this run no longer owns it."""
    SEND_LEASE.renew(s, email_id, owner, updated_at=utcnow(), **values)


def release(email_id: str, owner: str) -> None:
    with tx() as s:
        SEND_LEASE.release(s, email_id, owner)
        s.commit()
