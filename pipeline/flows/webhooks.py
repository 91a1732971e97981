"""Webhook dispatch and delivery: outbox events → delivery rows → signed POSTs, retried until done.

* :func:`dispatch_pending` (``webhooks.dispatch``) takes undispatched events oldest first
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so dispatchers never share one), writes one delivery
  per subscribed enabled endpoint (unique per endpoint and event: a repeat inserts nothing), marks
  the events dispatched in the same transaction, then enqueues one delivery run per endpoint.
* :func:`deliver_endpoint` (``webhooks.deliver``) is one run over one endpoint's due deliveries in
  event order, under the endpoint's row lease (its concurrency limit is one run: a slow endpoint
  holds one worker thread and nothing else). Before each POST the attempt is recorded (attempts + 1,
  ``next_attempt_at`` moved to the retry time), so a run that dies mid-POST leaves the delivery due
  again later with the same ``webhook-id``. A failure pauses the endpoint until that retry, later
  events waiting behind it (order kept where possible); after the retry window
  (``MAILPIPE_WEBHOOK_RETRY_HOURS``, 24) a delivery is ``failed``; an endpoint failing for 3 days
  with no success is disabled and the organization's users are notified.
* :func:`sweep_webhooks` (scheduler) re-finds undispatched events and due deliveries whose endpoint
  nobody is working on, so a lost message or a killed worker only delays a webhook.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from models import User, WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow
from models.db import get_engine
from models.lease import Lease, LeaseLost
from models.upsert import insert_ignore
from ops import metrics
from ops.keys import unseal
from ops.settings import get_settings
from pipeline import jobs
from pipeline.clients import netguard
from pipeline.clients.webhook_http import Outcome, Poster
from pipeline.flows import notifications
from pipeline.scheduler import register_sweep
from pipeline.stages.webhooks import backoff_seconds, body_bytes, signed_headers, subscribes

__all__ = ["DISABLE_AFTER", "ENDPOINT_LEASE", "RUN_BUDGET_SECONDS", "deliver_endpoint", "dispatch_pending", "endpoint_secrets",
           "sweep_webhooks"]

log = structlog.get_logger("mailpipe.webhooks")

ENDPOINT_LEASE = Lease(WebhookEndpoint, "id", "lease_owner", "lease_until", timedelta(seconds=45))
DISABLE_AFTER = timedelta(days=3)
RUN_BUDGET_SECONDS = 20.0   # one run hands the endpoint back after this long (re-enqueued if work is left)
DISPATCH_BATCH = 500
RESOLVER: netguard.Resolver | None = None  # tests swap in a getaddrinfo stand-in (DNS that changes its answer)


def _now() -> datetime:
    return utcnow()


def endpoint_secrets(ep: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one for 24 hours after a rotation."""
    out = [s for s in [unseal("webhook_endpoints", "secret", ep.secret)] if s]
    if ep.old_secret and ep.old_secret_until is not None and ep.old_secret_until > now:
        old = unseal("webhook_endpoints", "old_secret", ep.old_secret)
        if old:
            out.append(old)
    return out


# ---- dispatch -----------------------------------------------------------------------------------

def dispatch_pending(limit: int = DISPATCH_BATCH) -> int:
    """Fan undispatched events out to their endpoints; returns how many events were dispatched."""
    total = 0
    while True:
        touched, n = _dispatch_batch(limit)
        total += n
        for endpoint_id in touched:
            _enqueue_delivery(endpoint_id)
        if n < limit:
            return total


def _dispatch_batch(limit: int) -> tuple[list[str], int]:
    with Session(get_engine(), expire_on_commit=False) as s:
        stmt = select(WebhookEvent).where(col(WebhookEvent.dispatched_at).is_(None)).order_by(col(WebhookEvent.id)).limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        events = list(s.execute(stmt).scalars())
        if not events:
            return [], 0
        endpoints: dict[str, list[WebhookEndpoint]] = defaultdict(list)
        for ep in s.execute(select(WebhookEndpoint).where(col(WebhookEndpoint.org_id).in_({e.org_id for e in events}),
                                                          col(WebhookEndpoint.disabled).is_(False))).scalars():
            endpoints[ep.org_id].append(ep)
        now = _now()
        rows: list[dict[str, Any]] = []
        for ev in events:
            for ep in endpoints.get(ev.org_id, ()):
                wanted = ep.id == ev.endpoint_id if ev.endpoint_id is not None else subscribes(ep.events, ev.type)
                if wanted:
                    rows.append({"org_id": ev.org_id, "endpoint_id": ep.id, "event_id": ev.id, "type": ev.type,
                                 "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now})
        if rows:
            insert_ignore(s, WebhookDelivery, rows, ["endpoint_id", "event_id"])
        s.execute(update(WebhookEvent).where(col(WebhookEvent.id).in_([e.id for e in events])).values(dispatched_at=now))
        s.commit()
    return sorted({r["endpoint_id"] for r in rows}), len(events)


def _enqueue_delivery(endpoint_id: str, delay_ms: int | None = None) -> None:
    try:
        jobs.WEBHOOK_DELIVER.send(endpoint_id, delay_ms=delay_ms)
    except Exception as exc:  # the sweep finds the due deliveries anyway
        log.warning("webhook_deliver_enqueue_failed", endpoint_id=endpoint_id, error=type(exc).__name__)


# ---- delivery -----------------------------------------------------------------------------------

PosterFactory = Callable[[], Poster]


def _poster() -> Poster:
    return Poster(netguard.webhook_nets(), resolver=RESOLVER)


def deliver_endpoint(endpoint_id: str, owner: str, *, poster_factory: PosterFactory | None = None,
                     budget_seconds: float = RUN_BUDGET_SECONDS) -> int:
    """One run over an endpoint's due deliveries (event order); returns how many attempts it made."""
    engine = get_engine()
    with Session(engine) as s:
        claimed = ENDPOINT_LEASE.claim(s, endpoint_id, owner, where=[col(WebhookEndpoint.disabled).is_(False)])
        s.commit()
    if not claimed:
        return 0  # another run holds it (it re-checks for work before letting go), or it is disabled/gone
    attempts = 0
    started = _now()
    poster: Poster | None = None
    target = _target(endpoint_id)  # the URL and secrets, read once per run (a run lasts seconds)
    try:
        while target is not None and (_now() - started).total_seconds() < budget_seconds:
            step = _begin_attempt(endpoint_id, owner, target)
            if step is None:
                break
            if poster is None:
                poster = (poster_factory or _poster)()
            outcome = poster.post(step["url"], step["body"], step["headers"])
            attempts += 1
            if not _finish_attempt(endpoint_id, owner, step, outcome):
                break  # failed: the endpoint waits for this delivery's retry (order kept)
    except LeaseLost:
        log.info("webhook_lease_lost", endpoint_id=endpoint_id)
        return attempts
    finally:
        if poster is not None:
            poster.close()
    with Session(engine) as s:
        ENDPOINT_LEASE.release(s, endpoint_id, owner)
        s.commit()
        nxt = s.execute(select(func.min(WebhookDelivery.next_attempt_at)).where(
            col(WebhookDelivery.endpoint_id) == endpoint_id, col(WebhookDelivery.status) == "pending")).scalar_one_or_none()
    if nxt is not None:  # more work: now (budget spent) or at the next retry, if soon (the sweep covers later ones)
        wait = max(0.0, (nxt - _now()).total_seconds())
        if wait <= 300:
            _enqueue_delivery(endpoint_id, delay_ms=int(wait * 1000) + (50 if wait else 0) or None)
    return attempts


def _target(endpoint_id: str) -> dict[str, Any] | None:
    """Where and how a run POSTs: the endpoint's URL and the secrets that sign now (None: gone or disabled)."""
    with Session(get_engine()) as s:
        ep = s.get(WebhookEndpoint, endpoint_id)
        if ep is None or ep.disabled:
            return None
        return {"url": ep.url, "secrets": endpoint_secrets(ep, _now())}


def _begin_attempt(endpoint_id: str, owner: str, target: dict[str, Any]) -> dict[str, Any] | None:
    """Record the next due delivery's attempt (the intent) and return what to POST; None when nothing is due.

    The lease renewal refuses a disabled endpoint (LeaseLost), so a PATCH disabling it stops the run."""
    settings = get_settings()
    with Session(get_engine(), expire_on_commit=False) as s:
        now = _now()
        row = s.execute(select(WebhookDelivery, WebhookEvent).join(WebhookEvent, col(WebhookEvent.id) == WebhookDelivery.event_id)
                        .where(col(WebhookDelivery.endpoint_id) == endpoint_id, col(WebhookDelivery.status) == "pending",
                               col(WebhookDelivery.next_attempt_at) <= now)
                        .order_by(col(WebhookDelivery.event_id)).limit(1)).first()
        if row is None:
            return None
        d, ev = row
        attempt = d.attempts + 1
        retry_at = now + timedelta(seconds=backoff_seconds(attempt, settings.webhook_retry_base_seconds))
        ENDPOINT_LEASE.renew(s, endpoint_id, owner, where=[col(WebhookEndpoint.disabled).is_(False)])
        s.execute(update(WebhookDelivery).where(col(WebhookDelivery.id) == d.id, col(WebhookDelivery.status) == "pending")
                  .values(attempts=attempt, next_attempt_at=retry_at, last_attempt_at=now))
        s.commit()
        body = body_bytes(ev.type, ev.created_at, ev.data)
        headers = signed_headers(ev.id, now, body, target["secrets"])
        return {"id": d.id, "event_id": ev.id, "type": ev.type, "url": target["url"], "body": body, "headers": headers,
                "attempt": attempt, "retry_at": retry_at, "created_at": d.created_at}


def _finish_attempt(endpoint_id: str, owner: str, step: dict[str, Any], outcome: Outcome) -> bool:
    """Record the outcome; True when the run may go on to the next delivery."""
    metrics.WEBHOOK_SECONDS.observe(outcome.seconds)
    settings = get_settings()
    now = _now()
    with Session(get_engine(), expire_on_commit=False) as s:
        values: dict[str, Any] = {"last_status_code": outcome.status_code}
        ep_values: dict[str, Any] = {}
        pushed: list[dict[str, Any]] = []
        if outcome.ok:
            result = "succeeded"
            values.update(status="succeeded", delivered_at=now, next_attempt_at=None, last_error=None)
            ep_values["failing_since"] = None
        else:
            ep = s.get(WebhookEndpoint, endpoint_id)
            give_up = now >= step["created_at"] + timedelta(hours=settings.webhook_retry_hours)
            result = "failed" if give_up else ("refused" if outcome.refused else "retry")
            values.update(last_error=(outcome.error or "")[:500])
            if give_up:
                values.update(status="failed", next_attempt_at=None)
            failing_since = (ep.failing_since if ep is not None else None) or now
            ep_values["failing_since"] = failing_since
            if ep is not None and now - failing_since >= DISABLE_AFTER:
                ep_values.update(disabled=True, disabled_reason=f"failing since {failing_since.isoformat()} "
                                 f"(last: {(outcome.error or '')[:200]})", updated_at=now)
                pushed = _disabled_notifications(s, ep, failing_since)
                log.warning("webhook_endpoint_disabled", endpoint_id=endpoint_id, failing_since=failing_since.isoformat())
            elif not give_up:  # later deliveries wait behind this one's retry: event order where possible
                s.execute(update(WebhookDelivery).where(
                    col(WebhookDelivery.endpoint_id) == endpoint_id, col(WebhookDelivery.status) == "pending",
                    col(WebhookDelivery.id) != step["id"], col(WebhookDelivery.next_attempt_at) < step["retry_at"])
                    .values(next_attempt_at=step["retry_at"]))
        s.execute(update(WebhookDelivery).where(col(WebhookDelivery.id) == step["id"]).values(**values))
        ENDPOINT_LEASE.renew(s, endpoint_id, owner, **ep_values)
        s.commit()
    notifications.publish(pushed)
    metrics.WEBHOOK_DELIVERIES.labels(result).inc()
    log.info("webhook_attempt", endpoint_id=endpoint_id, event_id=step["event_id"], type=step["type"], attempt=step["attempt"],
             result=result, status_code=outcome.status_code, error=outcome.error, seconds=round(outcome.seconds, 3),
             **({"detail": outcome.detail} if outcome.detail else {}))
    return outcome.ok or result == "failed"


def _disabled_notifications(s: Session, ep: WebhookEndpoint, failing_since: datetime) -> list[dict[str, Any]]:
    users = list(s.execute(select(User.id).where(col(User.org_id) == ep.org_id)).scalars()) or [""]
    host = ep.url.split("/")[2] if ep.url.count("/") >= 2 else ep.url
    return notifications.insert_new(s, [{
        "org_id": ep.org_id, "user_id": uid, "kind": "webhook.disabled",
        "title": f"Webhook to {host} disabled after 3 days of failures"[:500],
        "body": f"Deliveries to {ep.url} have failed since {failing_since.isoformat()}; fix the receiver and re-enable it "
                f"with PATCH /api/v1/webhooks/{ep.id} {{\"disabled\": false}}"[:2000],
        "email_id": None, "data": {"endpoint_id": ep.id, "url": ep.url},
        "dedupe_key": f"webhook.disabled:{ep.id}:{failing_since.isoformat()}"[:200]} for uid in users])


# ---- sweep --------------------------------------------------------------------------------------

@register_sweep("webhooks")
def sweep_webhooks(session: Session, now: datetime) -> int:
    """Re-dispatch undispatched events, re-enqueue endpoints with due deliveries and no live run; set the gauges."""
    undispatched = int(session.execute(select(func.count()).select_from(WebhookEvent).where(
        col(WebhookEvent.dispatched_at).is_(None))).scalar_one())
    pending = int(session.execute(select(func.count()).select_from(WebhookDelivery).where(
        col(WebhookDelivery.status) == "pending")).scalar_one())
    disabled = int(session.execute(select(func.count()).select_from(WebhookEndpoint).where(
        col(WebhookEndpoint.disabled).is_(True))).scalar_one())
    metrics.WEBHOOK_BACKLOG.labels("events").set(undispatched)
    metrics.WEBHOOK_BACKLOG.labels("deliveries").set(pending)
    metrics.WEBHOOK_DISABLED.set(disabled)
    _purge_old(session, now)
    sent = 0
    if undispatched:
        try:
            jobs.WEBHOOK_DISPATCH.send()
            sent += 1
        except Exception as exc:
            log.warning("webhook_dispatch_enqueue_failed", error=type(exc).__name__)
    if pending:
        due = session.execute(select(WebhookDelivery.endpoint_id).distinct()
                              .join(WebhookEndpoint, col(WebhookEndpoint.id) == WebhookDelivery.endpoint_id)
                              .where(col(WebhookDelivery.status) == "pending", col(WebhookDelivery.next_attempt_at) <= now,
                                     col(WebhookEndpoint.disabled).is_(False), ENDPOINT_LEASE.free(now)).limit(1000)).scalars()
        for endpoint_id in due:
            _enqueue_delivery(endpoint_id)
            sent += 1
    return sent


KEEP = timedelta(days=30)       # finished deliveries, and events none of whose deliveries is pending, are kept this long
PURGE_EVERY = timedelta(minutes=10)
PURGE_BATCH = 5000
_last_purge: dict[str, datetime] = {}


def _purge_old(session: Session, now: datetime) -> int:
    """Every :data:`PURGE_EVERY`: delete finished deliveries older than :data:`KEEP`, then the events
    left without deliveries that are as old (in batches, so a big backlog never makes one long transaction)."""
    last = _last_purge.get("at")
    if last is not None and now - last < PURGE_EVERY:
        return 0
    _last_purge["at"] = now
    cutoff = now - KEEP
    old = list(session.execute(select(WebhookDelivery.id).where(
        col(WebhookDelivery.status).in_(("succeeded", "failed")), col(WebhookDelivery.created_at) < cutoff).limit(PURGE_BATCH)).scalars())
    if old:
        session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.id).in_(old)))
    orphans = list(session.execute(select(WebhookEvent.id).where(
        col(WebhookEvent.dispatched_at).is_not(None), col(WebhookEvent.created_at) < cutoff,
        ~select(WebhookDelivery.id).where(col(WebhookDelivery.event_id) == WebhookEvent.id).exists()).limit(PURGE_BATCH)).scalars())
    if orphans:
        session.execute(delete(WebhookEvent).where(col(WebhookEvent.id).in_(orphans)))
    session.commit()
    return len(old) + len(orphans)
