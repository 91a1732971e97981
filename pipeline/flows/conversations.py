"""Conversations: threading stored mail into them, their numbers, status and assignee, the list.

:func:`thread_emails` runs inside the parse stage's transaction (``ingest.parse``), for inbound mail,
Sent-folder copies and mail sent through mailpipe alike: a message joins the conversation of any of
its keys (References / In-Reply-To / its own Message-ID, Outlook's Thread-Index root, Gmail's thread
id), failing that one with the same normalized subject and an overlapping participant within 30
days, failing that it starts one. A message whose keys point at two conversations merges them.
The numbers (:func:`refresh`) are recomputed from the emails, so running it twice changes nothing.

:func:`change` is PATCH: status and assignee, recorded as the acting user; assigning notifies the
assignee in the same transaction (:func:`record_conversation_assigned_event` is where the webhook
event is written).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, tuple_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import Conversation, ConversationKey, Email, EmailAccount, EmailLink, User, utcnow
from models.access import Actor
from models.upsert import insert_ignore
from pipeline.flows import notifications
from pipeline.flows.notify_email import mark_pending
from pipeline.scheduler import register_sweep
from pipeline.stages.conversation_keys import (
    Candidate,
    message_keys,
    normalize_subject,
    participants,
    pick_by_subject,
    search_text,
)

__all__ = ["COUNTED_STATUSES", "Change", "Incoming", "change", "email_notifications", "list_page", "merge",
           "record_conversation_assigned_event", "refresh", "sweep_legacy_threads", "thread_emails"]

# Emails that count in a conversation's numbers: received mail, and sent mail once it went out.
COUNTED_STATUSES = ("received", "sent", "bounced")
# A message dated up to this long before a resolution still reopens it (clock skew, second-precision
# INTERNALDATE); older mail that a later sync finds does not.
REOPEN_SLACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed email about to be threaded, with the headers threading reads."""

    email: Email
    in_reply_to: str | None
    references: Sequence[str]
    thread_index: str | None


def _at(e: Email) -> datetime:
    return e.received_at or e.sent_at or e.created_at


def _live(s: Session, conversation_id: str) -> str | None:
    """Follow ``merged_into`` to the conversation a merged one became; None when there is none
    (a key left behind by a conversation that was erased)."""
    seen = set()
    current = conversation_id
    while current not in seen:
        seen.add(current)
        row = s.execute(select(Conversation.merged_into).where(Conversation.id == current)).first()
        if row is None:
            return None
        if not row[0]:
            return current
        current = row[0]
    return current


def _lives(s: Session, conversation_ids: Iterable[str]) -> list[str]:
    return sorted({live for live in (_live(s, c) for c in conversation_ids) if live is not None})


def thread_emails(s: Session, items: Sequence[Incoming], own: dict[str, str | None]) -> dict[str, str]:
    """Put each email in its conversation (oldest first) and write its ``thread_id``; returns
    {email id: conversation id}. The emails' parsed fields must already be written (the numbers are
    recomputed from the stored rows). ``own``: each account's own address (not a participant).
    The caller commits."""
    out: dict[str, str] = {}
    for item in sorted(items, key=lambda i: _at(i.email)):
        e = item.email
        keys = message_keys(message_id=e.message_id, in_reply_to=item.in_reply_to, references=item.references,
                            thread_index=item.thread_index, gm_thrid=e.gm_thrid)
        people = participants([e.from_email, *e.to_emails, *e.cc_emails], [own.get(e.account_id)])
        found = _conversations_of(s, e.account_id, keys)
        if len(found) > 1:
            conv_id = merge(s, found)
        elif found:
            conv_id = found[0]
        else:
            conv_id = _by_subject(s, e, people) or _start(s, e, people)
        if keys:
            insert_ignore(s, ConversationKey, [{"account_id": e.account_id, "key": k, "conversation_id": conv_id} for k in keys],
                          ["account_id", "key"])
            s.execute(update(ConversationKey).where(  # keys a since-erased conversation left behind
                col(ConversationKey.account_id) == e.account_id, col(ConversationKey.key).in_(keys),
                ~select(Conversation.id).where(col(Conversation.id) == col(ConversationKey.conversation_id)).exists())
                .values(conversation_id=conv_id))
            claimed = _conversations_of(s, e.account_id, keys)  # a concurrent batch may have claimed some first
            if len(claimed) > 1 or (claimed and claimed[0] != conv_id):
                conv_id = merge(s, [conv_id, *claimed])
        e.thread_id = conv_id
        s.execute(update(Email).where(col(Email.id) == e.id).values(thread_id=conv_id))
        if e.direction == "inbound" and not e.silent:
            _reopen(s, conv_id, e)
        out[e.id] = conv_id
        refresh(s, [conv_id])  # the next message of the batch may match it by subject
    return {eid: _live(s, cid) or cid for eid, cid in out.items()}


def _conversations_of(s: Session, account_id: str, keys: Sequence[str]) -> list[str]:
    if not keys:
        return []
    ids = s.execute(select(ConversationKey.conversation_id).where(
        ConversationKey.account_id == account_id, col(ConversationKey.key).in_(list(keys)))).scalars()
    return _lives(s, ids)


def _by_subject(s: Session, e: Email, people: list[str]) -> str | None:
    norm = normalize_subject(e.subject)
    if not norm or not people:
        return None
    rows = s.execute(select(Conversation.id, Conversation.participants, Conversation.first_message_at, Conversation.last_message_at)
                     .where(Conversation.account_id == e.account_id, Conversation.subject_norm == norm,
                            col(Conversation.merged_into).is_(None))
                     .order_by(col(Conversation.last_message_at).desc()).limit(50)).all()
    return pick_by_subject([Candidate(r[0], r[1] or [], r[2], r[3]) for r in rows], people, _at(e))


def _start(s: Session, e: Email, people: list[str]) -> str:
    at = _at(e)
    conv = Conversation(org_id=e.org_id, account_id=e.account_id, subject=e.subject or "", subject_norm=normalize_subject(e.subject),
                        search_text=search_text(e.subject, people), participants=people,
                        first_message_at=at, last_message_at=at, last_direction=e.direction)
    s.add(conv)
    s.flush()
    return conv.id


def _reopen(s: Session, conv_id: str, e: Email) -> None:
    """A customer writing again reopens a resolved conversation: a message stored after the
    resolution and not dated long before it (old mail found by a later sync does not reopen)."""
    s.execute(update(Conversation).where(
        col(Conversation.id) == conv_id, col(Conversation.status) == "resolved",
        or_(col(Conversation.status_changed_at).is_(None),
            and_(col(Conversation.status_changed_at) <= e.created_at, col(Conversation.status_changed_at) <= _at(e) + REOPEN_SLACK)))
        .values(status="open", status_changed_by=None, status_changed_at=utcnow(), updated_at=utcnow()))


def merge(s: Session, conversation_ids: Sequence[str]) -> str:
    """Merge conversations a message bridges into the oldest; returns its id. The survivor keeps its
    status and assignee (taking the others' assignee when it has none; open if any of them is open)."""
    ids = _lives(s, conversation_ids)
    if len(ids) == 1:
        return ids[0]
    convs = list(s.execute(select(Conversation).where(col(Conversation.id).in_(ids))).scalars())
    convs.sort(key=lambda c: (c.first_message_at or c.created_at, c.id))
    survivor, others = convs[0], convs[1:]
    other_ids = [c.id for c in others]
    s.execute(update(Email).where(col(Email.thread_id).in_(other_ids)).values(thread_id=survivor.id))
    s.execute(update(ConversationKey).where(col(ConversationKey.conversation_id).in_(other_ids)).values(conversation_id=survivor.id))
    s.execute(update(Conversation).where(col(Conversation.merged_into).in_(other_ids)).values(merged_into=survivor.id))
    values: dict[str, Any] = {"updated_at": utcnow()}
    if survivor.assignee_id is None:
        taken = next((c for c in others if c.assignee_id), None)
        if taken is not None:
            values.update(assignee_id=taken.assignee_id, assigned_by=taken.assigned_by, assigned_at=taken.assigned_at)
    if survivor.status != "open" and any(c.status == "open" for c in others):
        values["status"] = "open"
    s.execute(update(Conversation).where(col(Conversation.id) == survivor.id).values(**values))
    s.execute(update(Conversation).where(col(Conversation.id).in_(other_ids)).values(
        merged_into=survivor.id, message_count=0, awaiting_reply_since=None, updated_at=utcnow()))
    refresh(s, [survivor.id])
    return survivor.id


def refresh(s: Session, conversation_ids: Sequence[str] | set[str]) -> None:
    """Recompute the numbers of conversations from their emails (idempotent)."""
    for cid in _lives(s, conversation_ids):
        conv = s.get(Conversation, cid)
        if conv is None:
            continue
        rows = list(s.execute(sa_select(col(Email.direction), col(Email.received_at), col(Email.sent_at), col(Email.created_at),
                                     col(Email.from_email), col(Email.to_emails), col(Email.cc_emails), col(Email.subject))
                              .where(col(Email.thread_id) == cid, col(Email.deleted_at).is_(None),
                                     col(Email.status).in_(COUNTED_STATUSES))).all())
        if not rows:
            continue
        own = s.execute(select(EmailAccount.email).where(EmailAccount.id == conv.account_id)).scalar_one_or_none()
        ordered = sorted(rows, key=lambda r: r.received_at or r.sent_at or r.created_at)
        times = [r.received_at or r.sent_at or r.created_at for r in ordered]
        waiting: datetime | None = None
        for r, at in zip(ordered, times, strict=True):
            if r.direction == "inbound":
                waiting = waiting or at
            else:
                waiting = None
        people = participants([a for r in ordered for a in (r.from_email, *r.to_emails, *r.cc_emails)], [own])
        first = ordered[0]
        s.execute(update(Conversation).where(col(Conversation.id) == cid).values(
            message_count=len(rows), first_message_at=times[0], last_message_at=times[-1], last_direction=ordered[-1].direction,
            awaiting_reply_since=waiting, participants=people, subject=first.subject or conv.subject,
            subject_norm=normalize_subject(first.subject or conv.subject),
            search_text=search_text(first.subject or conv.subject, people), updated_at=utcnow()))


# ---- PATCH: status and assignee ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """What a PATCH asks for; ``assignee_id`` is looked at only when ``assign`` (null unassigns)."""

    status: str | None = None
    assign: bool = False
    assignee_id: str | None = None


class UnknownUser(LookupError):
    """The assignee is not a user of the organization."""


def change(s: Session, actor: Actor, conversation_id: str, req: Change) -> tuple[Conversation, list[dict[str, Any]], list[str]]:
    """Apply a PATCH as ``actor``; returns the conversation, the notifications to push after the
    commit and the ids of those that also go out by email. The caller commits."""
    conv = actor.conversation(s, conversation_id)
    now = utcnow()
    pushed: list[dict[str, Any]] = []
    by_email: list[str] = []
    if req.status is not None and req.status != conv.status:
        conv.status, conv.status_changed_by, conv.status_changed_at = req.status, actor.user_id, now
    if req.assign and req.assignee_id != conv.assignee_id:
        if req.assignee_id is not None and s.get(User, (conv.org_id, req.assignee_id)) is None:
            raise UnknownUser(req.assignee_id)
        conv.assignee_id, conv.assigned_by, conv.assigned_at = req.assignee_id, actor.user_id, now
        if req.assignee_id is not None:
            event = record_conversation_assigned_event(s, conv, actor)
            pushed = _assigned_notification(s, conv, actor, now, event)
            by_email = mark_pending(s, pushed)
    conv.updated_at = now
    s.add(conv)
    s.flush()
    return conv, pushed, by_email


def _assigned_notification(s: Session, conv: Conversation, actor: Actor, now: datetime,
                           event: dict[str, Any]) -> list[dict[str, Any]]:
    """The in-app ``conversation.assigned`` notification of the assignee (unique per assignment)."""
    by = f" by {actor.user_id}" if actor.user_id else ""
    row = {"org_id": conv.org_id, "user_id": conv.assignee_id, "kind": "conversation.assigned",
           "title": f"Conversation assigned to you{by}"[:500], "body": conv.subject[:2000], "email_id": event["email_id"],
           # the event's user_id is who acted; the notification's is the assignee (the push goes to them)
           "data": {k: v for k, v in event.items() if k not in ("email_id", "user_id")},
           "dedupe_key": f"conversation.assigned:{conv.id}:{conv.assignee_id}:{now.isoformat()}"[:200]}
    return notifications.insert_new(s, [row])


def record_conversation_assigned_event(s: Session, conv: Conversation, actor: Actor) -> dict[str, Any]:
    """The ``conversation.assigned`` event, built inside the assignment's transaction: its ``data``
    (API.md "Webhooks") travels in the assignee's notification, written in the same transaction.

    This is the one place the webhook outbox row for the event is to be written (the webhooks work
    lands separately): insert it here, with this ``data``, and it commits with the assignment.
    """
    last = s.execute(select(Email.id).where(Email.thread_id == conv.id).order_by(
        func.coalesce(Email.received_at, Email.sent_at, Email.created_at).desc()).limit(1)).scalar_one_or_none()
    return {"conversation_id": conv.id, "account_id": conv.account_id, "assignee_id": conv.assignee_id,
            "user_id": actor.user_id, "assigned_by": actor.user_id, "status": conv.status, "subject": conv.subject[:500],
            "email_id": last}


def email_notifications(ids: list[str]) -> None:
    """Hand notification emails (users with ``notify_by_email``) to the notify queue, after the commit."""
    from pipeline import jobs

    for nid in ids:
        jobs.NOTIFY_EMAIL.send(nid)


# ---- the list -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    account_id: str | None = None
    status: str | None = None
    assignee_id: str | None = None
    unassigned: bool | None = None
    awaiting_reply: bool | None = None
    contact_id: str | None = None
    q: str | None = None


def list_page(s: Session, actor: Actor, f: Filters, limit: int, cursor: tuple[datetime, str] | None) -> tuple[list[Conversation], bool]:
    """Conversations newest activity first, filtered, visible to ``actor``; (rows, whether more follow)."""
    stmt = select(Conversation).where(Conversation.org_id == actor.org_id, col(Conversation.merged_into).is_(None),
                                      actor.visible(Conversation.account_id))
    if f.account_id:
        stmt = stmt.where(Conversation.account_id == f.account_id)
    if f.status:
        stmt = stmt.where(Conversation.status == f.status)
    if f.assignee_id:
        stmt = stmt.where(Conversation.assignee_id == f.assignee_id)
    if f.unassigned is True:
        stmt = stmt.where(col(Conversation.assignee_id).is_(None))
    elif f.unassigned is False:
        stmt = stmt.where(col(Conversation.assignee_id).is_not(None))
    if f.awaiting_reply is True:
        stmt = stmt.where(col(Conversation.awaiting_reply_since).is_not(None))
    elif f.awaiting_reply is False:
        stmt = stmt.where(col(Conversation.awaiting_reply_since).is_(None))
    if f.contact_id:
        linked = (select(Email.thread_id).join(EmailLink, col(EmailLink.email_id) == col(Email.id))
                  .where(EmailLink.org_id == actor.org_id, EmailLink.entity_type == "contact", EmailLink.entity_id == f.contact_id))
        stmt = stmt.where(col(Conversation.id).in_(linked))
    if f.q:
        term = "%" + f.q.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(col(Conversation.search_text).like(term, escape="\\"))
    if cursor is not None:
        when, last = cursor
        # a row value: both dialects walk the (…, last_message_at, id) indexes from the cursor on
        stmt = stmt.where(tuple_(col(Conversation.last_message_at), col(Conversation.id)) < tuple_(when, last))
    stmt = stmt.order_by(col(Conversation.last_message_at).desc(), col(Conversation.id).desc()).limit(limit + 1)
    rows = list(s.execute(stmt).scalars())
    return rows[:limit], len(rows) > limit


# ---- mail stored before conversations existed -----------------------------------------------------

# Thread ids the earlier threading wrote ("mid:<root>", "gm:<thrid>", "email:<id>", "sha256:<digest>"),
# as index ranges: a conversation id is 24 hex digits, so none of them falls inside one.
LEGACY_THREAD_RANGES = (("email:", "email;"), ("gm:", "gm;"), ("mid:", "mid;"), ("sha256:", "sha256;"))
BACKFILL_BATCH = 200


@register_sweep("conversation_backfill")
def sweep_legacy_threads(session: Session, now: datetime) -> int:
    """Put mail threaded before conversations existed into conversations, a batch per tick (oldest
    first, so replies find their parents); once none is left each tick costs four empty index probes."""
    legacy = or_(*(and_(col(Email.thread_id) >= lo, col(Email.thread_id) < hi) for lo, hi in LEGACY_THREAD_RANGES))
    emails = list(session.execute(select(Email).where(legacy, col(Email.pipeline_state).not_in(("fetched", "quarantined")))
                                  .order_by(func.coalesce(Email.received_at, Email.sent_at, Email.created_at))
                                  .limit(BACKFILL_BATCH)).scalars())
    if not emails:
        return 0
    session.expunge_all()  # thread_emails writes thread_id itself (a later merge may move an earlier email)
    own = dict(session.execute(select(EmailAccount.id, EmailAccount.email).where(
        col(EmailAccount.id).in_({e.account_id for e in emails}))).all())
    items = [Incoming(e, e.in_reply_to, list(e.references), (e.headers or {}).get("thread_index")) for e in emails]
    thread_emails(session, items, own)
    return len(emails)
