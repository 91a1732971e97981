"""Email templates with merge fields, and their usage counters."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow


class Template(SQLModel, table=True):
    """A reusable email body with ``{{field|fallback}}`` merge fields."""

    __tablename__ = "templates"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    name: str = Field(max_length=300)
    category: str = Field(default="sales", max_length=100)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_html: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_text: str | None = Field(default=None, sa_column=Column(Text))
    merge_fields: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    is_public: bool = False
    created_by: str | None = Field(default=None, max_length=64)
    usage_count: int = 0
    last_used_at: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    deleted_at: datetime | None = ts_field(default=None)
