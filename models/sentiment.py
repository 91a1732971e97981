"""Sentiment of inbound mail and the at-risk state of CRM accounts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from models.base import ts_field, utcnow


class EmailSentiment(SQLModel, table=True):
    """One inbound email's sentiment (one row per email: a repeat of the stage changes nothing).

    ``label`` is None when the email could not be classified (``error`` says why); such an email is
    not retried by the sweep, only by ``mailpipe sentiment backfill --redo``.
    """

    __tablename__ = "email_sentiments"
    __table_args__ = (Index("ix_email_sentiments_org_label", "org_id", "label"),)

    email_id: str = Field(foreign_key="emails.id", primary_key=True, max_length=24, ondelete="CASCADE")  # goes with its email
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    label: str | None = Field(default=None, max_length=8, description="positive | neutral | negative")
    score: float | None = Field(default=None, description="-1..1, below zero is negative")
    model: str = Field(max_length=200, description="the backend that produced the result")
    cues: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    chars: int = Field(default=0, description="length of the new text that was classified")
    error: str | None = Field(default=None, max_length=500)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class AccountRisk(SQLModel, table=True):
    """Whether a CRM account is at risk now; ``episode`` counts the times it turned at risk, and the
    owner's notification is unique per episode."""

    __tablename__ = "account_risk"

    org_id: str = Field(primary_key=True, max_length=24)
    account_id: str = Field(primary_key=True, max_length=64)
    at_risk: bool = False
    episode: int = 0
    since: datetime | None = ts_field(default=None, description="when the current episode started")
    evaluated_at: datetime = ts_field(default_factory=utcnow, nullable=False)
