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

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlmodel import Session

from models import Email, TrackingEvent
from web.present import iso
from web.validation import field_error

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "decode_cursor", "encode_cursor", "tracking_page"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_CURSOR = re.compile(r"^(-?\d{1,19}):([0-9A-Za-z_-]{1,64})$")
_COLUMNS = (TrackingEvent.id, TrackingEvent.kind, TrackingEvent.at, TrackingEvent.ip, TrackingEvent.user_agent,
            TrackingEvent.machine, TrackingEvent.reason, TrackingEvent.recipient_email, TrackingEvent.method,
            TrackingEvent.counted, TrackingEvent.url)


def encode_cursor(at: datetime, event_id: str) -> str:
    """The position just after the event at ``at`` with id ``event_id``."""
    micros = (at - _EPOCH) // _MICRO
    return base64.urlsafe_b64encode(f"{micros}:{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(at, id)`` from :func:`encode_cursor`'s output; a 422 naming ``cursor`` for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        m = _CURSOR.match(text)
        if m is None or len(cursor) > 128:
            raise ValueError(text)
        return _EPOCH + int(m.group(1)) * _MICRO, m.group(2)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise field_error("cursor", "not a cursor from this endpoint; pass next_cursor unchanged",
                          text="cursor is malformed") from None


def _item(e: Any) -> dict[str, Any]:
    out = {"at": iso(e.at), "ip": e.ip, "user_agent": e.user_agent, "machine": e.machine, "reason": e.reason,
           "recipient_email": e.recipient_email, "method": e.method, "counted": e.counted}
    if e.kind == "click":
        out["url"] = e.url
    return out


def tracking_page(s: Session, email: Email, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> dict[str, Any]:
    """API.md ``GET /api/v1/emails/{id}/tracking`` for one page (see the module docstring)."""
    stmt = select(*_COLUMNS).where(TrackingEvent.email_id == email.id)
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(TrackingEvent.at > at, and_(TrackingEvent.at == at, TrackingEvent.id > last_id)))  # type: ignore[arg-type,operator]
    rows = list(s.execute(stmt.order_by(TrackingEvent.at, TrackingEvent.id).limit(limit + 1)).all())  # type: ignore[arg-type]
    page = rows[:limit]
    totals = dict(s.execute(select(TrackingEvent.kind, func.count()).where(TrackingEvent.email_id == email.id)
                            .group_by(TrackingEvent.kind)).all())  # type: ignore[arg-type]
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
        "next_cursor": encode_cursor(page[-1].at, page[-1].id) if len(rows) > limit else None,
    }
