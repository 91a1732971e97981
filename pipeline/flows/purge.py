"""Deleting emails for good: the one function behind a person's erase and the retention policy.

:func:`purge_emails` takes a set of email ids of one organization and removes, in one short
transaction per call (callers pass small batches): the files in storage (raw copies, attachments,
outbound attachment copies), then every row about those emails (attachments, links, addresses,
locations, deliveries and outbox, tracked links and tracking events, sentiment, flag changes, Notion
save records, notifications) and the emails themselves. Before the rows go, each message's identity
in its mailbox (dedupe key, Message-ID, every server location) is remembered as a keyed hash in
``erased_messages``, which the sync consults (:func:`erased_filter`) so the next sync does not
import the message again.

Features that keep their own rows about emails (a search index, conversations, a webhook outbox)
register a hook with :func:`on_purge`; every hook runs inside the purge's transaction with the
session and the email ids, before the email rows are deleted.

Files go first, rows after: a crash in between leaves rows pointing at missing files, and the job
that called the purge runs again and finishes it; the other order could leave files nobody knows of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from models import (
    Delivery,
    Document,
    Email,
    EmailAddress,
    EmailLink,
    EmailLocation,
    EmailSentiment,
    ErasedMessage,
    FlagChange,
    Lead,
    Notification,
    NotionSave,
    Outbox,
    Suppression,
    TrackedLink,
    TrackingEvent,
)
from models.upsert import insert_ignore
from models.webhooks import WebhookDelivery, WebhookEvent
from ops import metrics
from ops.keys import get_keyring
from pipeline.clients.storage import StorageNotFound, get_storage
from pipeline.flows.conversations import after_purge

__all__ = ["BUSY_STATES", "PURGE_HOOKS", "SENDING", "PurgeCounts", "erased_filter", "identity_parts", "in_flight", "on_purge",
           "purge_emails"]

log = structlog.get_logger("mailpipe.purge")

BUSY_STATES = ("fetched", "parsed", "stored", "linked", "leads")  # still in the ingest chain
SENDING = ("queued", "sending")  # an SMTP run may hold it


def in_flight(e: Email) -> bool:
    """An email a pipeline stage or a send run is working on: purge it once that is over."""
    return e.pipeline_state in BUSY_STATES or e.status in SENDING


PurgeHook = Callable[[Session, list[str]], None]
PURGE_HOOKS: list[PurgeHook] = []
_PURPOSE = "erased-message"


def on_purge(hook: PurgeHook) -> PurgeHook:
    """Register ``hook(session, email_ids)``: called in the purge's transaction before the email rows go."""
    if hook not in PURGE_HOOKS:
        PURGE_HOOKS.append(hook)
    return hook


@dataclass
class PurgeCounts:
    emails: int = 0
    attachments: int = 0
    files: int = 0
    tracking_events: int = 0
    notifications: int = 0
    links: int = 0
    notion_saves: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, other: PurgeCounts) -> None:
        for name in ("emails", "attachments", "files", "tracking_events", "notifications", "links", "notion_saves"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {"emails": self.emails, "attachments": self.attachments, "files": self.files,
                "tracking_events": self.tracking_events, "notifications": self.notifications, "links": self.links,
                "notion_saves": self.notion_saves}


def identity_parts(dedupe_key: str | None, message_id: str | None,
                   locations: Iterable[tuple[str, int, int]] = ()) -> list[tuple[str, ...]]:
    """What identifies a message in its mailbox: its dedupe key, its Message-ID, its server locations."""
    parts: list[tuple[str, ...]] = []
    if dedupe_key:
        parts.append(("key", dedupe_key))
    if message_id:
        parts.append(("mid", message_id))
    parts += [("loc", folder, str(uidvalidity), str(uid)) for folder, uidvalidity, uid in locations]
    return parts


def erased_filter(s: Session, account_id: str, candidates: Sequence[list[tuple[str, ...]]]) -> list[bool]:
    """For each candidate message (its :func:`identity_parts`), whether it was erased from this mailbox
    (under any configured key, so a key rotation does not bring erased mail back)."""
    keyring = get_keyring()
    hashes = [[h for p in parts for h in keyring.sign_all(_PURPOSE, account_id, *p)] for parts in candidates]
    wanted = sorted({h for hs in hashes for h in hs})
    if not wanted:
        return [False] * len(candidates)
    known: set[str] = set()
    for i in range(0, len(wanted), 500):
        known.update(s.execute(select(ErasedMessage.key_hash).where(
            ErasedMessage.account_id == account_id, col(ErasedMessage.key_hash).in_(wanted[i : i + 500]))).scalars())
    return [any(h in known for h in hs) for hs in hashes]


def _remember(s: Session, emails: list[Email], reason: str) -> None:
    keyring = get_keyring()
    locs: dict[str, list[tuple[str, int, int]]] = {}
    for email_id, folder, uidvalidity, uid in s.execute(select(
            EmailLocation.email_id, EmailLocation.folder, EmailLocation.uidvalidity, EmailLocation.uid).where(
            col(EmailLocation.email_id).in_([e.id for e in emails]))).all():
        locs.setdefault(email_id, []).append((folder, uidvalidity, uid))
    rows = []
    for e in emails:
        for parts in identity_parts(e.dedupe_key, e.message_id, locs.get(e.id, [])):
            rows.append({"org_id": e.org_id, "account_id": e.account_id, "key_hash": keyring.sign(_PURPOSE, e.account_id, *parts),
                         "reason": reason})
    insert_ignore(s, ErasedMessage, rows, ["account_id", "key_hash"])


def _files(s: Session, ids: list[str], emails: list[Email]) -> list[str]:
    keys = [e.raw_key for e in emails if e.raw_key]
    keys += list(s.execute(select(Document.storage_key).where(col(Document.email_id).in_(ids))).scalars())
    for base_key, atts in s.execute(select(Outbox.base_key, Outbox.attachments).where(col(Outbox.email_id).in_(ids))).all():
        if base_key:
            keys.append(base_key)
        keys += [a["key"] for a in atts or [] if str(a.get("key", "")).startswith("outbox/")]  # forwarded files belong to others
    return sorted(set(keys))


def purge_emails(s: Session, org_id: str, email_ids: Sequence[str], *, reason: str) -> PurgeCounts:
    """Delete these emails of ``org_id`` (ids of other organizations are ignored) with their files and
    every row about them, remembering them so no sync imports them again; commits. ``reason``:
    ``erase`` or ``retention``. Callers leave out emails :func:`in_flight` (and come back for them)."""
    counts = PurgeCounts()
    emails = list(s.execute(select(Email).where(col(Email.id).in_(list(email_ids)), Email.org_id == org_id)).scalars())
    if not emails:
        return counts
    ids = [e.id for e in emails]
    storage = get_storage()
    for key in _files(s, ids, emails):
        try:
            storage.delete(key)
            counts.files += 1
        except StorageNotFound:
            pass
    _remember(s, emails, reason)
    counts.attachments = len(list(s.execute(select(Document.id).where(col(Document.email_id).in_(ids))).scalars()))
    counts.tracking_events = len(list(s.execute(select(TrackingEvent.id).where(col(TrackingEvent.email_id).in_(ids))).scalars()))
    counts.links = len(list(s.execute(select(EmailLink.id).where(col(EmailLink.email_id).in_(ids))).scalars()))
    counts.notion_saves = len(list(s.execute(select(NotionSave.id).where(col(NotionSave.email_id).in_(ids))).scalars()))
    counts.notifications = len(list(s.execute(select(Notification.id).where(col(Notification.email_id).in_(ids))).scalars()))
    for hook in PURGE_HOOKS:
        hook(s, ids)
    for model in (Document, EmailLink, EmailAddress, EmailLocation, Delivery, Outbox, TrackedLink, TrackingEvent, EmailSentiment,
                  FlagChange, NotionSave, Notification):
        s.execute(delete(model).where(col(model.email_id).in_(ids)))
    # Rows that only point at an email keep their own meaning: a lead stays, a suppression stays (it is
    # what keeps the address from being mailed again), they just forget which email it was.
    s.execute(update(Lead).where(col(Lead.source_email_id).in_(ids)).values(source_email_id=None))
    s.execute(update(Suppression).where(col(Suppression.email_id).in_(ids)).values(email_id=None))
    # Webhook events about these emails (their payloads name the sender and subject) go too, with
    # their deliveries: an erased person is not announced afterwards either.
    events = select(WebhookEvent.id).where(WebhookEvent.org_id == org_id,
                                           WebhookEvent.data["email_id"].as_string().in_(ids))
    s.execute(delete(WebhookDelivery).where(col(WebhookDelivery.event_id).in_(events)))
    s.execute(delete(WebhookEvent).where(col(WebhookEvent.id).in_(events)))
    s.execute(delete(Email).where(col(Email.id).in_(ids)))
    after_purge(s, {e.thread_id for e in emails})
    s.commit()
    counts.emails = len(ids)
    metrics.EMAILS_PURGED.labels(reason).inc(len(ids))
    log.info("emails_purged", org_id=org_id, reason=reason, **counts.as_dict())
    return counts
