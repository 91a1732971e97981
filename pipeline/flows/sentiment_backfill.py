"""``mailpipe sentiment backfill``: classify mail that arrived before the sentiment stage existed (or
all of it again with ``redo``, after a change of backend), in batches, in this process.

It walks inbound, linked, undeleted emails by id (a keyset, so it can run on a live system and be
interrupted and re-run: what is classified is skipped), optionally only one organization's and only
the last ``days`` days. Each batch is the sentiment stage itself (:func:`ingest_sentiment.classify_batch`),
so accounts that turn at risk notify their owners exactly as new mail would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exists, func
from sqlmodel import Session, col, select

from models import Email, EmailSentiment, utcnow
from models.db import get_engine
from pipeline.flows.ingest_sentiment import READY_STATES, classify_batch

__all__ = ["BackfillResult", "backfill"]


@dataclass(frozen=True, slots=True)
class BackfillResult:
    seen: int
    classified: int
    failed: int
    notified: int


def backfill(*, org_id: str | None = None, days: int | None = None, redo: bool = False, batch: int = 200,
             progress: Callable[[BackfillResult], None] | None = None) -> BackfillResult:
    """Classify every matching email that has no sentiment yet (every one with ``redo``)."""
    after = ""
    seen = classified = failed = notified = 0
    since = utcnow() - timedelta(days=days) if days else None
    while True:
        with Session(get_engine()) as s:
            stmt = select(Email.id).where(col(Email.id) > after, Email.direction == "inbound",
                                          col(Email.pipeline_state).in_(READY_STATES), col(Email.deleted_at).is_(None))
            if org_id is not None:
                stmt = stmt.where(Email.org_id == org_id)
            if since is not None:
                stmt = stmt.where(func.coalesce(Email.received_at, Email.created_at) >= since)
            if not redo:
                stmt = stmt.where(~exists().where(col(EmailSentiment.email_id) == col(Email.id)))
            ids = list(s.exec(stmt.order_by(col(Email.id)).limit(batch)).all())
        if not ids:
            break
        after = ids[-1]
        outcome = classify_batch(ids, redo=redo)
        seen += len(ids)
        classified += outcome.classified
        failed += outcome.failed
        notified += outcome.notified
        if progress is not None:
            progress(BackfillResult(seen, classified, failed, notified))
    return BackfillResult(seen, classified, failed, notified)
