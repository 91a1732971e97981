"""Emails, where they live on the server, their attachments and their CRM links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import new_id, ts_field, utcnow

DIRECTIONS = ("inbound", "outbound")
STATUSES = ("received", "queued", "scheduled", "sending", "sent", "failed", "cancelled", "bounced")
KINDS = ("message", "bounce", "complaint")


class Email(SQLModel, table=True):
    """One message per account, unique on its normalized Message-ID (or a stable-header hash)."""

    __tablename__ = "emails"
    __table_args__ = (
        UniqueConstraint("account_id", "dedupe_key", name="uq_email_account_dedupe"),
        Index("ix_emails_org_received", "org_id", "received_at"),
        Index("ix_emails_org_linked", "org_id", "linked"),
        Index("ix_emails_from_norm", "org_id", "from_email_norm"),
        Index("ix_emails_pipeline", "pipeline_state", "stage_at"),
        Index("ix_emails_template", "template_id", "status"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", index=True, max_length=24)
    direction: str = Field(default="inbound", max_length=8)
    status: str = Field(default="received", max_length=16)
    dedupe_key: str = Field(max_length=600)
    message_id: str | None = Field(default=None, max_length=995, index=True)
    in_reply_to: str | None = Field(default=None, max_length=995)
    references: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    gm_msgid: int | None = Field(default=None, index=True, sa_type=BigInteger)  # 64-bit on Gmail
    gm_thrid: int | None = Field(default=None, sa_type=BigInteger)
    thread_id: str | None = Field(default=None, max_length=1000, index=True)
    from_email: str | None = Field(default=None, max_length=320)
    from_email_norm: str | None = Field(default=None, max_length=320)
    from_name: str | None = Field(default=None, max_length=500)
    to_emails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    cc_emails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    bcc_emails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_html: str | None = Field(default=None, sa_column=Column(Text))
    snippet: str = Field(default="", max_length=100)
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    size: int = 0
    raw_key: str | None = Field(default=None, max_length=500, description="storage key of the raw message")
    parse_error: str | None = Field(default=None, sa_column=Column(Text))
    defects: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    pipeline_state: str = Field(default="fetched", max_length=24,
                                description="fetched → parsed → stored → linked → leads → done | quarantined")
    stage_at: datetime | None = ts_field(default=None, description="when pipeline_state last moved (re-sweep clock)")
    ingest_attempts: int = 0
    silent: bool = Field(default=False, description="re-indexed copy: no notifications")
    received_at: datetime | None = ts_field(default=None)
    sent_at: datetime | None = ts_field(default=None)
    linked: bool = False
    needs_review: bool = False
    suspicious_sender: bool = Field(default=False, description="the From display name holds a different address")
    attachment_count: int = 0
    open_count: int = 0
    click_count: int = 0
    first_open_at: datetime | None = ts_field(default=None)
    last_open_at: datetime | None = ts_field(default=None)
    template_id: str | None = Field(default=None, max_length=24)
    notion_page_url: str | None = Field(default=None, max_length=1000)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    seen: bool = Field(default=False, description="\\Seen on the server (any location)")
    flagged: bool = Field(default=False, description="\\Flagged on the server (any location)")
    answered: bool = Field(default=False, description="\\Answered on the server (any location)")
    deleted_on_server: bool = Field(default=False, description="no location of it is left on the server")
    deleted_on_server_at: datetime | None = ts_field(default=None)
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    deleted_at: datetime | None = ts_field(default=None)
    kind: str = Field(default="message", max_length=16, description="message | bounce (a delivery report) | complaint (ARF)")
    bounces: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False),
                                          description="outbound: [{recipient, type: hard|soft, status, diagnostic, at}]")


class FlagChange(SQLModel, table=True):
    """A user's flag change through the API, recorded before it is written to the server (UID STORE).

    ``state``: pending → done | failed | superseded (a later change of the same email replaced it).
    """

    __tablename__ = "flag_changes"
    __table_args__ = (Index("ix_flag_changes_pending", "state", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", max_length=24)
    seen: bool | None = None
    flagged: bool | None = None
    user_id: str | None = Field(default=None, max_length=64, description="the acting user who asked (None: the org key)")
    state: str = Field(default="pending", max_length=16)
    attempts: int = 0
    error: str | None = Field(default=None, max_length=2000)
    locations: int = Field(default=0, description="locations written at the last attempt")
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    attempted_at: datetime | None = ts_field(default=None)
    done_at: datetime | None = ts_field(default=None)


class EmailLocation(SQLModel, table=True):
    """Where a message sits on the server: (folder, UIDVALIDITY, UID). One email, many locations."""

    __tablename__ = "email_locations"
    __table_args__ = (UniqueConstraint("account_id", "folder", "uidvalidity", "uid", name="uq_location"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    account_id: str = Field(foreign_key="email_accounts.id", max_length=24)
    folder: str = Field(max_length=500)
    uidvalidity: int = Field(sa_type=BigInteger)  # RFC 3501: up to 2**32 - 1
    uid: int = Field(sa_type=BigInteger)
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    modseq: int | None = Field(default=None, sa_type=BigInteger, description="MODSEQ of the flags stored (CONDSTORE)")
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class Document(SQLModel, table=True):
    """An attachment (NextCRM calls stored files Documents); bytes live in the storage backend."""

    __tablename__ = "Documents"
    __table_args__ = (UniqueConstraint("email_id", "part_index", name="uq_document_part"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    part_index: int
    document_name: str = Field(max_length=255)
    document_file_mimeType: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)
    content_id: str | None = Field(default=None, max_length=500)
    inline: bool = False
    storage_key: str = Field(max_length=500)
    createdAt: datetime = ts_field(default_factory=utcnow, nullable=False)


class EmailLink(SQLModel, table=True):
    """An email ↔ CRM entity link, with how it was made and whether a human should look."""

    __tablename__ = "email_links"
    __table_args__ = (
        UniqueConstraint("email_id", "entity_type", "entity_id", name="uq_email_link"),
        Index("ix_links_entity", "org_id", "entity_type", "entity_id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    email_id: str = Field(foreign_key="emails.id", index=True, max_length=24)
    entity_type: str = Field(max_length=16)
    entity_id: str = Field(max_length=64)
    how: str = Field(max_length=64, description="auto:contacts.email, manual, retro:leads.email, ...")
    needs_review: bool = False
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class EmailAddress(SQLModel, table=True):
    """An address an email can be linked by (inbound: From; outbound: To/Cc), for retroactive linking."""

    __tablename__ = "email_addresses"
    __table_args__ = (
        UniqueConstraint("email_id", "address_norm", name="uq_email_address"),
        Index("ix_email_addresses_org_addr", "org_id", "address_norm"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", max_length=24)
    email_id: str = Field(foreign_key="emails.id", max_length=24)
    address_norm: str = Field(max_length=320)
