"""Organizations (tenants) and their API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class Organization(SQLModel, table=True):
    """A tenant: every other row belongs to exactly one organization."""

    __tablename__ = "organizations"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    name: str = Field(max_length=200)
    mark_seen: bool = Field(default=False, description="set \\Seen on synced mail (off: never touch the mailbox)")
    auto_create_leads: bool = Field(default=False)
    own_domains: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    honor_dnt: bool = Field(default=False, description="DNT: 1 / Sec-GPC: 1 → opens are not recorded (clicks still are)")
    anonymize_ip: bool = Field(default=False, description="store tracking IPs truncated (/24, /48)")
    sentiment_llm: bool = Field(default=False, description="classify this organization's mail with the LLM backend when one is set")
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    retention_days: int | None = Field(default=None, description="emails older than this are purged daily (None: kept forever)")
    retention_run_at: datetime | None = ts_field(default=None, description="when the retention policy was last applied")


class ApiKey(SQLModel, table=True):
    """An API key; only its SHA-256 is stored, the prefix finds it quickly.

    Several per organization, each with a name. Revoked keys stay (listed, never deleted), which
    is what lets every process notice a revocation by counting them.
    """

    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    name: str = Field(default="default", max_length=100)
    prefix: str = Field(index=True, max_length=16)
    key_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    last_used_at: datetime | None = ts_field(default=None)
    revoked_at: datetime | None = ts_field(default=None)
