"""Shared column helpers: ids, timestamps, normalized emails, the encrypted-column registry."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field

__all__ = [
    "ENCRYPTED_COLUMNS",
    "UTCDateTime",
    "encrypted",
    "ts_field",
    "new_id",
    "normalize_email",
    "utcnow",
]


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A 24-hex, time-ordered id (like a MongoDB ObjectId): sortable, usable as a cursor."""
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


_FORBIDDEN_IN_ADDRESS = frozenset('<>()[]\\,;:"')


def normalize_email(value: str | None) -> str | None:
    """The one matching form of an address: its addr-spec, lowercased, without brackets; None when
    ``value`` holds no plausible address.

    Accepts a bare ``jane@x.com``, ``<jane@x.com>``, a header value ``"Doe, Jane" <Jane@X.com>`` and
    ``mailto:jane@x.com``. Every lookup, link, suppression and ``*_norm`` column uses this.
    """
    if not value:
        return None
    text = value.strip()
    if text.lower().startswith("mailto:"):
        text = text[len("mailto:"):].strip()
    if text.endswith(">") and "<" in text:  # "<a@b>" as well as a full "Name <a@b>"
        text = text[text.rindex("<") + 1 : -1].strip()
    text = text.lower()
    if text.count("@") != 1 or any(ch.isspace() or ch in _FORBIDDEN_IN_ADDRESS for ch in text):
        return None
    local, domain = text.split("@")
    if not local or not domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return None
    return text


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes; SQLite hands back naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# (table name, column name) of every column holding ciphertext; `keys rotate` walks these.
ENCRYPTED_COLUMNS: list[tuple[str, str]] = []


def encrypted(table: str, column: str, **kwargs: Any) -> Any:
    """Declare an encrypted text column and register it for key rotation."""
    ENCRYPTED_COLUMNS.append((table, column))
    return Field(default=None, **kwargs)


def ts_field(**kwargs: Any) -> Any:
    """A UTC timestamp column (safe to declare on shared base classes)."""
    kwargs.setdefault("nullable", True)
    return Field(sa_type=UTCDateTime, **kwargs)
