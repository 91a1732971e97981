"""``GET /api/v1/emails/{id}/tracking``: the email's tracking summary and one page of its events.

The events of an email (opens and clicks) are one chronological stream ordered by ``(at, id)``;
a page is the next ``limit`` events of that stream after the cursor, split into ``opens`` and
``clicks``, so both lists stay chronological across pages and no event is skipped or repeated
when several share a timestamp. The cursor is opaque to clients (URL-safe base64 of the last
event's time in epoch microseconds and its id); ``next_cursor`` is null on the last page. The
counters (``open_count``, ``click_count``, first/last open) and ``events_total`` cover every event
of the email on every page.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session, col

from models import Email, TrackingEvent
from web.cursors import keyset_cursor, read_keyset
from web.present import iso

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "tracking_page"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
_COLUMNS = (col(TrackingEvent.id), col(TrackingEvent.kind), col(TrackingEvent.at), col(TrackingEvent.ip), col(TrackingEvent.user_agent),
            col(TrackingEvent.machine), col(TrackingEvent.reason), col(TrackingEvent.recipient_email), col(TrackingEvent.method),
            col(TrackingEvent.counted), col(TrackingEvent.url))


def _item(e: Any) -> dict[str, Any]:
    out = {"at": iso(e.at), "ip": e.ip, "user_agent": e.user_agent, "machine": e.machine, "reason": e.reason,
           "recipient_email": e.recipient_email, "method": e.method, "counted": e.counted}
    if e.kind == "click":
        out["url"] = e.url
    return out


def tracking_page(s: Session, email: Email, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> dict[str, Any]:
    """API.md ``GET /api/v1/emails/{id}/tracking`` for one page (see the module docstring)."""
    stmt = select(*_COLUMNS).where(col(TrackingEvent.email_id) == email.id)
    after = read_keyset(cursor)
    if after is not None:
        at, last_id = after
        stmt = stmt.where(or_(col(TrackingEvent.at) > at, and_(col(TrackingEvent.at) == at, col(TrackingEvent.id) > last_id)))
    rows = list(s.execute(stmt.order_by(col(TrackingEvent.at), col(TrackingEvent.id)).limit(limit + 1)).all())
    page = rows[:limit]
    totals = dict(s.execute(select(col(TrackingEvent.kind), func.count()).where(col(TrackingEvent.email_id) == email.id)
                            .group_by(col(TrackingEvent.kind))).all())
    first_after = None
    if email.first_open_at is not None and email.sent_at is not None:
        first_after = round((email.first_open_at - email.sent_at).total_seconds(), 3)
    return {
        "email_id": email.id, "open_count": email.open_count, "click_count": email.click_count,
        "first_open_at": iso(email.first_open_at), "last_open_at": iso(email.last_open_at),
        "first_open_after_send_s": first_after,
        "opens": [_item(e) for e in page if e.kind == "open"],
        "clicks": [_item(e) for e in page if e.kind == "click"],
        "status": "clicked" if email.click_count else "opened" if email.open_count else "unopened",
        "events_total": {"opens": int(totals.get("open", 0)), "clicks": int(totals.get("click", 0))},
        "next_cursor": keyset_cursor(page[-1].at, page[-1].id) if len(rows) > limit else None,
    }
