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
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, tuple_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import Conversation, ConversationKey, Email, EmailAccount, EmailLink, User, new_id, utcnow
from models.access import Actor
from models.upsert import insert_ignore
from pipeline.flows import notifications
from pipeline.flows.events_outbox import record_event, wants
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


def _live_map(s: Session, conversation_ids: Iterable[str]) -> dict[str, str]:
    """{id: the live conversation it is or was merged into}, following ``merged_into``; ids whose
    conversation is gone (keys an erased conversation left behind) are left out. One query per
    merge generation (usually one in all)."""
    out: dict[str, str] = {}
    pending = {c: c for c in set(conversation_ids)}  # asked id → the id to look up next
    for _ in range(20):
        if not pending:
            break
        wanted = sorted(set(pending.values()))
        found: dict[str, str | None] = {}
        for i in range(0, len(wanted), 500):
            found.update(s.execute(select(Conversation.id, Conversation.merged_into).where(
                col(Conversation.id).in_(wanted[i : i + 500]))).all())
        nxt: dict[str, str] = {}
        for asked, current in pending.items():
            if current not in found:
                continue
            merged = found[current]
            if merged:
                nxt[asked] = merged
            else:
                out[asked] = current
        pending = nxt
    return out


def _live(s: Session, conversation_id: str) -> str | None:
    """The live conversation ``conversation_id`` is or was merged into (None: there is none)."""
    return _live_map(s, [conversation_id]).get(conversation_id)


def _lives(s: Session, conversation_ids: Iterable[str]) -> list[str]:
    return sorted(set(_live_map(s, conversation_ids).values()))


@dataclass
class _Thread:
    """A conversation as the batch sees it while threading (an existing one, or one it starts)."""

    id: str
    account_id: str
    subject_norm: str
    people: set[str]
    first: datetime | None
    last: datetime | None
    new: bool = False
    subject: str = ""
    org_id: str = ""
    direction: str | None = None


def thread_emails(s: Session, items: Sequence[Incoming], own: dict[str, str | None]) -> dict[str, str]:
    """Put each email in its conversation (oldest first) and write its ``thread_id``; returns
    {email id: conversation id}. The emails' parsed fields must already be written (the numbers are
    recomputed from the stored rows). ``own``: each account's own address (not a participant).

    The whole batch is threaded with a fixed number of statements (not per message): the known keys
    and the subject candidates are read first, messages join in memory (a union of conversations
    when one bridges two), then the new conversations, keys and thread ids are written in bulk.
    The caller commits."""
    if not items:
        return {}
    ordered = sorted(items, key=lambda i: _at(i.email))
    keys_of = {i.email.id: message_keys(message_id=i.email.message_id, in_reply_to=i.in_reply_to, references=i.references,
                                        thread_index=i.thread_index, gm_thrid=i.email.gm_thrid) for i in ordered}
    people_of = {i.email.id: participants([i.email.from_email, *i.email.to_emails, *i.email.cc_emails], [own.get(i.email.account_id)])
                 for i in ordered}
    norm_of = {i.email.id: normalize_subject(i.email.subject) for i in ordered}
    accounts = sorted({i.email.account_id for i in ordered})

    known = _known_keys(s, {a: {k for i in ordered if i.email.account_id == a for k in keys_of[i.email.id]} for a in accounts})
    threads = _threads_for(s, set(known.values()), {(i.email.account_id, norm_of[i.email.id]) for i in ordered if norm_of[i.email.id]})
    known = {k: cid for k, cid in known.items() if cid in threads}
    parent: dict[str, str] = {}

    def find(cid: str) -> str:
        while parent.get(cid, cid) != cid:
            cid = parent[cid]
        return cid

    def union(ids: set[str]) -> str:
        # the survivor: an existing conversation before a new one, then the oldest
        ordered_ids = sorted(ids, key=lambda c: (threads[c].new, threads[c].first or _EPOCH, c))
        root = ordered_ids[0]
        for other in ordered_ids[1:]:
            parent[other] = root
        return root

    assigned: dict[str, str] = {}
    for item in ordered:
        e, keys = item.email, keys_of[item.email.id]
        found = {find(known[(e.account_id, k)]) for k in keys if (e.account_id, k) in known}
        if len(found) > 1:
            cid = union(found)
        elif found:
            cid = found.pop()
        else:
            cid = _subject_match(threads, e, norm_of[e.id], people_of[e.id], find) or _new_thread(threads, e, norm_of[e.id])
        for k in keys:
            known.setdefault((e.account_id, k), cid)
        t, at = threads[cid], _at(e)
        t.people.update(people_of[e.id])
        t.first = min(t.first, at) if t.first else at
        t.last = max(t.last, at) if t.last else at
        assigned[e.id] = cid

    # write: the new conversations that survived, the existing ones merged, keys, thread ids
    fresh = [threads[c] for c in sorted({find(c) for c in assigned.values()}) if threads[c].new]
    if fresh:
        now = utcnow()
        s.execute(insert(Conversation), [{
            "id": t.id, "org_id": t.org_id, "account_id": t.account_id, "subject": t.subject, "subject_norm": t.subject_norm,
            "search_text": search_text(t.subject, sorted(t.people)), "participants": sorted(t.people)[:50],
            "first_message_at": t.first, "last_message_at": t.last, "last_direction": t.direction, "status": "open",
            "message_count": 0, "created_at": now, "updated_at": now} for t in fresh])
    groups: dict[str, set[str]] = {}
    for cid, t in threads.items():
        if not t.new:
            groups.setdefault(find(cid), set()).add(cid)
    for members in groups.values():
        if len(members) > 1:
            merge(s, sorted(members))  # a message of the batch bridged them
    live = _live_map(s, {find(c) for c in assigned.values()})

    def resolve(cid: str) -> str:
        return live.get(find(cid), find(cid))

    claims: dict[tuple[str, str], str] = {}
    for item in ordered:
        for k in keys_of[item.email.id]:
            claims.setdefault((item.email.account_id, k), resolve(assigned[item.email.id]))
    final = {eid: resolve(cid) for eid, cid in assigned.items()}
    if claims:
        insert_ignore(s, ConversationKey, [{"account_id": a, "key": k, "conversation_id": c} for (a, k), c in claims.items()],
                      ["account_id", "key"])
        final = _claim_keys(s, claims, final)
    s.execute(update(Email), [{"id": eid, "thread_id": cid} for eid, cid in final.items()])
    for item in ordered:
        item.email.thread_id = final[item.email.id]
    _reopen(s, [i.email for i in ordered if i.email.direction == "inbound" and not i.email.silent], final)
    refresh(s, set(final.values()))
    return final


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _known_keys(s: Session, wanted: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """{(account id, key): live conversation id} for the keys already claimed."""
    raw: dict[tuple[str, str], str] = {}
    for account_id, keys in wanted.items():
        ordered = sorted(keys)
        for i in range(0, len(ordered), 500):
            for key, cid in s.execute(select(ConversationKey.key, ConversationKey.conversation_id).where(
                    ConversationKey.account_id == account_id, col(ConversationKey.key).in_(ordered[i : i + 500]))).all():
                raw[(account_id, key)] = cid
    live = _live_map(s, raw.values())
    return {k: live[c] for k, c in raw.items() if c in live}


def _threads_for(s: Session, ids: set[str], subjects: set[tuple[str, str]]) -> dict[str, _Thread]:
    """The existing conversations the batch may join: those its keys name, and those with its subjects."""
    def rows(*where: Any) -> list[Any]:
        return list(s.execute(sa_select(col(Conversation.id), col(Conversation.account_id), col(Conversation.subject_norm),
                                        col(Conversation.participants), col(Conversation.first_message_at),
                                        col(Conversation.last_message_at)).where(*where)).all())

    found: list[Any] = []
    wanted = sorted(ids)
    for i in range(0, len(wanted), 500):
        found += rows(col(Conversation.id).in_(wanted[i : i + 500]))
    by_account: dict[str, list[str]] = {}
    for account_id, norm in sorted(subjects):
        by_account.setdefault(account_id, []).append(norm)
    for account_id, norms in by_account.items():
        for i in range(0, len(norms), 500):
            found += rows(col(Conversation.account_id) == account_id, col(Conversation.subject_norm).in_(norms[i : i + 500]),
                          col(Conversation.merged_into).is_(None))
    return {r[0]: _Thread(r[0], r[1], r[2], set(r[3] or []), r[4], r[5]) for r in found}


def _subject_match(threads: dict[str, _Thread], e: Email, norm: str, people: list[str], find: Any) -> str | None:
    if not norm or not people:
        return None
    candidates = [Candidate(t.id, sorted(t.people), t.first, t.last) for t in threads.values()
                  if t.account_id == e.account_id and t.subject_norm == norm and find(t.id) == t.id]
    return pick_by_subject(candidates, people, _at(e))


def _new_thread(threads: dict[str, _Thread], e: Email, norm: str) -> str:
    t = _Thread(new_id(), e.account_id, norm, set(), None, None, new=True, subject=e.subject or "", org_id=e.org_id,
                direction=e.direction)
    threads[t.id] = t
    return t.id


def _claim_keys(s: Session, ours: dict[tuple[str, str], str], final: dict[str, str]) -> dict[str, str]:
    """After the keys are written: a key another batch claimed first — merge with the conversation
    holding it; a key an erased conversation left behind — take it over."""
    held = _known_keys(s, {a: {k for (acct, k) in ours if acct == a} for a in {a for a, _ in ours}})
    for (account_id, key), cid in ours.items():
        if (account_id, key) not in held:
            s.execute(update(ConversationKey).where(col(ConversationKey.account_id) == account_id, col(ConversationKey.key) == key)
                      .values(conversation_id=cid))
    conflicts = {(cid, held[k]) for k, cid in ours.items() if k in held and held[k] != cid}
    for mine, theirs in sorted(conflicts):
        merge(s, [mine, theirs])
    if not conflicts:
        return final
    live = _live_map(s, set(final.values()))
    return {eid: live.get(cid, cid) for eid, cid in final.items()}


def _reopen(s: Session, emails: list[Email], final: dict[str, str]) -> None:
    """A customer writing again reopens a resolved conversation: a message stored after the
    resolution and not dated long before it (old mail found by a later sync does not reopen)."""
    if not emails:
        return
    resolved = dict(s.execute(select(Conversation.id, Conversation.status_changed_at).where(
        col(Conversation.id).in_({final[e.id] for e in emails}), col(Conversation.status) == "resolved")).all())
    reopen = {final[e.id] for e in emails if final[e.id] in resolved and (
        resolved[final[e.id]] is None or (resolved[final[e.id]] <= e.created_at and resolved[final[e.id]] <= _at(e) + REOPEN_SLACK))}
    if reopen:
        now = utcnow()
        s.execute(update(Conversation).where(col(Conversation.id).in_(reopen)).values(
            status="open", status_changed_by=None, status_changed_at=now, updated_at=now))
        convs = s.execute(select(Conversation).where(col(Conversation.id).in_(sorted(reopen)))).scalars()
        for conv in (c for c in convs if wants(s, c.org_id, "conversation.status_changed")):
            by_mail = max((e for e in emails if final[e.id] == conv.id), key=lambda e: e.id)
            record_status_changed_event(s, conv, None, previous="resolved", reason="new_message", email_id=by_mail.id)


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


def refresh(s: Session, conversation_ids: Iterable[str]) -> None:
    """Recompute the numbers of conversations from their emails (idempotent; a few statements for
    any number of conversations)."""
    ids = _lives(s, conversation_ids)
    if not ids:
        return
    convs: dict[str, tuple[str, str]] = {}
    mails: dict[str, list[Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        convs.update({r[0]: (r[1], r[2]) for r in s.execute(select(Conversation.id, Conversation.account_id, Conversation.subject)
                                                              .where(col(Conversation.id).in_(chunk))).all()})
        for r in s.execute(sa_select(col(Email.thread_id), col(Email.direction), col(Email.received_at), col(Email.sent_at),
                                     col(Email.created_at), col(Email.from_email), col(Email.to_emails), col(Email.cc_emails),
                                     col(Email.subject))
                           .where(col(Email.thread_id).in_(chunk), col(Email.deleted_at).is_(None),
                                  col(Email.status).in_(COUNTED_STATUSES))).all():
            mails.setdefault(r.thread_id, []).append(r)
    own = dict(s.execute(select(EmailAccount.id, EmailAccount.email).where(
        col(EmailAccount.id).in_({a for a, _ in convs.values()}))).all())
    now = utcnow()
    values = []
    for cid, (account_id, subject) in convs.items():
        rows = mails.get(cid)
        if not rows:
            continue
        ordered = sorted(rows, key=lambda r: r.received_at or r.sent_at or r.created_at)
        times = [r.received_at or r.sent_at or r.created_at for r in ordered]
        waiting: datetime | None = None
        for r, at in zip(ordered, times, strict=True):
            if r.direction == "inbound":
                waiting = waiting or at
            else:
                waiting = None
        people = participants([a for r in ordered for a in (r.from_email, *r.to_emails, *r.cc_emails)], [own.get(account_id)])
        first_subject = ordered[0].subject or subject
        values.append({"id": cid, "message_count": len(rows), "first_message_at": times[0], "last_message_at": times[-1],
                       "last_direction": ordered[-1].direction, "awaiting_reply_since": waiting, "participants": people,
                       "subject": first_subject, "subject_norm": normalize_subject(first_subject),
                       "search_text": search_text(first_subject, people), "updated_at": now})
    if values:
        s.execute(update(Conversation), values)


def after_purge(s: Session, conversation_ids: Iterable[str | None]) -> None:
    """The conversations of purged mail (erase, retention), in the purge's transaction once the
    emails are gone: recomputed, or deleted with their keys (and the conversations once merged into
    them) when no message is left, so a list never shows a conversation about erased mail."""
    ids = sorted({c for c in conversation_ids if c})
    if not ids:
        return
    left = set(s.execute(sa_select(col(Email.thread_id)).where(col(Email.thread_id).in_(ids)).distinct()).scalars())
    empty = [c for c in ids if c not in left]
    for i in range(0, len(empty), 500):
        chunk = empty[i : i + 500]
        s.execute(delete(ConversationKey).where(col(ConversationKey.conversation_id).in_(chunk)))
        s.execute(delete(Conversation).where(or_(col(Conversation.id).in_(chunk), col(Conversation.merged_into).in_(chunk))))
    refresh(s, [c for c in ids if c in left])


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
        previous = conv.status
        conv.status, conv.status_changed_by, conv.status_changed_at = req.status, actor.user_id, now
        record_status_changed_event(s, conv, actor.user_id, previous=previous, reason="patch")
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
    """The ``conversation.assigned`` event, written to the webhook outbox inside the assignment's
    transaction; its ``data`` (API.md "Webhooks") also travels in the assignee's notification."""
    data = {"conversation_id": conv.id, "account_id": conv.account_id, "assignee_id": conv.assignee_id,
            "user_id": actor.user_id, "assigned_by": actor.user_id, "status": conv.status, "subject": conv.subject[:500],
            "email_id": _last_email(s, conv.id)}
    at = conv.assigned_at.isoformat() if conv.assigned_at else ""
    record_event(s, conv.org_id, "conversation.assigned", data, dedupe_key=f"conversation.assigned:{conv.id}:{at}"[:200])
    return data


def record_status_changed_event(s: Session, conv: Conversation, user_id: str | None, *, previous: str, reason: str,
                                email_id: str | None = None) -> None:
    """The ``conversation.status_changed`` event, in the change's transaction (a PATCH, or a new
    customer message reopening a resolved conversation: ``reason`` ``patch`` or ``new_message``)."""
    if not wants(s, conv.org_id, "conversation.status_changed"):
        return
    at = conv.status_changed_at.isoformat() if conv.status_changed_at else ""
    data = {"conversation_id": conv.id, "account_id": conv.account_id, "status": conv.status, "previous_status": previous,
            "reason": reason, "user_id": user_id, "assignee_id": conv.assignee_id, "subject": conv.subject[:500],
            "email_id": email_id or _last_email(s, conv.id)}
    record_event(s, conv.org_id, "conversation.status_changed", data,
                 dedupe_key=f"conversation.status_changed:{conv.id}:{conv.status}:{at}"[:200])


def _last_email(s: Session, conversation_id: str) -> str | None:
    return s.execute(select(Email.id).where(Email.thread_id == conversation_id).order_by(
        func.coalesce(Email.received_at, Email.sent_at, Email.created_at).desc()).limit(1)).scalar_one_or_none()


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
