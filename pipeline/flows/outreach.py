"""Who on the team mailed a customer lately ("duplicate outreach"), across every mailbox of the organization.

The teammate's identity (``user_id``: who sent it through mailpipe, else the mailbox's owner) and
when are shared with everyone in the organization; the content (``email_id``, ``subject``) only
with those who may see that mailbox (:class:`models.access.Actor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import Email, EmailAccount, EmailAddress, EmailLink, Outbox, normalize_email, utcnow
from models.access import Actor
from pipeline.flows.conversations import COUNTED_STATUSES

__all__ = ["DEFAULT_DAYS", "recent_outreach"]

DEFAULT_DAYS = 14
MAX_ITEMS = 100


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def recent_outreach(s: Session, who: Actor, *, addresses: Sequence[str] = (), entity: tuple[str, str] | None = None,
                    days: int = DEFAULT_DAYS, exclude_user: str | None = None, now: datetime | None = None,
                    limit: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """Mail of the last ``days`` to or from ``addresses`` or linked to ``entity`` (type, id), newest first:
    ``[{user_id, email_id, subject, direction, at, account_id, visible}]``; ``exclude_user`` leaves a user's own mail out."""
    now = now or utcnow()
    norms = sorted({n for n in (normalize_email(a) for a in addresses) if n})
    matches = []
    if norms:
        matches.append(col(Email.id).in_(select(EmailAddress.email_id).where(
            EmailAddress.org_id == who.org_id, col(EmailAddress.address_norm).in_(norms))))
    if entity is not None:
        matches.append(col(Email.id).in_(select(EmailLink.email_id).where(
            EmailLink.org_id == who.org_id, EmailLink.entity_type == entity[0], EmailLink.entity_id == entity[1])))
    if not matches:
        return []
    at = func.coalesce(Email.received_at, Email.sent_at, Email.created_at)
    sender = func.coalesce(Outbox.user_id, EmailAccount.user_id)
    stmt = (sa_select(col(Email.id), col(Email.account_id), col(Email.subject), col(Email.direction), at.label("at"),
                   sender.label("user_id"))
            .join(EmailAccount, col(EmailAccount.id) == col(Email.account_id))
            .outerjoin(Outbox, col(Outbox.email_id) == col(Email.id))
            .where(col(Email.org_id) == who.org_id, col(Email.deleted_at).is_(None), col(Email.status).in_(COUNTED_STATUSES),
                   at >= now - timedelta(days=days), or_(*matches))
            .order_by(at.desc(), col(Email.id).desc()).limit(limit))
    if exclude_user is not None:
        stmt = stmt.where(sender != exclude_user)
    rows = list(s.execute(stmt).all())
    visible = set(s.execute(who.mailboxes().where(col(EmailAccount.id).in_({r.account_id for r in rows}))).scalars()) if rows else set()
    out = []
    for r in rows:
        shown = r.account_id in visible
        out.append({"user_id": r.user_id, "email_id": r.id if shown else None, "subject": r.subject if shown else None,
                    "direction": r.direction, "at": _iso(r.at), "account_id": r.account_id if shown else None, "visible": shown})
    return out
