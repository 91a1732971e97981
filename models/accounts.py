"""Mailboxes mailpipe syncs and sends from, and per-folder IMAP sync state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from models.base import encrypted, new_id, ts_field, utcnow

SYNC_STATES = ("idle", "syncing", "error", "reconnect_required", "disabled")
PROVIDERS = ("gmail", "outlook", "exchange", "imap")


class EmailAccount(SQLModel, table=True):
    """One user's mailbox. Secrets are AES-GCM ciphertext (see ops.crypto)."""

    __tablename__ = "email_accounts"
    __table_args__ = (
        # One live account per mailbox address in an organization (deleted ones may repeat).
        Index("uq_account_live_email", "org_id", "email_norm", unique=True,
              postgresql_where=text("deleted_at IS NULL"), sqlite_where=text("deleted_at IS NULL")),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    user_id: str = Field(max_length=64, index=True)
    email: str = Field(max_length=320)
    email_norm: str = Field(max_length=320, index=True)
    provider: str = Field(default="imap", max_length=16)

    imap_host: str | None = Field(default=None, max_length=255)
    imap_port: int | None = None
    imap_security: str = Field(default="ssl", max_length=16)
    imap_username: str | None = Field(default=None, max_length=320)
    imap_password_enc: str | None = encrypted("email_accounts", "imap_password_enc")
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = None
    smtp_security: str = Field(default="starttls", max_length=16)
    smtp_username: str | None = Field(default=None, max_length=320)
    smtp_password_enc: str | None = encrypted("email_accounts", "smtp_password_enc")
    oauth_enc: str | None = encrypted("email_accounts", "oauth_enc")
    saves_sent_copy: bool = Field(default=False, description="server files submitted mail in Sent itself")
    shared: bool = Field(default=False, description="a team inbox: its members (account_members) see it too")

    sync_state: str = Field(default="idle", max_length=24)
    last_synced_at: datetime | None = ts_field(default=None)
    last_error: str | None = Field(default=None, max_length=2000)
    last_error_code: str | None = Field(default=None, max_length=32, description="dns|connect|tls|auth|timeout|protocol")
    reported_sync_state: str | None = Field(default=None, max_length=32,
                                            description="the sync state last announced to webhooks (null: idle)")
    consecutive_failures: int = 0
    messages_synced: int = 0
    backfill_done: int = 0
    backfill_total: int = 0
    poll_seconds: int | None = None
    next_fetch_at: datetime | None = ts_field(default=None, index=True)
    fetch_lease_until: datetime | None = ts_field(default=None)
    fetch_token: str | None = Field(default=None, max_length=24)
    fetch_owner: str | None = Field(default=None, max_length=64, description="message id holding the fetch lease")
    deferred_until: datetime | None = ts_field(default=None, description="rate limit reached: rest waits until then")
    rate_window_start: datetime | None = ts_field(default=None)
    rate_window_count: int = 0
    send_cap_per_day: int | None = Field(default=None, description="messages per 24-hour window; None: the provider's cap")
    send_window_start: datetime | None = ts_field(default=None)
    send_window_count: int = 0

    # Real time (IMAP IDLE on INBOX): the watcher holding the mailbox and since when it idles.
    idle_owner: str | None = Field(default=None, max_length=64, description="watcher id holding the IDLE lease")
    idle_lease_until: datetime | None = ts_field(default=None, index=True)
    idle_since: datetime | None = ts_field(default=None, description="IDLE established on INBOX (None: polling only)")
    idle_capable: bool | None = Field(default=None, description="server offers IDLE (None: not checked yet)")
    idle_checked_at: datetime | None = ts_field(default=None)

    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    deleted_at: datetime | None = ts_field(default=None)


class FolderState(SQLModel, table=True):
    """UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ cursor of one (account, folder)."""

    __tablename__ = "folder_states"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_folder_account_name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", index=True, max_length=24)
    name: str = Field(max_length=500)
    role: str = Field(default="other", max_length=16, description="inbox | sent | all | other")
    uidvalidity: int | None = Field(default=None, sa_type=BigInteger)  # RFC 3501 allows up to 2**32 - 1
    uidnext: int | None = Field(default=None, sa_type=BigInteger)
    highestmodseq: int | None = Field(default=None, sa_type=BigInteger)  # RFC 7162: up to 2**63 - 1
    messages: int | None = None
    last_uid: int = Field(default=0, sa_type=BigInteger, description="highest UID fully processed (new-mail cursor)")
    backfill_low_uid: int | None = Field(default=None, sa_type=BigInteger, description="lowest UID backfilled so far (newest first)")
    backfill_done: bool = False
    last_full_sync: datetime | None = ts_field(default=None)
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)
