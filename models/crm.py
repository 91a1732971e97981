"""CRM records pushed by NextCRM, under NextCRM's own table and field names.

Ids are chosen by the CRM (24-hex ObjectIds); the primary key is (org_id, id) so two tenants never
collide. Every address column has a lowercase ``*_norm`` twin that matching uses.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index
from sqlmodel import Field, SQLModel

from models.base import ts_field, utcnow


class CrmRecord(SQLModel):
    """Columns every CRM table shares."""

    org_id: str = Field(primary_key=True, max_length=24)
    id: str = Field(primary_key=True, max_length=64)
    v: int = Field(default=0)
    createdAt: datetime = ts_field(default_factory=utcnow, nullable=False)
    updatedAt: datetime = ts_field(default_factory=utcnow, nullable=False)


class User(CrmRecord, table=True):
    """A CRM user (salesperson): owns email accounts, receives notifications."""

    __tablename__ = "Users"
    __table_args__ = (Index("ix_users_email_norm", "org_id", "email_norm"),)

    name: str = Field(max_length=300)
    email: str = Field(max_length=320)
    email_norm: str = Field(max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    tracking_opt_out: bool = Field(default=False, description="mail this user sends carries no pixel and no rewritten links")
    notify_by_email: bool = Field(default=False, description="opens and clicks are also sent to the user by email")


class Contact(CrmRecord, table=True):
    """NextCRM ``crm_Contacts``."""

    __tablename__ = "crm_Contacts"
    __table_args__ = (
        Index("ix_contacts_email_norm", "org_id", "email_norm"),
        Index("ix_contacts_personal_email_norm", "org_id", "personal_email_norm"),
    )

    first_name: str | None = Field(default=None, max_length=200)
    last_name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=320)
    email_norm: str | None = Field(default=None, max_length=320)
    personal_email: str | None = Field(default=None, max_length=320)
    personal_email_norm: str | None = Field(default=None, max_length=320)
    account: str | None = Field(default=None, max_length=64)
    position: str | None = Field(default=None, max_length=200)
    assigned_to: str | None = Field(default=None, max_length=64)


class Lead(CrmRecord, table=True):
    """NextCRM ``crm_Leads`` (camelCase names are NextCRM's)."""

    __tablename__ = "crm_Leads"
    __table_args__ = (Index("ix_leads_email_norm", "org_id", "email_norm"),)

    firstName: str | None = Field(default=None, max_length=200)
    lastName: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=320)
    email_norm: str | None = Field(default=None, max_length=320)
    company: str | None = Field(default=None, max_length=300)
    jobTitle: str | None = Field(default=None, max_length=200)
    status: str = Field(default="NEW", max_length=40)
    lead_source: str | None = Field(default=None, max_length=100)
    assigned_to: str | None = Field(default=None, max_length=64)
    source_email_id: str | None = Field(default=None, max_length=24, description="set when mailpipe created it")


class CrmAccount(CrmRecord, table=True):
    """NextCRM ``crm_Accounts`` (a company)."""

    __tablename__ = "crm_Accounts"
    __table_args__ = (Index("ix_accounts_email_norm", "org_id", "email_norm"),)

    name: str = Field(max_length=300)
    email: str | None = Field(default=None, max_length=320)
    email_norm: str | None = Field(default=None, max_length=320)
    industry: str | None = Field(default=None, max_length=200)
    website: str | None = Field(default=None, max_length=500)
    annual_revenue: str | None = Field(default=None, max_length=100)
    assigned_to: str | None = Field(default=None, max_length=64)


class Opportunity(CrmRecord, table=True):
    """NextCRM ``crm_Opportunities``."""

    __tablename__ = "crm_Opportunities"

    name: str = Field(max_length=300)
    account: str | None = Field(default=None, max_length=64)
    contact: str | None = Field(default=None, max_length=64)
    expected_revenue: int | None = Field(default=None, sa_type=BigInteger)
    budget: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = Field(default=None, max_length=16)
    close_date: datetime | None = ts_field(default=None)
    sales_stage: str | None = Field(default=None, max_length=100)
    assigned_to: str | None = Field(default=None, max_length=64)


CRM_TABLES: dict[str, type[CrmRecord]] = {
    "contacts": Contact,
    "leads": Lead,
    "accounts": CrmAccount,
    "opportunities": Opportunity,
}
ENTITY_TYPES: dict[str, str] = {"contacts": "contact", "leads": "lead", "accounts": "account", "opportunities": "opportunity"}
