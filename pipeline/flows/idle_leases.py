"""Which watcher holds which mailbox in IDLE: leases on ``email_accounts`` (``idle_owner``,
``idle_lease_until``) and the watchers' heartbeats (``idle_watchers``).

A watcher claims free mailboxes up to its fair share (those due divided by the live watchers),
renews what it holds in one statement per round, and gives back what it should no longer hold. A
watcher that dies stops renewing: its leases run out within one lease period and the others claim
the mailboxes. Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two watchers never take the
same mailbox; the lease columns make one owner per mailbox at any time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, func, not_, or_, select, update
from sqlmodel import Session, col

from models import EmailAccount, IdleWatcher, utcnow
from models.db import get_engine, is_postgres
from pipeline.stages.idle import share_change

__all__ = ["IDLE_RECHECK", "Round", "due_filter", "give_back", "idle_counts", "mark_idling", "mark_no_idle", "retire", "round_trip"]

IDLE_RECHECK = timedelta(days=1)
"""A server found without IDLE is asked again after this long (servers get upgraded)."""


def due_filter(now: datetime) -> list[ColumnElement[bool]]:
    """Mailboxes that should be held in IDLE: live, syncing, with an IMAP host, not refusing our
    credentials, and not known to lack IDLE (unless that was found out long ago)."""
    return [
        col(EmailAccount.deleted_at).is_(None),
        col(EmailAccount.imap_host).is_not(None),
        col(EmailAccount.sync_state).not_in(("disabled", "reconnect_required")),
        not_(and_(col(EmailAccount.sync_state) == "error", col(EmailAccount.last_error_code) == "auth")),
        or_(col(EmailAccount.idle_capable).is_not(False), col(EmailAccount.idle_checked_at) < now - IDLE_RECHECK),
    ]


@dataclass(frozen=True, slots=True)
class Round:
    """One round of a watcher's bookkeeping: what it still holds, what it claimed, what to give back,
    its share, the mailboxes due and the live watchers."""

    kept: set[str]
    claimed: list[str]
    give_back: list[str]
    share: int
    due: int
    live: int


def round_trip(watcher_id: str, host: str, pid: int, held: Collection[str], idling: int, capacity: int,
               lease: timedelta, share_of: Callable[[int, int], int]) -> Round:
    """Heartbeat, renew ``held``, then claim or give back toward the fair share. ``share_of`` is
    ``(due, live_watchers) -> int`` (:func:`pipeline.stages.idle.fair_share` with the capacity bound)."""
    now = utcnow()
    until = now + lease
    with Session(get_engine()) as s:
        _heartbeat(s, watcher_id, host, pid, len(held), idling, capacity, now)
        kept: set[str] = set()
        if held:
            kept = set(s.execute(update(EmailAccount).where(
                col(EmailAccount.id).in_(sorted(held)), col(EmailAccount.idle_owner) == watcher_id, *due_filter(now))
                .values(idle_lease_until=until).returning(col(EmailAccount.id))).scalars())
        due = int(s.execute(select(func.count()).select_from(EmailAccount).where(*due_filter(now))).scalar_one())
        live = int(s.execute(select(func.count()).select_from(IdleWatcher)
                             .where(col(IdleWatcher.heartbeat_at) >= now - lease)).scalar_one())
        share = share_of(due, max(1, live))
        want = share_change(len(kept), share)
        claimed: list[str] = []
        give: list[str] = []
        if want > 0 and capacity > len(kept):
            claimed = _claim(s, watcher_id, min(want, capacity - len(kept)), now, until)
        elif want < 0:
            give = sorted(kept)[: -want]
        s.commit()
    return Round(kept, claimed, give, share, due, live)


def _heartbeat(s: Session, watcher_id: str, host: str, pid: int, held: int, idling: int, capacity: int, now: datetime) -> None:
    values = dict(host=host[:200], pid=pid, heartbeat_at=now, held=held, idling=idling, capacity=capacity)
    if s.execute(update(IdleWatcher).where(col(IdleWatcher.id) == watcher_id).values(**values)).rowcount == 0:  # type: ignore[attr-defined]
        s.add(IdleWatcher(id=watcher_id, started_at=now, **values))  # type: ignore[arg-type]
        s.flush()


def _claim(s: Session, watcher_id: str, limit: int, now: datetime, until: datetime) -> list[str]:
    free = or_(col(EmailAccount.idle_lease_until).is_(None), col(EmailAccount.idle_lease_until) < now)
    pick = select(col(EmailAccount.id)).where(*due_filter(now), free).order_by(col(EmailAccount.id)).limit(limit)
    if is_postgres(s.get_bind()):
        pick = pick.with_for_update(skip_locked=True)
    return list(s.execute(update(EmailAccount).where(col(EmailAccount.id).in_(pick.scalar_subquery()), free)
                          .values(idle_owner=watcher_id, idle_lease_until=until, idle_since=None)
                          .returning(col(EmailAccount.id))).scalars())


def give_back(watcher_id: str, account_ids: Collection[str]) -> None:
    """Release leases (the mailboxes go to whoever claims next), clearing ``idle_since``."""
    if not account_ids:
        return
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).where(col(EmailAccount.id).in_(sorted(account_ids)), col(EmailAccount.idle_owner) == watcher_id)
                  .values(idle_owner=None, idle_lease_until=None, idle_since=None))
        s.commit()


def mark_idling(watcher_id: str, started: Collection[str], stopped: Collection[str]) -> None:
    """Show which held mailboxes idle now (``idle_since``) and which no longer do."""
    if not started and not stopped:
        return
    now = utcnow()
    with Session(get_engine()) as s:
        if started:
            s.execute(update(EmailAccount).where(col(EmailAccount.id).in_(sorted(started)), col(EmailAccount.idle_owner) == watcher_id)
                      .values(idle_since=now, idle_capable=True, idle_checked_at=now))
        if stopped:
            s.execute(update(EmailAccount).where(col(EmailAccount.id).in_(sorted(stopped)), col(EmailAccount.idle_owner) == watcher_id)
                      .values(idle_since=None))
        s.commit()


def mark_no_idle(watcher_id: str, account_id: str) -> None:
    """The server offers no IDLE: the mailbox keeps polling; watchers ask again after :data:`IDLE_RECHECK`."""
    now = utcnow()
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).where(col(EmailAccount.id) == account_id, col(EmailAccount.idle_owner) == watcher_id).values(
            idle_capable=False, idle_checked_at=now, idle_owner=None, idle_lease_until=None, idle_since=None))
        s.commit()


def retire(watcher_id: str) -> None:
    """A watcher stopping cleanly: give everything back and drop its heartbeat."""
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).where(col(EmailAccount.idle_owner) == watcher_id)
                  .values(idle_owner=None, idle_lease_until=None, idle_since=None))
        s.execute(delete(IdleWatcher).where(col(IdleWatcher.id) == watcher_id))
        s.commit()


def idle_counts(s: Session, now: datetime) -> tuple[int, int]:
    """(mailboxes due for IDLE, mailboxes idling under a live lease), for the fleet gauges."""
    due = int(s.execute(select(func.count()).select_from(EmailAccount).where(*due_filter(now))).scalar_one())
    idling = int(s.execute(select(func.count()).select_from(EmailAccount).where(
        *due_filter(now), col(EmailAccount.idle_since).is_not(None), col(EmailAccount.idle_lease_until) >= now)).scalar_one())
    return due, idling
