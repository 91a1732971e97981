"""Tracking hits in the database: verifying a batch against what was sent, the per-token cap,
replay collapsing, the emails' counters and the sender's notifications (for :mod:`pipeline.flows.tracking_record`)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import case, or_, select, update
from sqlmodel import Session, col

from models import Contact, Delivery, Email, EmailAccount, Lead, Organization, TrackedLink, TrackingEvent
from models.db import is_postgres
from ops import metrics
from ops.keys import get_keyring
from pipeline.flows import notifications
from pipeline.flows.events_outbox import email_payloads, record_events, wants
from pipeline.stages.throttle import window_cap
from pipeline.stages.tracking_ids import verify_link_hash, verify_recipient_hash

__all__ = ["REPLAY_WINDOW", "TOKEN_WINDOW", "Batch", "anonymize", "cap_per_token", "collapse_replays", "count", "count_throttled",
           "existing", "crm_names", "lock_emails", "notify", "verify", "when"]

REPLAY_WINDOW = timedelta(seconds=10)
#: ``MAILPIPE_TRACKING_TOKEN_PER_MINUTE`` stored events per token within any window this long.
TOKEN_WINDOW = timedelta(minutes=1)


def anonymize(ip: str | None) -> str | None:
    """An address with its host part dropped: IPv4 /24, IPv6 /48."""
    if not ip:
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def when(value: float | str) -> datetime:
    """An event's time: epoch seconds (what the intake sends) or ISO-8601 (older spools)."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value)


class Batch:
    """Everything the batch's hits are checked against, loaded with one query per table."""

    def __init__(self, s: Session, events: list[dict[str, Any]]) -> None:
        ids = sorted({str(e.get("email_id", ""))[:24] for e in events})
        self.emails = {r.id: r for r in s.execute(select(
            col(Email.id), col(Email.org_id), col(Email.account_id), col(Email.sent_at), col(Email.subject), col(Email.direction)).where(
            col(Email.id).in_(ids), col(Email.direction) == "outbound")).all()}
        self.recipients: dict[str, list[str]] = defaultdict(list)
        for email_id, address in s.execute(select(col(Delivery.email_id), col(Delivery.tracked_for)).where(
                col(Delivery.email_id).in_(list(self.emails)), col(Delivery.tracked_for).is_not(None))).all():
            self.recipients[email_id].append(address)
        self.links = {(r.email_id, r.link_hash): r for r in s.execute(select(
            col(TrackedLink.email_id), col(TrackedLink.link_hash), col(TrackedLink.url), col(TrackedLink.text)).where(
            col(TrackedLink.email_id).in_(list(self.emails)))).all()}
        orgs = {e.org_id for e in self.emails.values()}
        self.orgs = {r.id: r for r in s.execute(select(col(Organization.id), col(Organization.honor_dnt), col(Organization.anonymize_ip))
                                                .where(col(Organization.id).in_(orgs))).all()}
        self.owners = dict(s.execute(select(col(EmailAccount.id), col(EmailAccount.user_id)).where(
            col(EmailAccount.id).in_({e.account_id for e in self.emails.values()}))).all())


def verify(batch: Batch, ev: dict[str, Any]) -> tuple[str | None, str | None, str | None] | None:
    """(recipient, url, link text) for a genuine hit, None for a forged or unknown one."""
    keyring = get_keyring()
    email_id = ev.get("email_id")
    if not isinstance(email_id, str) or email_id not in batch.emails:
        return None
    if ev.get("kind") == "open":
        token = str(ev.get("token", ""))
        for address in batch.recipients.get(email_id, []):
            if verify_recipient_hash(partial(keyring.verify, "open"), email_id, address, token):
                return address, None, None
        return None
    if ev.get("kind") == "click":
        link = batch.links.get((email_id, str(ev.get("token", ""))))
        if link is None or not verify_link_hash(partial(keyring.verify, "click"), email_id, link.url, link.link_hash):
            return None
        people = batch.recipients.get(email_id, [])
        return (people[0] if len(people) == 1 else None), link.url, link.text
    return None


def lock_emails(s: Session, email_ids: list[str]) -> None:
    """Serialize batches that touch the same emails, so replay collapsing and counting see each other.

    PostgreSQL: row locks taken in id order (no deadlock between batches); SQLite: a no-op write
    takes the database's write lock before anything is read.
    """
    if is_postgres(s.get_bind()):
        s.execute(select(col(Email.id)).where(col(Email.id).in_(email_ids)).order_by(col(Email.id)).with_for_update())
    else:
        s.execute(update(Email).where(col(Email.id).in_(email_ids)).values(open_count=col(Email.open_count)))


def existing(s: Session, intake_ids: list[str]) -> set[str]:
    return set(s.execute(select(col(TrackingEvent.intake_id)).where(col(TrackingEvent.intake_id).in_(intake_ids))).scalars())


def cap_per_token(s: Session, rows: list[dict[str, Any]], per_minute: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The authoritative throttle: at most ``per_minute`` stored events per token (email and
    recipient or link hash) within any minute, whatever the web processes let through. Returns the
    rows to store and the kinds of those dropped (counted after the commit). Runs under
    :func:`lock_emails`, so concurrent batches for one email see each other's rows."""
    if per_minute <= 0 or not rows:
        return rows, []
    rows.sort(key=lambda r: r["at"])
    lo, hi = rows[0]["at"] - TOKEN_WINDOW, rows[-1]["at"] + TOKEN_WINDOW
    opens = sorted({r["recipient_hash"] for r in rows if r["recipient_hash"]})
    clicks = sorted({r["link_hash"] for r in rows if r["link_hash"]})
    stored: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in s.execute(select(col(TrackingEvent.email_id), col(TrackingEvent.kind), col(TrackingEvent.recipient_hash),
                              col(TrackingEvent.link_hash), col(TrackingEvent.at)).where(
            col(TrackingEvent.email_id).in_(sorted({r["email_id"] for r in rows})),
            col(TrackingEvent.at) >= lo, col(TrackingEvent.at) <= hi,
            or_(col(TrackingEvent.recipient_hash).in_(opens), col(TrackingEvent.link_hash).in_(clicks)))).all():
        stored[(e.email_id, e.kind, e.recipient_hash or e.link_hash or "")].append(e.at.timestamp())
    keep = window_cap((((r["email_id"], r["kind"], r["recipient_hash"] or r["link_hash"] or ""), r["at"].timestamp()) for r in rows),
                      stored, limit=per_minute, window=TOKEN_WINDOW.total_seconds())
    return [r for r, ok in zip(rows, keep, strict=True) if ok], [r["kind"] for r, ok in zip(rows, keep, strict=True) if not ok]


def count_throttled(kinds: list[str]) -> None:
    """``mailpipe_tracking_throttled_total{by="record"}`` for the hits the cap dropped."""
    for kind in kinds:
        metrics.TRACK_THROTTLED.labels(kind, "record").inc()


def collapse_replays(s: Session, rows: list[dict[str, Any]]) -> None:
    """The same token from the same IP within the replay window counts once (stored, ``counted`` false).

    Symmetric, so batches recorded out of order (two workers) still count one event per burst:
    an event counts only if no other event with its token and IP lies within the window.
    """
    rows.sort(key=lambda r: r["at"])
    lo, hi = rows[0]["at"] - REPLAY_WINDOW, rows[-1]["at"] + REPLAY_WINDOW
    emails = sorted({r["email_id"] for r in rows})
    seen: dict[tuple[str, str, str | None], list[datetime]] = defaultdict(list)
    for e in s.execute(select(col(TrackingEvent.email_id), col(TrackingEvent.recipient_hash), col(TrackingEvent.link_hash),
                              col(TrackingEvent.ip), col(TrackingEvent.at)).where(
            col(TrackingEvent.email_id).in_(emails), col(TrackingEvent.at) >= lo, col(TrackingEvent.at) <= hi)).all():
        seen[(e.email_id, e.recipient_hash or e.link_hash or "", e.ip)].append(e.at)
    for r in rows:
        key = (r["email_id"], r["recipient_hash"] or r["link_hash"] or "", r["ip"])
        r["counted"] = not any(abs((r["at"] - t).total_seconds()) <= REPLAY_WINDOW.total_seconds() for t in seen[key])
        seen[key].append(r["at"])


def count(s: Session, rows: list[dict[str, Any]]) -> None:
    """One atomic UPDATE per email: counted human (and proxied) opens and clicks; first and last open."""
    per: dict[str, dict[str, Any]] = {}
    for r in rows:
        if (r["machine"] and not r.get("_proxied")) or not r["counted"]:
            continue
        agg = per.setdefault(r["email_id"], {"opens": 0, "clicks": 0, "first": None, "last": None})
        if r["kind"] == "open":
            agg["opens"] += 1
            agg["first"] = min(filter(None, (agg["first"], r["at"])))
            agg["last"] = max(filter(None, (agg["last"], r["at"])))
        else:
            agg["clicks"] += 1
    for email_id, agg in per.items():
        values: dict[str, Any] = {"open_count": col(Email.open_count) + agg["opens"], "click_count": col(Email.click_count) + agg["clicks"]}
        if agg["first"] is not None:
            values["last_open_at"] = case((col(Email.last_open_at).is_(None), agg["last"]),
                                          (col(Email.last_open_at) < agg["last"], agg["last"]), else_=col(Email.last_open_at))
            values["first_open_at"] = case((col(Email.first_open_at).is_(None), agg["first"]),
                                           (col(Email.first_open_at) > agg["first"], agg["first"]), else_=col(Email.first_open_at))
        s.execute(update(Email).where(col(Email.id) == email_id).values(**values))


def crm_names(s: Session, org_id: str, addresses: set[str]) -> dict[str, str]:
    """Display names for addresses from the CRM (contacts, then leads)."""
    names: dict[str, str] = {}
    wanted = sorted(a.lower() for a in addresses if a)
    if not wanted:
        return names
    for c in s.execute(select(col(Contact.email_norm), col(Contact.first_name), col(Contact.last_name)).where(
            col(Contact.org_id) == org_id, col(Contact.email_norm).in_(wanted))).all():
        full = " ".join(x for x in (c.first_name, c.last_name) if x)
        if full:
            names.setdefault(c.email_norm, full)
    for ld in s.execute(select(col(Lead.email_norm), col(Lead.firstName), col(Lead.lastName)).where(
            col(Lead.org_id) == org_id, col(Lead.email_norm).in_(wanted))).all():
        full = " ".join(x for x in (ld.firstName, ld.lastName) if x)
        if full:
            names.setdefault(ld.email_norm, full)
    return names


def notify(s: Session, batch: Batch, rows: list[dict[str, Any]], *, proxied: bool = False) -> list[dict[str, Any]]:
    """In-app notifications for human opens (once per recipient) and clicks (once per recipient and link).

    Proxied opens (Gmail's image proxy) notify only when ``proxied`` (MAILPIPE_TRACKING_NOTIFY_PROXY_OPENS).
    """
    human = [r for r in rows if r["counted"] and (not r["machine"] or (proxied and r.get("_proxied")))]
    by_org: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in human:
        by_org[batch.emails[r["email_id"]].org_id].append(r)
    out = []
    _record_webhook_events(s, by_org)
    for org_id, items in by_org.items():
        names = crm_names(s, org_id, {r["recipient_email"] for r in items if r["recipient_email"]})
        for r in items:
            email = batch.emails[r["email_id"]]
            who_addr = r["recipient_email"]
            who = names.get((who_addr or "").lower()) or who_addr or "Someone"
            if r["kind"] == "open":
                title = f"{who} opened your email '{email.subject or '(no subject)'}'"
                key = f"email.opened:{email.id}:{(who_addr or '').lower()}"
            else:
                label = (r["_text"] or r["url"] or "a link")[:200]
                title = f"{who} clicked '{label}'"
                key = f"email.clicked:{email.id}:{(who_addr or '').lower()}:{r['link_hash']}"
            out.append({"org_id": org_id, "user_id": batch.owners.get(email.account_id, ""), "kind": "email.opened" if r["kind"] == "open"
                        else "email.clicked", "title": title[:500], "body": (email.subject or "")[:2000],
                        "email_id": email.id, "dedupe_key": key[:200],
                        "data": {"recipient_email": who_addr, "url": r["url"], "at": r["at"].isoformat()}})
    if not out:
        return []
    return notifications.insert_new(s, out)


def _record_webhook_events(s: Session, by_org: dict[str, list[dict[str, Any]]]) -> None:
    """``email.opened``/``email.clicked`` outbox events for every counted human hit (in the caller's
    transaction; unique per tracking event, so a replayed batch records nothing twice)."""
    by_org = {org_id: items for org_id, items in by_org.items() if wants(s, org_id, "email.opened", "email.clicked")}
    if not by_org:
        return
    payloads = email_payloads(s, {r["email_id"] for items in by_org.values() for r in items})
    for org_id, items in by_org.items():
        events: list[tuple[str, dict[str, Any], str | None]] = []
        for r in items:
            hit_id = r.get("intake_id") or r.get("_event_id")
            kind = "email.opened" if r["kind"] == "open" else "email.clicked"
            data = {**payloads.get(r["email_id"], {"email_id": r["email_id"]}), "recipient_email": r.get("recipient_email"),
                    "at": r["at"].isoformat()}
            if kind == "email.clicked":
                data["url"] = r.get("url")
            events.append((kind, data, f"{kind}:{hit_id}" if hit_id else None))
        record_events(s, org_id, events)
