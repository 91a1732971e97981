"""The webhook event outbox: record an event inside the transaction of the change that caused it.

Any flow calls, inside its own transaction and before its commit::

    record_event(session, org_id, "email.received", {"email_id": ..., ...}, dedupe_key=f"email.received:{email_id}")

The row commits or rolls back with the change, so a crash never loses an event nor announces a
change that did not happen. Nothing is written when no enabled endpoint of the organization takes
that type (the outbox stays empty for organizations without webhooks). ``dedupe_key`` makes a
repeated stage (a redelivered message) record nothing new. After the commit a dispatch job is
enqueued (best effort: the ``webhooks`` sweep finds undispatched events anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from sqlalchemy import event as sa_event
from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import Email, EmailAccount, EmailLink, WebhookEndpoint, WebhookEvent, new_id, utcnow
from models.upsert import insert_ignore
from pipeline import jobs
from pipeline.stages.webhooks import EVENT_TYPES, TEST_EVENT, subscribes

__all__ = ["email_payloads", "note_sync_state", "record_event", "record_events", "wants"]

log = structlog.get_logger("mailpipe.webhooks")

_SUBS = "webhook_subscriptions"
_KICK = "webhook_kick"


def record_event(session: Session, org_id: str, type: str, data: dict[str, Any], *, dedupe_key: str | None = None,
                 endpoint_id: str | None = None) -> str | None:
    """Write one webhook event in the caller's transaction (the caller commits).

    Args:
        session: the session of the change's transaction.
        org_id: the organization the event belongs to.
        type: one of :data:`pipeline.stages.webhooks.EVENT_TYPES` (or ``webhook.test``).
        data: the payload's ``data`` (JSON-serializable; ids and fields, never bodies or secrets).
        dedupe_key: unique per organization (e.g. ``email.sent:<email id>``); a second record with
            the same key writes nothing.
        endpoint_id: only this endpoint gets it (the test event).

    Returns the event id, or None when nothing was written (no subscriber, or a repeat).
    """
    ids = record_events(session, org_id, [(type, data, dedupe_key)], endpoint_id=endpoint_id)
    return ids[0] if ids else None


def wants(session: Session, org_id: str, *types: str) -> bool:
    """Whether an enabled endpoint of the organization takes one of these event types (the lookup is
    cached for the transaction and shared with :func:`record_events`): emit points skip building
    payloads nobody will receive, the common case on the ingest, tracking and send paths."""
    return any(subscribes(subs, t) for subs in _subscriptions(session, org_id) for t in types)


def record_events(session: Session, org_id: str, events: Sequence[tuple[str, dict[str, Any], str | None]], *,
                  endpoint_id: str | None = None) -> list[str]:
    """:func:`record_event` for several ``(type, data, dedupe_key)`` of one organization (one lookup of
    its endpoints); returns the ids written."""
    for type_, _, _ in events:
        if type_ not in EVENT_TYPES and type_ != TEST_EVENT:
            raise ValueError(f"unknown webhook event type {type_!r}")
    if endpoint_id is None:
        subscriptions = _subscriptions(session, org_id)
        events = [e for e in events if any(subscribes(subs, e[0]) for subs in subscriptions)]
    if not events:
        return []
    now = utcnow()
    rows: list[dict[str, Any]] = [{"id": "evt_" + new_id(), "org_id": org_id, "type": t, "data": d, "dedupe_key": (k[:200] if k else None),
             "endpoint_id": endpoint_id, "created_at": now, "dispatched_at": None} for t, d, k in events]
    keyed = [r for r in rows if r["dedupe_key"] is not None]
    if keyed:
        known = set(session.execute(select(WebhookEvent.dedupe_key).where(
            col(WebhookEvent.org_id) == org_id, col(WebhookEvent.dedupe_key).in_([r["dedupe_key"] for r in keyed]))).scalars())
        rows = [r for r in rows if r["dedupe_key"] is None or r["dedupe_key"] not in known]
    if not rows:
        return []
    insert_ignore(session, WebhookEvent, rows, ["org_id", "dedupe_key"])
    _kick_after_commit(session)
    return [r["id"] for r in rows]


def _subscriptions(session: Session, org_id: str) -> list[list[str]]:
    """The event lists of the organization's enabled endpoints (cached on the session for this transaction)."""
    cache: dict[str, list[list[str]]] = session.info.setdefault(_SUBS, {})
    if org_id not in cache:
        cache[org_id] = [list(e or ()) for e in session.execute(select(WebhookEndpoint.events).where(
            col(WebhookEndpoint.org_id) == org_id, col(WebhookEndpoint.disabled).is_(False))).scalars()]
        if not session.info.get(_SUBS + "_hook"):
            session.info[_SUBS + "_hook"] = True
            sa_event.listen(session, "after_transaction_end", _forget_subscriptions)
    return cache[org_id]


def _forget_subscriptions(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_SUBS, None)


def _kick_after_commit(session: Session) -> None:
    if session.info.get(_KICK):
        return
    session.info[_KICK] = True
    sa_event.listen(session, "after_commit", _kick, once=True)
    sa_event.listen(session, "after_soft_rollback", _unkick, once=True)


def _unkick(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_KICK, None)


def _kick(session: Session) -> None:
    session.info.pop(_KICK, None)
    try:
        jobs.WEBHOOK_DISPATCH.send()
    except Exception as exc:  # the sweep dispatches it anyway
        log.warning("webhook_dispatch_enqueue_failed", error=type(exc).__name__)


def email_payloads(session: Session, email_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``data`` fields every email event carries, per email id: ids, owner, subject, sender, links."""
    ids = sorted(set(email_ids))
    if not ids:
        return {}
    rows = session.execute(sa_select(col(Email.id), col(Email.account_id), col(Email.direction), col(Email.message_id),
                                  col(Email.thread_id), col(Email.subject), col(Email.from_email), col(Email.to_emails),
                                  col(Email.received_at), col(Email.sent_at)).where(col(Email.id).in_(ids))).all()
    owners = dict(session.execute(select(EmailAccount.id, EmailAccount.user_id).where(
        col(EmailAccount.id).in_({r.account_id for r in rows}))).all())
    links: dict[str, dict[str, list[str]]] = {r.id: {"contact_ids": [], "lead_ids": [], "account_ids": [], "opportunity_ids": []}
                                              for r in rows}
    for email_id, etype, eid in session.execute(select(EmailLink.email_id, EmailLink.entity_type, EmailLink.entity_id).where(
            col(EmailLink.email_id).in_(list(links))).order_by(EmailLink.entity_type, EmailLink.entity_id)).all():
        key = f"{etype}_ids"
        if key in links[email_id]:
            links[email_id][key].append(eid)
    out = {}
    for r in rows:
        at = r.received_at if r.direction == "inbound" else r.sent_at
        out[r.id] = {"email_id": r.id, "account_id": r.account_id, "user_id": owners.get(r.account_id),
                     "direction": r.direction, "message_id": r.message_id, "thread_id": r.thread_id, "subject": r.subject,
                     "from_email": r.from_email, "to_emails": list(r.to_emails or []), "at": at.isoformat() if at else None,
                     **links[r.id]}
    return out


SETTLED_STATES = ("idle", "error", "reconnect_required", "disabled")  # "syncing" comes and goes with every run


def note_sync_state(session: Session, account_id: str, state: str, *, error: str | None = None,
                    error_code: str | None = None) -> str | None:
    """``account.sync_state_changed`` when an account settles in a state other than the one last
    announced (in the caller's transaction). Runs that start and end ``idle`` announce nothing;
    the conditional update makes two writers announce a change once."""
    if state not in SETTLED_STATES:
        return None
    row = session.execute(sa_select(col(EmailAccount.org_id), col(EmailAccount.user_id), col(EmailAccount.email),
                                    col(EmailAccount.reported_sync_state)).where(col(EmailAccount.id) == account_id)).one_or_none()
    previous = (row.reported_sync_state if row is not None else None) or "idle"
    if row is None or previous == state:
        return None
    reported = col(EmailAccount.reported_sync_state)
    unchanged = reported.is_(None) if row.reported_sync_state is None else reported == row.reported_sync_state
    moved = session.execute(update(EmailAccount).where(col(EmailAccount.id) == account_id, unchanged)
                            .values(reported_sync_state=state))
    if getattr(moved, "rowcount", 0) != 1:
        return None
    return record_event(session, row.org_id, "account.sync_state_changed", {
        "account_id": account_id, "user_id": row.user_id, "email": row.email, "state": state, "previous_state": previous,
        "error": (error or "")[:500] or None, "error_code": error_code})
