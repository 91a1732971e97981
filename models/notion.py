"""A user's Notion connection, under NextCRM's ``secondBrain_notions`` names."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
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
