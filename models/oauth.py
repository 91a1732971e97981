"""OAuth grants of mailbox accounts, and authorization flows in progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import encrypted, ts_field, utcnow


class OAuthGrant(SQLModel, table=True):
    """One account's OAuth tokens (AES-GCM JSON: access and refresh token, scope).

    A row of its own so that refreshing can hold a row lock for the length of the token call
    without blocking the account row's sync leases and counters.
    """

    __tablename__ = "oauth_grants"

    account_id: str = Field(foreign_key="email_accounts.id", primary_key=True, max_length=24)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    provider: str = Field(max_length=16, description="google | microsoft")
    tokens_enc: str | None = encrypted("oauth_grants", "tokens_enc")
    expires_at: datetime | None = ts_field(default=None, description="when the access token expires")
    refreshed_at: datetime | None = ts_field(default=None)
    refresh_count: int = 0
    revoked_at: datetime | None = ts_field(default=None, description="the provider refused the refresh token")
    revoked_reason: str | None = Field(default=None, max_length=500)
    generation: int = Field(default=1, description="+1 per reconnect; keys the reconnect notification")
    updated_at: datetime = ts_field(default_factory=utcnow, nullable=False)


class OAuthFlow(SQLModel, table=True):
    """An authorize → callback round trip: who asked, the PKCE verifier, the account it made (once)."""

    __tablename__ = "oauth_flows"

    id: str = Field(primary_key=True, max_length=32)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=24)
    user_id: str = Field(max_length=64)
    provider: str = Field(max_length=16)
    email: str = Field(max_length=320)
    verifier_enc: str | None = encrypted("oauth_flows", "verifier_enc")
    overrides: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = ts_field(default_factory=utcnow, nullable=False)
    expires_at: datetime = ts_field(nullable=False)
    used_at: datetime | None = ts_field(default=None)
    account_id: str | None = Field(default=None, max_length=24)
