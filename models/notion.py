"""A user's Notion connection, under NextCRM's ``secondBrain_notions`` names."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import encrypted, new_id, ts_field, utcnow


class NotionConnection(SQLModel, table=True):
    """``secondBrain_notions``: user, notion_api_key (encrypted here), notion_db_id."""

    __tablename__ = "secondBrain_notions"
    __table_args__ = (UniqueConstraint("org_id", "user", name="uq_notion_user"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    v: int = 0
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    user: str = Field(max_length=64)
    notion_api_key: str | None = encrypted("secondBrain_notions", "notion_api_key")
    notion_db_id: str | None = Field(default=None, max_length=64)
    data_source_id: str | None = Field(default=None, max_length=64)
    workspace_id: str | None = Field(default=None, max_length=64)
    refresh_token: str | None = encrypted("secondBrain_notions", "refresh_token")
    createdAt: datetime = ts_field(default_factory=utcnow, nullable=False)


class NotionSave(SQLModel, table=True):
    """One email saved to one Notion database: the intent, the progress and the result.

    ``state``: pending → creating (a pages.create may be under way: ``ref`` is in the page's first
    block) → appending (the page exists) → done | failed.
    """

    __tablename__ = "notion_saves"
    __table_args__ = (UniqueConstraint("email_id", "database_id", name="uq_notion_save_email_db"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    user_id: str = Field(max_length=64)
    database_id: str = Field(max_length=64)
    data_source_id: str | None = Field(default=None, max_length=64)
    title: str = Field(max_length=2000)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=16, index=True)
    ref: str | None = Field(default=None, max_length=32)
    page_id: str | None = Field(default=None, max_length=64)
    page_url: str | None = Field(default=None, max_length=1000)
    blocks_done: int = 0
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=64, description="the run working on it (message id:nonce)")
    lease_until: datetime | None = ts_field(default=None)
    error: str | None = Field(default=None, max_length=1000)
    error_code: str | None = Field(default=None, max_length=64)
    intent_at: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    done_at: datetime | None = ts_field(default=None)
