"""Open/click tracking: links rewritten at send time and the events they produce."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class TrackedLink(SQLModel, table=True):
    """The URL behind one link hash in one sent email; the click endpoint redirects only here."""

    __tablename__ = "tracked_links"
    __table_args__ = (UniqueConstraint("email_id", "link_hash", name="uq_tracked_link"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    link_hash: str = Field(max_length=64)
    url: str = Field(sa_column=Column(Text, nullable=False))
    position: int = 0
    text: str = Field(default="", max_length=500, description="the link's visible text, for notifications")


class TrackingEvent(SQLModel, table=True):
    """One open or click; ``intake_id`` makes a redelivered intake message a no-op."""

    __tablename__ = "tracking_events"
    __table_args__ = (Index("ix_tracking_events_email_at", "email_id", "at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    intake_id: str = Field(unique=True, max_length=64)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    kind: str = Field(max_length=8, description="open | click")
    recipient_hash: str | None = Field(default=None, max_length=64)
    link_hash: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, sa_column=Column(Text))
    at: datetime = ts_field(default_factory=utcnow, nullable=False)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1000)
    machine: bool = False
    reason: str | None = Field(default=None, max_length=32, description="why machine (gmail_proxy: a proxied open, counted)")
    recipient_email: str | None = Field(default=None, max_length=320)
    method: str = Field(default="GET", max_length=8)
    counted: bool = Field(default=True, description="False for a replay collapsed into an earlier event")
    settled: bool = Field(default=True, description="False for a click until its burst window has passed (then counted/notified)")
