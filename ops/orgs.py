"""Organizations and API keys: creation, hashing, lookup."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models import ApiKey, Organization, utcnow

__all__ = ["create_org", "issue_key", "org_for_key", "hash_key"]

_KEY_PREFIX = "mp_"


def hash_key(api_key: str) -> str:
    """SHA-256 of a key: keys are 256-bit random, so a plain hash is not brute-forceable."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def issue_key(session: Session, org_id: str) -> str:
    """Create an API key for ``org_id``; the plaintext is returned once and never stored."""
    token = secrets.token_urlsafe(32)
    api_key = f"{_KEY_PREFIX}{token}"
    session.add(ApiKey(org_id=org_id, prefix=api_key[:10], key_hash=hash_key(api_key)))
    return api_key


def create_org(session: Session, name: str) -> tuple[Organization, str]:
    """Create an organization, its first API key and its default templates."""
    name = name.strip()
    if not name:
        raise ValueError("organization name must not be empty")
    org = Organization(name=name)
    session.add(org)
    session.flush()
    from pipeline.default_templates import seed_default_templates

    seed_default_templates(session, org.id)
    return org, issue_key(session, org.id)


class _KeyCache:
    """Key-hash → org id for a few seconds, so auth is not a query per request."""

    def __init__(self, ttl: float = 10.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._data: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, str | None]:
        with self._lock:
            hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: str, org_id: str | None) -> None:
        with self._lock:
            if len(self._data) >= self.size:
                self._data.clear()
            self._data[key] = (time.monotonic() + self.ttl, org_id)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


KEY_CACHE = _KeyCache()


def org_for_key(engine: Engine, api_key: str) -> str | None:
    """The org id an API key belongs to, or None (unknown or revoked)."""
    if not api_key.startswith(_KEY_PREFIX) or len(api_key) > 200:
        return None
    digest = hash_key(api_key)
    found, org_id = KEY_CACHE.get(digest)
    if found:
        return org_id
    with Session(engine) as s:
        row = s.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        org_id = row.org_id if row is not None and row.revoked_at is None else None
        if row is not None and org_id is not None:
            row.last_used_at = utcnow()
            s.add(row)
            s.commit()
    KEY_CACHE.put(digest, org_id)
    return org_id
