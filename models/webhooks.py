"""Webhooks: the org's endpoints, the event outbox, and one delivery row per (endpoint, event).

``webhook_events`` is the outbox: a row is written in the same transaction as the change that
caused it (``pipeline.flows.events_outbox.record_event``) and ``dispatched_at`` stays empty until
the dispatcher has fanned it out to the endpoints subscribed at that time (``webhook_deliveries``,
unique per endpoint and event, so a repeated dispatch inserts nothing). A delivery is retried with
the same event id (the ``webhook-id`` header) until it succeeds or its retry window runs out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import encrypted, new_id, ts_field, utcnow

DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class WebhookEndpoint(SQLModel, table=True):
    """One subscription: where to POST, which event types, and the signing secret (encrypted).

    ``old_secret`` keeps signing beside ``secret`` until ``old_secret_until`` after a rotation.
    ``lease_owner``/``lease_until``: one delivery run per endpoint at a time (its concurrency limit).
    ``failing_since``: the first failed attempt since the last success (3 days of it disables it).
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    description: str | None = Field(default=None, max_length=500)
    secret: str | None = encrypted("webhook_endpoints", "secret")
    old_secret: str | None = encrypted("webhook_endpoints", "old_secret")
    old_secret_until: datetime | None = ts_field(default=None)
    disabled: bool = Field(default=False)
    disabled_reason: str | None = Field(default=None, max_length=500)
    failing_since: datetime | None = ts_field(default=None)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class WebhookEvent(SQLModel, table=True):
    """One event in the outbox; ``id`` is the ``webhook-id`` of every delivery of it.

    ``dedupe_key`` (e.g. ``email.received:<email id>``) makes a repeated stage record nothing new;
    ``endpoint_id`` restricts the event to one endpoint (``webhook.test``).
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("org_id", "dedupe_key", name="uq_webhook_event_dedupe"),
        Index("ix_webhook_events_undispatched", "dispatched_at", "id"),
    )

    id: str = Field(default_factory=lambda: "evt_" + new_id(), primary_key=True, max_length=32)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    type: str = Field(max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dedupe_key: str | None = Field(default=None, max_length=200)
    endpoint_id: str | None = Field(default=None, max_length=24)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    dispatched_at: datetime | None = ts_field(default=None)


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: pending → succeeded | failed, with its attempts and last outcome.

    ``next_attempt_at`` is written (with ``attempts`` + 1) *before* each POST, so a run that dies
    mid-request leaves a delivery that is simply due again later, with the same event id.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_endpoint_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "status", "event_id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", max_length=24)
    event_id: str = Field(foreign_key="webhook_events.id", max_length=32)
    type: str = Field(max_length=64)
    status: str = Field(default="pending", max_length=16)
    attempts: int = Field(default=0)
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime | None = ts_field(default=None)
    last_attempt_at: datetime | None = ts_field(default=None)
    delivered_at: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
