"""In-app notifications for salespeople."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class Notification(SQLModel, table=True):
    """One notification; ``dedupe_key`` (e.g. ``email.received:<email_id>``) makes retries no-ops."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("org_id", "dedupe_key", name="uq_notification_dedupe"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    user_id: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=40)
    title: str = Field(max_length=500)
    body: str = Field(default="", max_length=2000)
    email_id: str | None = Field(default=None, max_length=24)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dedupe_key: str = Field(max_length=200)
    read_at: datetime | None = ts_field(default=None)
    email_state: str | None = Field(default=None, max_length=16,
                                    description="pending | sending | sent | failed when the user gets notifications by email")
    emailed_at: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
