"""Mailbox accounts and connection tests (secrets are never part of a response)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from web.schemas import Out
from web.schemas.common import Ts


class ServerOut(Out):
    host: str | None
    port: int | None
    security: str | None
    username: str | None


class Backfill(Out):
    done: int
    total: int


class SyncOut(Out):
    state: str
    last_synced_at: Ts
    last_error: str | None
    error_code: str | None
    reconnect_needed: bool
    messages_synced: int
    backfill: Backfill
    next_fetch_at: Ts
    deferred_until: Ts
    realtime: Literal["idle", "poll"] = Field(description="idle: new INBOX mail arrives through IMAP IDLE; poll: every poll_seconds")
    idle_since: Ts = Field(description="when the current IDLE connection was established (null while polling)")


class AccountOut(Out):
    id: str
    user_id: str
    email: str
    provider: str
    imap: ServerOut
    smtp: ServerOut
    poll_seconds: int | None
    saves_sent_copy: bool
    sync: SyncOut
    created_at: Ts
    shared: bool = Field(default=False, description="a team inbox: its members see it")
    members: list[str] = Field(default_factory=list, description="users who see the shared mailbox")
    delegates: list[str] = Field(default_factory=list, description="users the owner delegated the mailbox to")


class AccountsOut(Out):
    items: list[AccountOut]


class ProbeOut(Out):
    ok: bool
    error_code: str | None
    message: str
    capabilities: list[Any] | None = None


class ConnTestOut(Out):
    ok: bool
    imap: ProbeOut
    smtp: ProbeOut


class SyncQueuedOut(Out):
    id: str
    status: str


class OAuthConnectedOut(Out):
    account_id: str
    ok: bool
    provider: str
    email: str
    reconnected: bool
    test: ConnTestOut
