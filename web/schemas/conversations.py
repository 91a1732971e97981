"""Conversations and outreach (API.md "Conversations, shared inboxes and delegation")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts
from web.schemas.emails import EmailSummary, OutreachEntry


class ConversationOut(Out):
    id: str
    account_id: str
    subject: str
    participants: list[str]
    message_count: int
    first_message_at: Ts
    last_message_at: Ts
    last_direction: str | None
    status: Literal["open", "pending", "resolved"]
    assignee_id: str | None
    awaiting_reply_since: Ts = Field(description="the last message is inbound: since then; null when answered")
    awaiting_reply: bool
    assigned_by: str | None
    assigned_at: Ts
    status_changed_by: str | None
    status_changed_at: Ts


class ConversationsPage(Out):
    items: list[ConversationOut]
    next_cursor: str | None


class ConversationDetail(ConversationOut):
    messages: list[EmailSummary] = Field(description="oldest first")


class OutreachOut(Out):
    items: list[OutreachEntry]
