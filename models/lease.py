"""Row leases: one run at a time works on a row (a mailbox's fetch, an email's send, a Notion save).

A lease is two columns on the row: who holds it (``<message id>:<run nonce>``) and until when. A
run claims it with a compare-and-set UPDATE, renews it inside each of its own writes (so a run
that lost it writes nothing), and releases it in its last write. A redelivery of the same Dramatiq
message (its worker died) may take the lease over at once: the older run, if it is in fact alive,
finds its guarded writes refused and stops, so a row never has two writers. A lease nobody renews
runs out, and the scheduler's sweeps hand the row to the broker again.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import InstrumentedAttribute
from sqlmodel import Session, SQLModel

from models.base import utcnow

__all__ = ["Lease", "LeaseLost", "run_owner"]


class LeaseLost(Exception):
    """Another run holds the row now (or the row is gone): stop without writing."""


def run_owner(message_id: str) -> str:
    """The lease owner for one run of a message: the message id (shared by its redeliveries) and a nonce."""
    return f"{message_id}:{secrets.token_hex(4)}"


def _message_of(owner: str) -> str:
    return owner.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease columns of one table, and how long a claim or renewal lasts."""

    model: type[SQLModel]
    key: str
    owner: str
    until: str
    duration: timedelta

    def _col(self, name: str) -> InstrumentedAttribute[Any]:
        column: InstrumentedAttribute[Any] = getattr(self.model, name)
        return column

    def free(self, now: datetime) -> ColumnElement[bool]:
        """A WHERE clause: nobody holds the lease (never taken, released, or run out)."""
        until = self._col(self.until)
        return or_(until.is_(None), until < now)

    def claim(self, s: Session, key: str, owner: str, *, now: datetime | None = None,
              where: Sequence[ColumnElement[bool]] = (), **values: Any) -> bool:
        """Take the lease on row ``key`` for ``owner`` if it is free or held by a run of the same
        message, and the extra ``where`` conditions hold; ``values`` are written with it.

        The caller commits (the claim can share a transaction with reads of the claimed row).
        """
        now = now or utcnow()
        holder = self._col(self.owner)
        res = s.exec(update(self.model).where(
            self._col(self.key) == key, *where,
            or_(self.free(now), holder.startswith(f"{_message_of(owner)}:", autoescape=True)),
        ).values({self.until: now + self.duration, self.owner: owner, **values}))
        return bool(res.rowcount == 1)

    def renew(self, s: Session, key: str, owner: str, *, where: Sequence[ColumnElement[bool]] = (), **values: Any) -> None:
        """Extend the lease inside the caller's transaction and write ``values`` with it;
        :class:`LeaseLost` (after a rollback) when ``owner`` no longer holds it."""
        res = s.exec(update(self.model).where(self._col(self.key) == key, self._col(self.owner) == owner, *where)
                        .values({self.until: utcnow() + self.duration, **values}))
        if res.rowcount != 1:
            s.rollback()
            raise LeaseLost(key)

    def release(self, s: Session, key: str, owner: str, **values: Any) -> bool:
        """Give the lease back (writing ``values`` with it) if ``owner`` still holds it; the caller commits."""
        res = s.exec(update(self.model).where(self._col(self.key) == key, self._col(self.owner) == owner)
                        .values({self.until: None, self.owner: None, **values}))
        return bool(res.rowcount == 1)

    def handing_back(self) -> dict[str, Any]:
        """The values that give the lease back inside a run's last write (with :meth:`renew`'s guard)."""
        return {self.until: None, self.owner: None}
