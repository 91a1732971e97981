"""Recording tracking hits (the ``tracking.record`` job) and settling them (``tracking.settle_clicks``):
a batch of raw pixel/click hits becomes tracking events, counts and notifications.

Hits arrive unverified from the intake (the request path does no database work). Here each hit
is checked: an open's ``recipient_hash`` must be the HMAC of the email and one of its tracked
recipients, a click's ``link_hash`` must be a stored link of that email whose HMAC verifies;
anything else (forged, unknown, another key) is dropped. Verified hits are classified
(:mod:`pipeline.stages.hit_classify`: flagged, never dropped), stored once (the intake id is unique,
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

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, or_
from sqlalchemy import select as sa_select  # more columns than sqlmodel's select types
from sqlmodel import Session, col, select

from models import Email, TrackedLink, TrackingEvent, utcnow
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from ops.settings import get_settings
from pipeline import jobs
from pipeline.flows import notifications
from pipeline.flows.notify_email import mark_pending
from pipeline.flows.tracking_hits import (
    Batch,
    anonymize,
    cap_per_token,
    collapse_replays,
    count,
    count_throttled,
    existing,
    lock_emails,
    notify,
    verify,
    when,
)
from pipeline.flows.tracking_signals import signals
from pipeline.scheduler import register_sweep
from pipeline.stages.hit_classify import classify_click, classify_open
from pipeline.stages.hit_sequence import COMPANION_S, RESCAN_S, Hit, judge

__all__ = ["BURST_WINDOW", "record", "settle", "sweep_unsettled_clicks"]

log = structlog.get_logger("mailpipe.tracking")

#: A human-looking open or click is judged once this long has passed after it, against the email's
#: other hits (:mod:`pipeline.stages.hit_sequence`: link bursts and two-link scans, a gateway's pixel
#: fetch beside its scan, cloud scanners, re-scans); only then is it counted and notified.
BURST_WINDOW = timedelta(seconds=1)
SETTLE_LATE = timedelta(seconds=10)  # the sweep settles hits whose settle message was lost
#: How far around the hits being settled their email's other hits are read.
_CONTEXT = timedelta(seconds=RESCAN_S + COMPANION_S)
SETTLE_DELAY_MS = int(BURST_WINDOW.total_seconds() * 1000) + 100


def record(events: list[dict[str, Any]]) -> int:
    """Verify, classify and store a batch of hits; returns how many events were new."""
    settings = get_settings()
    data = signals()
    with Session(get_engine(), expire_on_commit=False) as s:
        batch = Batch(s, events)
        rows: list[dict[str, Any]] = []
        for ev in events:
            found = verify(batch, ev)
            if found is None:
                metrics.TRACK_RECORDED.labels(str(ev.get("kind", "?"))[:8], "forged").inc()
                continue
            recipient, url, text = found
            email = batch.emails[ev["email_id"]]
            org = batch.orgs.get(email.org_id)
            if ev["kind"] == "open" and org is not None and org.honor_dnt and ev.get("dnt"):
                metrics.TRACK_RECORDED.labels("open", "dnt").inc()
                continue
            at = when(ev["at"])
            after = (at - email.sent_at).total_seconds() if email.sent_at else None
            if ev["kind"] == "open":
                verdict = classify_open(ev.get("ua"), ev.get("ip"), seconds_after_send=after,
                                        min_delay_s=settings.tracking_open_delay_seconds, signals=data)
            else:
                verdict = classify_click(ev.get("ua"), ev.get("ip"), after, signals=data)
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
                "settled": verdict.machine,  # human-looking hits wait for the settle pass (BURST_WINDOW)
                "_raw_ip": ip, "_text": text, "_proxied": verdict.proxied,
            })
        throttled: list[str] = []
        if rows:
            lock_emails(s, sorted({r["email_id"] for r in rows}))
            known = existing(s, [r["intake_id"] for r in rows])  # a redelivered or replayed batch
            rows, throttled = cap_per_token(s, [r for r in rows if r["intake_id"] not in known],
                                             settings.tracking_token_per_minute)
        if not rows:
            s.commit()
            count_throttled(throttled)
            return 0
        collapse_replays(s, rows)
        fresh = rows  # new, within the rate
        insert_ignore(s, TrackingEvent, [{k: v for k, v in r.items() if not k.startswith("_")} for r in fresh],
                      ["intake_id"])
        settled = [r for r in fresh if r["settled"]]
        count(s, settled)
        pushed = notify(s, batch, settled, proxied=settings.tracking_notify_proxy_opens)
        by_email = mark_pending(s, pushed)
        s.commit()
    count_throttled(throttled)
    _email_them(by_email)
    waiting = sorted({r["email_id"] for r in fresh if not r["settled"]})
    if waiting:
        jobs.TRACKING_SETTLE.send(waiting, delay_ms=SETTLE_DELAY_MS)
    for r in fresh:
        metrics.TRACK_RECORDED.labels(r["kind"], "machine" if r["machine"] else "human").inc()
    notifications.publish(pushed)  # after the commit: the browser may fetch the notification at once
    return len(fresh)


def settle(email_ids: list[str]) -> int:
    """Judge the emails' waiting hits whose window has passed against their other hits
    (:func:`pipeline.stages.hit_sequence.judge`): flag machine ones, count and notify the rest."""
    now = utcnow()
    ranges = signals().ranges
    with Session(get_engine(), expire_on_commit=False) as s:
        lock_emails(s, email_ids)
        waiting = list(s.execute(select(TrackingEvent).where(
            col(TrackingEvent.email_id).in_(email_ids), col(TrackingEvent.settled).is_(False))).scalars())
        due = [e for e in waiting if e.at <= now - BURST_WINDOW]
        later = sorted({e.email_id for e in waiting if e.at > now - BURST_WINDOW})
        if due:
            ids = sorted({e.email_id for e in due})
            hi = max(e.at for e in due) + _CONTEXT
            lo = min(e.at for e in due) - _CONTEXT
            sent: dict[str, datetime | None] = {r[0]: r[1] for r in s.execute(
                select(col(Email.id), col(Email.sent_at)).where(col(Email.id).in_(ids))).all()}
            context = list(s.execute(sa_select(col(TrackingEvent.id), col(TrackingEvent.email_id), col(TrackingEvent.kind),
                                            col(TrackingEvent.at), col(TrackingEvent.ip), col(TrackingEvent.link_hash),
                                            col(TrackingEvent.machine), col(TrackingEvent.reason)).where(
                col(TrackingEvent.email_id).in_(ids), col(TrackingEvent.at) <= hi,
                or_(col(TrackingEvent.kind) == "open", col(TrackingEvent.at) >= lo))).all())
            links: dict[str, int] = {r[0]: int(r[1]) for r in s.execute(select(col(TrackedLink.email_id), func.count()).where(
                col(TrackedLink.email_id).in_(ids)).group_by(col(TrackedLink.email_id))).all()}
            pending = {e.id for e in waiting}
            reasons: dict[str, str] = {}
            for email_id in ids:
                sent_at = sent.get(email_id)
                hits = [Hit(r.id, r.kind, r.at.timestamp(), r.ip, ranges.labels(r.ip), r.link_hash,
                            bool(r.machine) and r.id not in pending,
                            (r.at - sent_at).total_seconds() if sent_at else None, r.reason == "gmail_proxy")
                        for r in context if r.email_id == email_id]
                reasons.update(judge(hits, int(links.get(email_id, 0))))
            for e in due:
                if e.id in reasons:
                    e.machine, e.reason = True, reasons[e.id]
                e.settled = True
                s.add(e)
            s.flush()
            batch = Batch(s, [{"email_id": eid} for eid in ids])
            rows = [{"email_id": e.email_id, "kind": e.kind, "machine": e.machine, "counted": e.counted, "at": e.at, "_event_id": e.id,
                     "recipient_email": e.recipient_email, "url": e.url, "link_hash": e.link_hash,
                     "_text": (batch.links.get((e.email_id, e.link_hash or "")) or _NoLink).text} for e in due]
            count(s, rows)
            pushed = notify(s, batch, rows)
        else:
            pushed = []
        by_email = mark_pending(s, pushed)
        s.commit()
    _email_them(by_email)
    notifications.publish(pushed)
    for e in due:
        metrics.TRACK_RECORDED.labels(e.kind, "machine" if e.machine else "human").inc()
    if later:
        jobs.TRACKING_SETTLE.send(later, delay_ms=SETTLE_DELAY_MS)
    return len(due)


class _NoLink:
    text = ""


@register_sweep("tracking_settle")
def sweep_unsettled_clicks(session: Session, now: datetime) -> int:
    """Settle hits whose settle message was lost (a restarted in-memory broker, a dead worker)."""
    ids = sorted(set(session.execute(select(col(TrackingEvent.email_id)).where(
        col(TrackingEvent.settled).is_(False), col(TrackingEvent.at) < now - SETTLE_LATE).limit(1000)).scalars()))
    if ids:
        jobs.TRACKING_SETTLE.send(ids)
    return len(ids)


def _email_them(notification_ids: list[str]) -> None:
    """Hand the notifications waiting for their email to the ``notify.email`` job."""
    for nid in notification_ids:
        jobs.NOTIFY_EMAIL.send(nid)
