"""Fleet gauges the leading scheduler publishes every tick: mailboxes by state, mailboxes whose sync
is stale, mailboxes due for IDLE and those idling, and broker queue depths (ready, delayed, dead). They come from the database and the
broker, so one process (the leader) reports them for all; read them with ``max`` in queries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from models import EmailAccount
from ops import metrics
from ops.settings import get_settings
from pipeline.broker import QUEUES, get_broker
from pipeline.flows.idle_leases import idle_counts
from pipeline.scheduler import register_sweep

__all__ = ["queue_depths", "sweep_fleet_gauges"]

log = structlog.get_logger("mailpipe.fleet")

MIN_STALE = timedelta(minutes=15)


def queue_depths(broker: Any) -> dict[str, tuple[int, int, int]]:
    """(ready, delayed, dead) per queue, from RabbitMQ or the in-memory broker."""
    from dramatiq.common import dq_name

    out: dict[str, tuple[int, int, int]] = {}
    for q in QUEUES:
        if hasattr(broker, "get_queue_message_counts"):
            ready, delayed, dead = broker.get_queue_message_counts(q)
        else:
            queues = getattr(broker, "queues", {})
            ready = queues[q].qsize() if q in queues else 0
            delayed = queues[dq_name(q)].qsize() if dq_name(q) in queues else 0
            dead = len(getattr(broker, "dead_letters_by_queue", {}).get(q, []))
        out[q] = (int(ready), int(delayed), int(dead))
    return out


@register_sweep("fleet_gauges")
def sweep_fleet_gauges(session: Session, now: datetime) -> int:
    counts = dict(session.execute(select(EmailAccount.sync_state, func.count()).where(col(EmailAccount.deleted_at).is_(None))
                                  .group_by(EmailAccount.sync_state)).all())
    for state in metrics.ACCOUNT_STATES:
        metrics.ACCOUNTS.labels(state).set(counts.get(state, 0))
    stale_before = now - max(timedelta(seconds=3 * get_settings().poll_seconds), MIN_STALE)
    stale = session.execute(select(func.count()).select_from(EmailAccount).where(
        col(EmailAccount.deleted_at).is_(None),
        col(EmailAccount.sync_state).not_in(("disabled", "reconnect_required")),
        or_(col(EmailAccount.last_synced_at) < stale_before,
            and_(col(EmailAccount.last_synced_at).is_(None), col(EmailAccount.created_at) < stale_before)))).scalar_one()
    metrics.ACCOUNTS_STALE.set(stale)
    due, idling = idle_counts(session, now)
    metrics.IDLE_DUE.set(due)
    metrics.IDLE_IDLING.set(idling)
    try:
        for q, (ready, delayed, dead) in queue_depths(get_broker()).items():
            metrics.QUEUE_MESSAGES.labels(q, "ready").set(ready)
            metrics.QUEUE_MESSAGES.labels(q, "delayed").set(delayed)
            metrics.QUEUE_MESSAGES.labels(q, "dead").set(dead)
    except Exception as exc:  # the broker being away must not stop the other sweeps
        log.warning("queue_depths_unavailable", error=type(exc).__name__)
    return 0
