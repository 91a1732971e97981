"""Organizations and their API keys: creation, naming, listing, revocation, lookup.

An organization has any number of named keys. The plaintext of a key is returned once, when it
is made; only its SHA-256 is stored. A revoked key stops working at once in the process that
revoked it and within :data:`~ops.key_cache.KEY_CACHE_TTL_SECONDS` everywhere else (in practice
about a second: see :mod:`ops.key_cache`). ``last_used_at`` is kept to within a minute
(:data:`LAST_USED_RESOLUTION`), so authenticating is not a write per request.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from models import ApiKey, Organization, utcnow
from ops.key_cache import KEY_CACHE

__all__ = [
    "DEFAULT_KEY_NAME",
    "KEY_CACHE",
    "LAST_USED_RESOLUTION",
    "InvalidKeyName",
    "KeyInfo",
    "UnknownKey",
    "UnknownOrg",
    "create_key",
        "hash_key",
    "issue_key",
    "list_keys",
    "org_for_key",
    "revoke_key",
]

log = structlog.get_logger("mailpipe.orgs")

_KEY_PREFIX = "mp_"
DEFAULT_KEY_NAME = "default"
MAX_KEY_NAME = 100
LAST_USED_RESOLUTION = timedelta(seconds=60)


class UnknownOrg(LookupError):
    """No organization has this id."""


class UnknownKey(LookupError):
    """No API key has this id."""


class InvalidKeyName(ValueError):
    """A key name must be 1-100 printable characters."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never its hash, and its plaintext only when it is made."""

    id: str
    org_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.id, row.org_id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {"id": self.id, "org_id": self.org_id, "name": self.name, "prefix": self.prefix, "active": self.active,
                "created_at": iso(self.created_at), "last_used_at": iso(self.last_used_at), "revoked_at": iso(self.revoked_at)}


def hash_key(api_key: str) -> str:
    """SHA-256 of a key: keys are 256-bit random, so a plain hash is not brute-forceable."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_KEY_NAME:
        raise InvalidKeyName(f"a key name must be 1-{MAX_KEY_NAME} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidKeyName("a key name must not contain control characters")
    return name


def _new_key(session: Session, org_id: str, name: str) -> tuple[ApiKey, str]:
    api_key = f"{_KEY_PREFIX}{secrets.token_urlsafe(32)}"
    row = ApiKey(org_id=org_id, name=_check_name(name), prefix=api_key[:10], key_hash=hash_key(api_key))
    session.add(row)
    return row, api_key


def issue_key(session: Session, org_id: str, name: str = DEFAULT_KEY_NAME) -> str:
    """Add an API key to ``org_id`` in ``session``; the plaintext is returned once and never stored."""
    return _new_key(session, org_id, name)[1]


def create_key(engine: Engine, org_id: str, name: str | None = None) -> tuple[KeyInfo, str]:
    """A new key for an existing organization (committed); ``name`` defaults to ``key-<n>``.
    Returns what may be listed and the plaintext, shown this once."""
    with Session(engine, expire_on_commit=False) as s:
        if s.get(Organization, org_id) is None:
            raise UnknownOrg(f"no organization with id {org_id!r}")
        if name is None:
            count = s.execute(select(func.count()).select_from(ApiKey).where(ApiKey.org_id == org_id)).scalar_one()
            name = f"key-{count + 1}"
        row, api_key = _new_key(s, org_id, name)
        s.commit()
        return KeyInfo.of(row), api_key


def list_keys(engine: Engine, org_id: str) -> list[KeyInfo]:
    """Every key of an organization, revoked ones included, oldest first."""
    with Session(engine) as s:
        if s.get(Organization, org_id) is None:
            raise UnknownOrg(f"no organization with id {org_id!r}")
        rows = s.exec(select(ApiKey).where(ApiKey.org_id == org_id).order_by(col(ApiKey.created_at), col(ApiKey.id))).all()
        return [KeyInfo.of(r) for r in rows]


def revoke_key(engine: Engine, key_id: str) -> tuple[KeyInfo, bool]:
    """Revoke a key (committed, then dropped from this process's cache); True if it was active.
    Revoking a revoked key changes nothing."""
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise UnknownKey(f"no API key with id {key_id!r}")
        newly = row.revoked_at is None
        if newly:
            row.revoked_at = utcnow()
            s.add(row)
            s.commit()
        digest = row.key_hash
        info = KeyInfo.of(row)
    KEY_CACHE.forget(digest)
    if newly:
        log.info("api_key_revoked", key_id=info.id, org_id=info.org_id, name=info.name)
    return info, newly


def _check_revocations(engine: Engine) -> None:
    try:
        with Session(engine) as s:
            count = s.execute(select(func.count()).select_from(ApiKey).where(col(ApiKey.revoked_at).is_not(None))).scalar_one()
    except SQLAlchemyError as exc:  # the key lookups below fail loudly if the database is really gone
        log.warning("api_key_revocation_check_failed", error=type(exc).__name__)
        return
    if KEY_CACHE.saw_revoked_count(int(count)):
        log.info("api_key_cache_dropped", reason="a key was revoked")


def _touch(session: Session, key_id: str) -> None:
    """Set last_used_at unless it is recent (one write a minute per key, whatever the traffic)."""
    now = utcnow()
    stale = or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) < now - LAST_USED_RESOLUTION)
    try:
        session.execute(update(ApiKey).where(col(ApiKey.id) == key_id, stale).values(last_used_at=now))
        session.commit()
    except SQLAlchemyError as exc:  # bookkeeping only: the request is authorized all the same
        session.rollback()
        log.warning("api_key_last_used_not_recorded", key_id=key_id, error=type(exc).__name__)


def org_for_key(engine: Engine, api_key: str) -> str | None:
    """The org id an API key belongs to, or None (unknown or revoked)."""
    if not api_key.startswith(_KEY_PREFIX) or len(api_key) > 200:
        return None
    digest = hash_key(api_key)
    if KEY_CACHE.check_due():
        _check_revocations(engine)
    found, org_id = KEY_CACHE.get(digest)
    if found:
        return org_id
    generation = KEY_CACHE.generation
    with Session(engine) as s:
        row = s.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        org_id = row.org_id if row is not None and row.revoked_at is None else None
        if row is not None and org_id is not None and (row.last_used_at is None or row.last_used_at < utcnow() - LAST_USED_RESOLUTION):
            _touch(s, row.id)
    KEY_CACHE.put(digest, org_id, generation)
    return org_id
