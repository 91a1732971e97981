"""Conversations (threads exposed to the CRM), the keys messages join them by, and who may see a mailbox
besides its owner (shared-mailbox members and delegates)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow

CONVERSATION_STATUSES = ("open", "pending", "resolved")
MEMBER_ROLES = ("member", "delegate")


class Conversation(SQLModel, table=True):
    """One thread of one mailbox; an email's ``thread_id`` is its conversation's id.

    ``message_count``, ``first_message_at``, ``last_message_at``, ``last_direction``, ``participants``
    and ``awaiting_reply_since`` are recomputed from the emails whenever one joins (idempotent); a
    conversation merged into another keeps its row with ``merged_into`` set (lists skip it).
    """

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_org_last", "org_id", "last_message_at", "id", "account_id"),
        Index("ix_conversations_account_last", "account_id", "last_message_at", "id"),
        Index("ix_conversations_subject", "account_id", "subject_norm"),
        Index("ix_conversations_assignee", "org_id", "assignee_id", "last_message_at", "id"),
        Index("ix_conversations_status", "org_id", "status", "last_message_at", "id"),
        Index("ix_conversations_awaiting", "org_id", "awaiting_reply_since", "last_message_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", max_length=24)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    subject_norm: str = Field(default="", max_length=500, description="subject without Re:/Fwd:/[tags], lower case")
    search_text: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""),
                             description="subject and participants, lower case: what ?q= matches")
    participants: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                                    description="addresses other than the mailbox's own, normalized")
    message_count: int = 0
    first_message_at: datetime | None = ts_field(default=None)
    last_message_at: datetime | None = ts_field(default=None)
    last_direction: str | None = Field(default=None, max_length=8)
    status: str = Field(default="open", max_length=16)
    assignee_id: str | None = Field(default=None, max_length=64)
    assigned_by: str | None = Field(default=None, max_length=64, description="acting user who assigned (None: the org key)")
    assigned_at: datetime | None = ts_field(default=None)
    status_changed_by: str | None = Field(default=None, max_length=64)
    status_changed_at: datetime | None = ts_field(default=None)
    awaiting_reply_since: datetime | None = ts_field(default=None, description="the last message is inbound: since then")
    merged_into: str | None = Field(default=None, max_length=24, description="a later message bridged it into this one")
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class ConversationKey(SQLModel, table=True):
    """A key a message of the conversation carries: ``m:<message id>`` (its own id and every id it
    references), ``t:<Thread-Index root>``, ``g:<X-GM-THRID>``. Unique per mailbox: the first
    conversation to claim a key owns it, and a message whose keys point at two conversations merges them."""

    __tablename__ = "conversation_keys"
    __table_args__ = (UniqueConstraint("account_id", "key", name="uq_conversation_key"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", max_length=24)
    key: str = Field(max_length=1000)
    conversation_id: str = Field(max_length=24, index=True)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class AccountMember(SQLModel, table=True):
    """A user who may see a mailbox they do not own: ``member`` of a shared mailbox (counts while the
    mailbox is shared) or ``delegate``. Read on every request, so a change takes effect at once."""

    __tablename__ = "account_members"
    __table_args__ = (
        UniqueConstraint("account_id", "user_id", "role", name="uq_account_member"),
        Index("ix_account_members_user", "org_id", "user_id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", max_length=24)
    user_id: str = Field(max_length=64)
    role: str = Field(max_length=16)
    added_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
