"""Webhook subscriptions: register (the target checked by the connection guard), change, rotate the
secret, send a test event, read the delivery log and retry one delivery.

Secrets are ``whsec_`` + 32 random bytes, returned once (create, rotate) and stored encrypted under
``MAILPIPE_SECRET_KEYS``. A rotation keeps the previous secret signing beside the new one for
:data:`ROTATION_OVERLAP`, so receivers can switch without losing a delivery.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from models import WebhookDelivery, WebhookEndpoint, utcnow
from models.db import get_engine
from ops.keys import seal, unseal
from pipeline import jobs
from pipeline.clients import netguard
from pipeline.clients.webhook_http import refusal_text
from pipeline.flows.events_outbox import record_event
from pipeline.stages.webhooks import TEST_EVENT, new_secret, parse_target, validate_events

__all__ = ["ROTATION_OVERLAP", "TargetRefused", "check_target", "create_endpoint", "delete_endpoint", "deliveries", "delivery_json",
           "endpoint_json", "get_endpoint",
           "list_endpoints", "retry_delivery", "rotate_secret", "send_test", "update_endpoint"]

ROTATION_OVERLAP = timedelta(hours=24)
RESOLVER: netguard.Resolver | None = None  # tests swap in a getaddrinfo stand-in


class TargetRefused(Exception):
    """A webhook URL the API refuses (422): ``code`` ∈ invalid_url, host_not_allowed, host_unresolvable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def check_target(url: str) -> None:
    """The form of the URL, then every address its host resolves to (public, or inside
    ``MAILPIPE_WEBHOOK_ALLOWED_NETS``); raises :class:`TargetRefused`. Nothing is connected to."""
    try:
        target = parse_target(url)
    except ValueError as exc:
        raise TargetRefused("invalid_url", f"url: {exc}") from None
    try:
        netguard.check_host(target.host, netguard.webhook_nets(), setting=netguard.WEBHOOK_SETTING, resolver=RESOLVER)
    except netguard.HostNotAllowed as exc:
        raise TargetRefused("host_not_allowed", f"url: {refusal_text(target.host, exc)}") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused("host_unresolvable", f"url: {target.host} does not resolve ({exc})") from None


def endpoint_json(ep: WebhookEndpoint) -> dict[str, Any]:
    """What the API shows of an endpoint (never a secret)."""
    return {"id": ep.id, "url": ep.url, "events": list(ep.events), "description": ep.description, "disabled": ep.disabled,
            "disabled_reason": ep.disabled_reason, "failing_since": _iso(ep.failing_since),
            "secret_rotated_until": _iso(ep.old_secret_until), "created_at": _iso(ep.created_at), "updated_at": _iso(ep.updated_at)}


def delivery_json(d: WebhookDelivery) -> dict[str, Any]:
    return {"id": d.id, "event_id": d.event_id, "type": d.type, "status": d.status, "attempts": d.attempts,
            "last_status_code": d.last_status_code, "last_error": d.last_error, "next_attempt_at": _iso(d.next_attempt_at),
            "last_attempt_at": _iso(d.last_attempt_at), "delivered_at": _iso(d.delivered_at), "created_at": _iso(d.created_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _secret() -> str:
    return new_secret(os.urandom(32))


def create_endpoint(org_id: str, url: str, events: list[str], description: str | None) -> dict[str, Any]:
    """Register an endpoint; the answer carries the secret (the only time it is shown)."""
    wanted = _events(events)
    check_target(url)
    secret = _secret()
    with Session(get_engine(), expire_on_commit=False) as s:
        ep = WebhookEndpoint(org_id=org_id, url=url, events=wanted, description=description,
                             secret=seal("webhook_endpoints", "secret", secret))
        s.add(ep)
        s.commit()
    return {**endpoint_json(ep), "secret": secret}


def _events(events: list[str]) -> list[str]:
    try:
        return validate_events(events)
    except ValueError as exc:
        raise TargetRefused("invalid_events", f"events: {exc}") from None


def _owned(s: Session, org_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    ep = s.get(WebhookEndpoint, endpoint_id)
    return ep if ep is not None and ep.org_id == org_id else None


def list_endpoints(org_id: str) -> list[dict[str, Any]]:
    with Session(get_engine()) as s:
        return [endpoint_json(e) for e in s.execute(select(WebhookEndpoint).where(col(WebhookEndpoint.org_id) == org_id)
                                                    .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))).scalars()]


def get_endpoint(org_id: str, endpoint_id: str) -> dict[str, Any] | None:
    with Session(get_engine()) as s:
        ep = _owned(s, org_id, endpoint_id)
        return endpoint_json(ep) if ep is not None else None


def update_endpoint(org_id: str, endpoint_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``url``/``events``/``description``/``disabled``; re-enabling forgets the failure streak."""
    if "events" in changes:
        changes["events"] = _events(changes["events"])
    if "url" in changes:
        check_target(changes["url"])
    with Session(get_engine(), expire_on_commit=False) as s:
        ep = _owned(s, org_id, endpoint_id)
        if ep is None:
            return None
        for k in ("url", "events", "description"):
            if k in changes:
                setattr(ep, k, changes[k])
        if "disabled" in changes and changes["disabled"] != ep.disabled:
            ep.disabled = bool(changes["disabled"])
            ep.disabled_reason = "disabled through the API" if ep.disabled else None
            if not ep.disabled:
                ep.failing_since = None
        ep.updated_at = utcnow()
        s.add(ep)
        s.commit()
        enabled = not ep.disabled
    if enabled:
        _kick(endpoint_id)  # deliveries that waited while it was disabled
    return endpoint_json(ep)


def delete_endpoint(org_id: str, endpoint_id: str) -> bool:
    """Remove the endpoint and its delivery log (events stay for other endpoints)."""
    with Session(get_engine()) as s:
        ep = _owned(s, org_id, endpoint_id)
        if ep is None:
            return False
        s.execute(delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id))
        s.delete(ep)
        s.commit()
    return True


def rotate_secret(org_id: str, endpoint_id: str) -> dict[str, Any] | None:
    """A new secret (returned once); the current one keeps signing, beside it, for :data:`ROTATION_OVERLAP`."""
    secret = _secret()
    with Session(get_engine(), expire_on_commit=False) as s:
        ep = _owned(s, org_id, endpoint_id)
        if ep is None:
            return None
        now = utcnow()
        ep.old_secret, ep.old_secret_until = _reseal_old(ep.secret), now + ROTATION_OVERLAP
        ep.secret, ep.updated_at = seal("webhook_endpoints", "secret", secret), now
        s.add(ep)
        s.commit()
    return {**endpoint_json(ep), "secret": secret, "old_secret_expires_at": _iso(ep.old_secret_until)}


def _reseal_old(current: str | None) -> str | None:
    return seal("webhook_endpoints", "old_secret", unseal("webhook_endpoints", "secret", current))


def send_test(org_id: str, endpoint_id: str) -> dict[str, Any] | None:
    """Record a ``webhook.test`` event for this endpoint only; it is delivered like any other."""
    with Session(get_engine(), expire_on_commit=False) as s:
        ep = _owned(s, org_id, endpoint_id)
        if ep is None:
            return None
        event_id = record_event(s, org_id, TEST_EVENT, {"endpoint_id": endpoint_id, "message": "a test event from mailpipe"},
                                endpoint_id=endpoint_id)
        s.commit()
    return {"event_id": event_id, "endpoint_id": endpoint_id, "type": TEST_EVENT, "disabled": ep.disabled}


def deliveries(org_id: str, endpoint_id: str, status: str | None, limit: int) -> list[dict[str, Any]] | None:
    """The endpoint's delivery log, newest event first, optionally one status only."""
    with Session(get_engine()) as s:
        if _owned(s, org_id, endpoint_id) is None:
            return None
        stmt = select(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
        if status is not None:
            stmt = stmt.where(col(WebhookDelivery.status) == status)
        rows = s.execute(stmt.order_by(col(WebhookDelivery.event_id).desc()).limit(limit)).scalars()
        return [delivery_json(d) for d in rows]


def retry_delivery(org_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any] | None:
    """Make one delivery due now (pending again if it had failed or succeeded) and start a run."""
    with Session(get_engine(), expire_on_commit=False) as s:
        if _owned(s, org_id, endpoint_id) is None:
            return None
        d = s.get(WebhookDelivery, delivery_id)
        if d is None or d.endpoint_id != endpoint_id:
            return None
        now = utcnow()
        s.execute(update(WebhookDelivery).where(col(WebhookDelivery.id) == delivery_id)
                  .values(status="pending", next_attempt_at=now, delivered_at=None))
        s.commit()
        s.refresh(d)
    _kick(endpoint_id)
    return delivery_json(d)


def _kick(endpoint_id: str) -> None:
    try:
        jobs.WEBHOOK_DELIVER.send(endpoint_id)
    except Exception:  # the sweep finds due deliveries anyway
        pass

