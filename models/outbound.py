"""Outbound mail: the send request as recorded intent, its SMTP transactions, and unsubscribes.

An outbound email is an ``emails`` row (direction ``outbound``) plus one ``outbox`` row holding
everything needed to build and send it again after a crash: the draft, attachment storage keys,
tracking switches, schedule, lease and retry clock. Each SMTP transaction is a ``deliveries``
row whose state is written *before* each step (``sending`` before connecting, ``data`` before the
DATA command), so a redelivered message knows whether the server can have the mail already.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow

OUTBOX_STATES = ("scheduled", "queued", "sending", "sent", "failed", "cancelled")
DELIVERY_STATES = ("pending", "sending", "data", "retry", "sent", "failed", "unconfirmed", "suppressed")
SENT_COPY_STATES = ("pending", "appending", "done", "skipped", "failed")


class Outbox(SQLModel, table=True):
    """The durable send request of one outbound email (the email row holds what the API shows)."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("org_id", "idempotency_key", name="uq_outbox_idempotency"),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )

    email_id: str = Field(foreign_key="emails.id", primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", index=True, max_length=24)
    user_id: str = Field(max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str = Field(max_length=64, description="sha256 of the request; a reused key with another body is a 409")
    kind: str = Field(default="send", max_length=16, description="send | reply | forward")
    state: str = Field(default="queued", max_length=16)
    category: str = Field(default="sales", max_length=16)
    track_opens: bool = True
    track_clicks: bool = True
    draft: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attachments: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    base_key: str = Field(max_length=500, description="storage key of the message as composed, without tracking")
    send_at: datetime | None = ts_field(default=None)
    next_attempt_at: datetime | None = ts_field(default=None)
    deferred_until: datetime | None = ts_field(default=None, description="over the daily cap: waits for the next window")
    runs: int = 0
    enqueued_at: datetime | None = ts_field(default=None, description="last hand-off to the broker (the sweep re-sends after a while)")
    cap_reserved: bool = False
    lease_until: datetime | None = ts_field(default=None)
    lease_owner: str | None = Field(default=None, max_length=64)
    sent_copy: str = Field(default="pending", max_length=16)
    sent_copy_error: str | None = Field(default=None, max_length=2000)
    sent_copy_attempts: int = 0
    sync_after: bool = False
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class Delivery(SQLModel, table=True):
    """One SMTP transaction of an outbound email: its recipients, state, attempts and the server's words."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("email_id", "seq", name="uq_delivery_seq"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    seq: int
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    tracked_for: str | None = Field(default=None, max_length=320, description="whose pixel and unsubscribe link this copy carries")
    state: str = Field(default="pending", max_length=16)
    attempts: int = 0
    smtp_code: int | None = None
    smtp_message: str | None = Field(default=None, sa_column=Column(Text))
    error_code: str | None = Field(default=None, max_length=40)
    accepted: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    refused: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    log: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class Suppression(SQLModel, table=True):
    """An address that unsubscribed from an organization's marketing mail."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("org_id", "address_norm", name="uq_suppression"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    address_norm: str = Field(max_length=320)
    reason: str = Field(default="unsubscribe", max_length=40)
    email_id: str | None = Field(default=None, max_length=24)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
