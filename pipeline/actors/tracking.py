"""``tracking.record``: turn a batch of raw pixel/click hits into tracking events, counts and notifications.

Hits arrive unverified from the intake (the request path does no database work). Here each hit
is checked: an open's ``recipient_hash`` must be the HMAC of the email and one of its tracked
recipients, a click's ``link_hash`` must be a stored link of that email whose HMAC verifies;
anything else (forged, unknown, another key) is dropped. Verified hits are classified
(:mod:`pipeline.stages.tracking`: flagged, never dropped), stored once (the intake id is unique,
so a redelivered or replayed batch changes nothing), and human ones move the email's counters
(one statement per email, so concurrent batches never lose an increment) and notify the sender
once per recipient (opens) or per recipient and link (clicks). A replay of the same token from
the same IP within :data:`REPLAY_WINDOW` is stored but not counted. Beyond
``MAILPIPE_TRACKING_TOKEN_PER_MINUTE`` stored events of one token within :data:`TOKEN_WINDOW`,
hits are dropped and counted (the web processes' pre-filter is per process; this cap is not).
With the organization's ``honor_dnt``, opens sent with ``DNT: 1`` or ``Sec-GPC: 1`` are not recorded (clicks still are);
with ``anonymize_ip``, addresses are stored truncated.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import case, func, or_, select, update
from sqlmodel import Session

from models import Contact, Delivery, Email, EmailAccount, Lead, Organization, TrackedLink, TrackingEvent, utcnow
from models.db import get_engine, is_postgres
from models.upsert import insert_ignore
from ops import metrics
from ops.keys import get_keyring
from ops.settings import get_settings
from pipeline.actors.notify_email import mark_pending
from pipeline.broker import actor
from pipeline import notifications
from pipeline.scheduler import register_sweep
from pipeline.stages.throttle import window_cap
from pipeline.stages.tracking import classify_click, classify_open, verify_link_hash, verify_recipient_hash

__all__ = ["REPLAY_WINDOW", "TOKEN_WINDOW", "anonymize", "publish_batch", "record_events"]

log = structlog.get_logger("mailpipe.tracking")

REPLAY_WINDOW = timedelta(seconds=10)
#: A click is judged once this long has passed after it: clicks on three or more distinct links of
#: one email (or on every link, when it has two) within this window of each other are a scanner
#: following every link (notes §4), flagged ``link_burst``; only then are clicks counted and notified.
BURST_WINDOW = timedelta(seconds=1)
SETTLE_LATE = timedelta(seconds=10)  # the sweep settles clicks whose settle message was lost
#: ``MAILPIPE_TRACKING_TOKEN_PER_MINUTE`` stored events per token within any window this long.
TOKEN_WINDOW = timedelta(minutes=1)


def publish_batch(events: list[dict[str, Any]]) -> None:
    """The intake's publish function: one broker message per batch (raises when the broker refuses)."""
    record_events.send(events)


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


def _when(value: float | str) -> datetime:
    """An event's time: epoch seconds (what the intake sends) or ISO-8601 (older spools)."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value)


class _Batch:
    """Everything the batch's hits are checked against, loaded with one query per table."""

    def __init__(self, s: Session, events: list[dict[str, Any]]) -> None:
        ids = sorted({str(e.get("email_id", ""))[:24] for e in events})
        self.emails = {r.id: r for r in s.execute(select(
            Email.id, Email.org_id, Email.account_id, Email.sent_at, Email.subject, Email.direction).where(
            Email.id.in_(ids), Email.direction == "outbound")).all()}  # type: ignore[attr-defined]
        self.recipients: dict[str, list[str]] = defaultdict(list)
        for email_id, address in s.execute(select(Delivery.email_id, Delivery.tracked_for).where(
                Delivery.email_id.in_(list(self.emails)), Delivery.tracked_for.is_not(None))).all():  # type: ignore[attr-defined,union-attr]
            self.recipients[email_id].append(address)
        self.links = {(r.email_id, r.link_hash): r for r in s.execute(select(
            TrackedLink.email_id, TrackedLink.link_hash, TrackedLink.url, TrackedLink.text).where(
            TrackedLink.email_id.in_(list(self.emails)))).all()}  # type: ignore[attr-defined]
        orgs = {e.org_id for e in self.emails.values()}
        self.orgs = {r.id: r for r in s.execute(select(Organization.id, Organization.honor_dnt, Organization.anonymize_ip)
                                                .where(Organization.id.in_(orgs))).all()}  # type: ignore[attr-defined]
        self.owners = dict(s.execute(select(EmailAccount.id, EmailAccount.user_id).where(
            EmailAccount.id.in_({e.account_id for e in self.emails.values()}))).all())  # type: ignore[attr-defined]


def _verify(batch: _Batch, ev: dict[str, Any]) -> tuple[str | None, str | None, str | None] | None:
    """(recipient, url, link text) for a genuine hit, None for a forged or unknown one."""
    keyring = get_keyring()
    email_id = ev.get("email_id")
    if email_id not in batch.emails:
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


@actor(actor_name="tracking.record", queue_name="tracking", max_retries=5)
def record_events(events: list[dict[str, Any]]) -> int:
    """Verify, classify and store a batch of hits; returns how many events were new."""
    settings = get_settings()
    with Session(get_engine(), expire_on_commit=False) as s:
        batch = _Batch(s, events)
        rows: list[dict[str, Any]] = []
        for ev in events:
            found = _verify(batch, ev)
            if found is None:
                metrics.TRACK_RECORDED.labels(str(ev.get("kind", "?"))[:8], "forged").inc()
                continue
            recipient, url, text = found
            email = batch.emails[ev["email_id"]]
            org = batch.orgs.get(email.org_id)
            if ev["kind"] == "open" and org is not None and org.honor_dnt and ev.get("dnt"):
                metrics.TRACK_RECORDED.labels("open", "dnt").inc()
                continue
            at = _when(ev["at"])
            after = (at - email.sent_at).total_seconds() if email.sent_at else None
            if ev["kind"] == "open":
                verdict = classify_open(ev.get("ua"), ev.get("ip"), seconds_after_send=after,
                                        min_delay_s=settings.tracking_open_delay_seconds)
            else:
                verdict = classify_click(ev.get("ua"), ev.get("ip"), after)
                if ev.get("method") == "HEAD":
                    verdict = type(verdict)(True, "head_request")
            ip = ev.get("ip")
            rows.append({
                "intake_id": str(ev["id"])[:64], "email_id": email.id, "kind": ev["kind"],
                "recipient_hash": str(ev["token"])[:64] if ev["kind"] == "open" else None,
                "link_hash": str(ev["token"])[:64] if ev["kind"] == "click" else None, "url": url,
                "at": at, "ip": anonymize(ip) if org is not None and org.anonymize_ip else ip,
                "user_agent": (ev.get("ua") or "")[:1000] or None, "machine": verdict.machine, "reason": verdict.reason,
                "recipient_email": recipient, "method": str(ev.get("method", "GET"))[:8],
                "settled": ev["kind"] != "click" or verdict.machine,  # human-looking clicks wait for the burst window
                "_raw_ip": ip, "_text": text, "_proxied": verdict.proxied,
            })
        throttled: list[str] = []
        if rows:
            _lock_emails(s, sorted({r["email_id"] for r in rows}))
            known = _existing(s, [r["intake_id"] for r in rows])  # a redelivered or replayed batch
            rows, throttled = _cap_per_token(s, [r for r in rows if r["intake_id"] not in known],
                                             settings.tracking_token_per_minute)
        if not rows:
            s.commit()
            _count_throttled(throttled)
            return 0
        _collapse_replays(s, rows)
        fresh = rows  # new, within the rate
        insert_ignore(s, TrackingEvent, [{k: v for k, v in r.items() if not k.startswith("_")} for r in fresh],
                      ["intake_id"])
        settled = [r for r in fresh if r["settled"]]
        _count(s, settled)
        pushed = _notify(s, batch, settled, proxied=settings.tracking_notify_proxy_opens)
        by_email = mark_pending(s, pushed)
        s.commit()
    _count_throttled(throttled)
    _email(by_email)
    waiting = sorted({r["email_id"] for r in fresh if not r["settled"]})
    if waiting:
        settle_clicks.send_with_options(args=(waiting,), delay=int(BURST_WINDOW.total_seconds() * 1000) + 100)
    for r in fresh:
        metrics.TRACK_RECORDED.labels(r["kind"], "machine" if r["machine"] else "human").inc()
    notifications.publish(pushed)  # after the commit: the browser may fetch the notification at once
    return len(fresh)


@actor(actor_name="tracking.settle_clicks", queue_name="tracking", max_retries=5)
def settle_clicks(email_ids: list[str]) -> int:
    """Judge the emails' waiting clicks whose burst window has passed: flag bursts, count and notify the rest."""
    now = utcnow()
    with Session(get_engine(), expire_on_commit=False) as s:
        _lock_emails(s, email_ids)
        waiting = list(s.execute(select(TrackingEvent).where(
            TrackingEvent.email_id.in_(email_ids), TrackingEvent.kind == "click",  # type: ignore[attr-defined]
            TrackingEvent.settled.is_(False))).scalars())  # type: ignore[attr-defined]
        due = [e for e in waiting if e.at <= now - BURST_WINDOW]
        later = sorted({e.email_id for e in waiting if e.at > now - BURST_WINDOW})
        if due:
            lo, hi = min(e.at for e in due) - BURST_WINDOW, max(e.at for e in due) + BURST_WINDOW
            nearby = list(s.execute(select(TrackingEvent.email_id, TrackingEvent.link_hash, TrackingEvent.at).where(
                TrackingEvent.email_id.in_({e.email_id for e in due}), TrackingEvent.kind == "click",  # type: ignore[attr-defined]
                TrackingEvent.at >= lo, TrackingEvent.at <= hi)).all())  # type: ignore[operator]
            links = dict(s.execute(select(TrackedLink.email_id, func.count()).where(
                TrackedLink.email_id.in_({e.email_id for e in due})).group_by(TrackedLink.email_id)).all())  # type: ignore[attr-defined]
            for e in due:
                distinct = {n.link_hash for n in nearby if n.email_id == e.email_id and abs((n.at - e.at).total_seconds())
                            <= BURST_WINDOW.total_seconds()}
                total = int(links.get(e.email_id, 0))
                if len(distinct) >= 3 or (len(distinct) >= 2 and len(distinct) >= total):
                    e.machine, e.reason = True, "link_burst"
                e.settled = True
                s.add(e)
            s.flush()
            batch = _Batch(s, [{"email_id": eid} for eid in {e.email_id for e in due}])
            rows = [{"email_id": e.email_id, "kind": "click", "machine": e.machine, "counted": e.counted, "at": e.at,
                     "recipient_email": e.recipient_email, "url": e.url, "link_hash": e.link_hash,
                     "_text": (batch.links.get((e.email_id, e.link_hash or "")) or _NoLink).text} for e in due]
            _count(s, rows)
            pushed = _notify(s, batch, rows)
        else:
            pushed = []
        by_email = mark_pending(s, pushed)
        s.commit()
    _email(by_email)
    notifications.publish(pushed)
    for e in due:
        metrics.TRACK_RECORDED.labels("click", "machine" if e.machine else "human").inc()
    if later:
        settle_clicks.send_with_options(args=(later,), delay=int(BURST_WINDOW.total_seconds() * 1000) + 100)
    return len(due)


class _NoLink:
    text = ""


@register_sweep("tracking_settle")
def sweep_unsettled_clicks(session: Session, now: datetime) -> int:
    """Settle clicks whose settle message was lost (a restarted in-memory broker, a dead worker)."""
    ids = sorted(set(session.execute(select(TrackingEvent.email_id).where(
        TrackingEvent.settled.is_(False), TrackingEvent.at < now - SETTLE_LATE).limit(1000)).scalars()))  # type: ignore[attr-defined,operator]
    if ids:
        settle_clicks.send(ids)
    return len(ids)


def _lock_emails(s: Session, email_ids: list[str]) -> None:
    """Serialize batches that touch the same emails, so replay collapsing and counting see each other.

    PostgreSQL: row locks taken in id order (no deadlock between batches); SQLite: a no-op write
    takes the database's write lock before anything is read.
    """
    if is_postgres(s.get_bind()):  # type: ignore[arg-type]
        s.execute(select(Email.id).where(Email.id.in_(email_ids)).order_by(Email.id).with_for_update())  # type: ignore[attr-defined]
    else:
        s.execute(update(Email).where(Email.id.in_(email_ids)).values(open_count=Email.open_count))  # type: ignore[attr-defined]


def _email(notification_ids: list[str]) -> None:
    from pipeline.actors.notify_email import email_notification

    for nid in notification_ids:
        email_notification.send(nid)


def _existing(s: Session, intake_ids: list[str]) -> set[str]:
    return set(s.execute(select(TrackingEvent.intake_id).where(TrackingEvent.intake_id.in_(intake_ids))).scalars())  # type: ignore[attr-defined]


def _cap_per_token(s: Session, rows: list[dict[str, Any]], per_minute: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The authoritative throttle: at most ``per_minute`` stored events per token (email and
    recipient or link hash) within any minute, whatever the web processes let through. Returns the
    rows to store and the kinds of those dropped (counted after the commit). Runs under
    :func:`_lock_emails`, so concurrent batches for one email see each other's rows."""
    if per_minute <= 0 or not rows:
        return rows, []
    rows.sort(key=lambda r: r["at"])
    lo, hi = rows[0]["at"] - TOKEN_WINDOW, rows[-1]["at"] + TOKEN_WINDOW
    opens = sorted({r["recipient_hash"] for r in rows if r["recipient_hash"]})
    clicks = sorted({r["link_hash"] for r in rows if r["link_hash"]})
    stored: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in s.execute(select(TrackingEvent.email_id, TrackingEvent.kind, TrackingEvent.recipient_hash, TrackingEvent.link_hash,
                              TrackingEvent.at).where(
            TrackingEvent.email_id.in_(sorted({r["email_id"] for r in rows})),  # type: ignore[attr-defined]
            TrackingEvent.at >= lo, TrackingEvent.at <= hi,  # type: ignore[operator]
            or_(TrackingEvent.recipient_hash.in_(opens), TrackingEvent.link_hash.in_(clicks)))).all():  # type: ignore[union-attr]
        stored[(e.email_id, e.kind, e.recipient_hash or e.link_hash or "")].append(e.at.timestamp())
    keep = window_cap((((r["email_id"], r["kind"], r["recipient_hash"] or r["link_hash"] or ""), r["at"].timestamp()) for r in rows),
                      stored, limit=per_minute, window=TOKEN_WINDOW.total_seconds())
    return [r for r, ok in zip(rows, keep) if ok], [r["kind"] for r, ok in zip(rows, keep) if not ok]


def _count_throttled(kinds: list[str]) -> None:
    """``mailpipe_tracking_throttled_total{by="record"}`` for the hits the cap dropped."""
    for kind in kinds:
        metrics.TRACK_THROTTLED.labels(kind, "record").inc()


def _collapse_replays(s: Session, rows: list[dict[str, Any]]) -> None:
    """The same token from the same IP within the replay window counts once (stored, ``counted`` false).

    Symmetric, so batches recorded out of order (two workers) still count one event per burst:
    an event counts only if no other event with its token and IP lies within the window.
    """
    rows.sort(key=lambda r: r["at"])
    lo, hi = rows[0]["at"] - REPLAY_WINDOW, rows[-1]["at"] + REPLAY_WINDOW
    emails = sorted({r["email_id"] for r in rows})
    seen: dict[tuple[str, str, str | None], list[datetime]] = defaultdict(list)
    for e in s.execute(select(TrackingEvent.email_id, TrackingEvent.recipient_hash, TrackingEvent.link_hash,
                              TrackingEvent.ip, TrackingEvent.at).where(
            TrackingEvent.email_id.in_(emails), TrackingEvent.at >= lo, TrackingEvent.at <= hi)).all():  # type: ignore[attr-defined,operator]
        seen[(e.email_id, e.recipient_hash or e.link_hash or "", e.ip)].append(e.at)
    for r in rows:
        key = (r["email_id"], r["recipient_hash"] or r["link_hash"] or "", r["ip"])
        r["counted"] = not any(abs((r["at"] - t).total_seconds()) <= REPLAY_WINDOW.total_seconds() for t in seen[key])
        seen[key].append(r["at"])


def _count(s: Session, rows: list[dict[str, Any]]) -> None:
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
        values: dict[str, Any] = {"open_count": Email.open_count + agg["opens"], "click_count": Email.click_count + agg["clicks"]}
        if agg["first"] is not None:
            values["last_open_at"] = case((Email.last_open_at.is_(None), agg["last"]),  # type: ignore[union-attr]
                                          (Email.last_open_at < agg["last"], agg["last"]), else_=Email.last_open_at)  # type: ignore[operator]
            values["first_open_at"] = case((Email.first_open_at.is_(None), agg["first"]),  # type: ignore[union-attr]
                                           (Email.first_open_at > agg["first"], agg["first"]), else_=Email.first_open_at)  # type: ignore[operator]
        s.execute(update(Email).where(Email.id == email_id).values(**values))


def _names(s: Session, org_id: str, addresses: set[str]) -> dict[str, str]:
    """Display names for addresses from the CRM (contacts, then leads)."""
    names: dict[str, str] = {}
    wanted = sorted(a.lower() for a in addresses if a)
    if not wanted:
        return names
    for c in s.execute(select(Contact.email_norm, Contact.first_name, Contact.last_name).where(
            Contact.org_id == org_id, Contact.email_norm.in_(wanted))).all():  # type: ignore[union-attr]
        full = " ".join(x for x in (c.first_name, c.last_name) if x)
        if full:
            names.setdefault(c.email_norm, full)
    for ld in s.execute(select(Lead.email_norm, Lead.firstName, Lead.lastName).where(
            Lead.org_id == org_id, Lead.email_norm.in_(wanted))).all():  # type: ignore[union-attr]
        full = " ".join(x for x in (ld.firstName, ld.lastName) if x)
        if full:
            names.setdefault(ld.email_norm, full)
    return names


def _notify(s: Session, batch: _Batch, rows: list[dict[str, Any]], *, proxied: bool = False) -> list[dict[str, Any]]:
    """In-app notifications for human opens (once per recipient) and clicks (once per recipient and link).

    Proxied opens (Gmail's image proxy) notify only when ``proxied`` (MAILPIPE_TRACKING_NOTIFY_PROXY_OPENS).
    """
    human = [r for r in rows if r["counted"] and (not r["machine"] or (proxied and r.get("_proxied")))]
    by_org: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in human:
        by_org[batch.emails[r["email_id"]].org_id].append(r)
    out = []
    for org_id, items in by_org.items():
        names = _names(s, org_id, {r["recipient_email"] for r in items if r["recipient_email"]})
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
