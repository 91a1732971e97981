"""Privacy and deliverability: export/erase jobs, what was erased (so sync never brings it back)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class PrivacyJob(SQLModel, table=True):
    """An export or erase for one address (or a retention run). ``subject`` holds the address only
    while the job is pending or running; a finished job keeps counts only."""

    __tablename__ = "privacy_jobs"
    __table_args__ = (Index("ix_privacy_jobs_state", "state", "updated_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    kind: str = Field(max_length=16, description="export | erase | retention")
    state: str = Field(default="pending", max_length=16, description="pending | running | done | failed")
    subject: str | None = Field(default=None, max_length=320, description="the address; cleared when the job ends")
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result_key: str | None = Field(default=None, max_length=500, description="storage key of the export zip")
    expires_at: datetime | None = ts_field(default=None, description="when the export zip and its download URL expire")
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    finished_at: datetime | None = ts_field(default=None)


class ErasedMessage(SQLModel, table=True):
    """A keyed hash (HMAC under the newest secret key) of an erased message's identity in one mailbox:
    its dedupe key (Message-ID or stable-header hash) or its server location. The sync skips a
    fetched message whose identity hash is here, under any configured key."""

    __tablename__ = "erased_messages"
    __table_args__ = (UniqueConstraint("account_id", "key_hash", name="uq_erased_message"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    account_id: str = Field(max_length=24, description="no foreign key: the mailbox may be deleted later")
    key_hash: str = Field(max_length=64)
    reason: str = Field(default="erase", max_length=16, description="erase | retention")
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
