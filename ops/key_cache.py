"""How long a process trusts an API-key lookup: the bound on revocation.

Auth would otherwise be a query per request, so each process remembers key hash → org id. Two
things end an entry, so that a revoked key stops working everywhere within seconds:

- its age: entries live :data:`KEY_CACHE_TTL_SECONDS` (5 s), the hard bound whatever happens;
- a revocation anywhere: at most every :data:`REVOCATION_CHECK_SECONDS` a request counts the
  revoked keys (one tiny query per process, not per request). Keys are never deleted and never
  un-revoked, so a changed count means a new revocation, and the whole cache is dropped.

The process that revokes a key also drops that key's entry at once (:meth:`KeyCache.forget`). A
lookup that was already reading the database when an entry was dropped does not put its
(possibly stale) answer back: every drop bumps a generation that :meth:`KeyCache.put` checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["KEY_CACHE", "KEY_CACHE_TTL_SECONDS", "REVOCATION_CHECK_SECONDS", "KeyCache"]

KEY_CACHE_TTL_SECONDS = 5.0
REVOCATION_CHECK_SECONDS = 1.0


class KeyCache:
    """Key hash → org id (None: unknown or revoked), with the expiry rules above. Thread-safe."""

    def __init__(self, ttl: float = KEY_CACHE_TTL_SECONDS, check_every: float = REVOCATION_CHECK_SECONDS,
                 size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.check_every, self.size, self.clock = ttl, check_every, size, clock
        self._data: dict[str, tuple[float, str | None]] = {}
        self._generation = 0
        self._revoked_count: int | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, str | None]:
        """(found, org id) for a fresh entry; (False, None) when there is none."""
        with self._lock:
            hit = self._data.get(key)
        if hit is None or hit[0] < self.clock():
            return False, None
        return True, hit[1]

    @property
    def generation(self) -> int:
        """Read before a database lookup and hand to :meth:`put`."""
        with self._lock:
            return self._generation

    def put(self, key: str, org_id: str | None, generation: int) -> None:
        """Remember a lookup, unless the cache was dropped (wholly or this key) since ``generation``."""
        with self._lock:
            if generation != self._generation:
                return
            if len(self._data) >= self.size:
                self._data.clear()
            self._data[key] = (self.clock() + self.ttl, org_id)

    def forget(self, key: str) -> None:
        """Drop one key's entry now (this process revoked it)."""
        with self._lock:
            self._data.pop(key, None)
            self._generation += 1

    def check_due(self) -> bool:
        """True for the one caller that should count revocations now (at most every ``check_every``)."""
        now = self.clock()
        with self._lock:
            if now < self._next_check:
                return False
            self._next_check = now + self.check_every
            return True

    def saw_revoked_count(self, count: int) -> bool:
        """Record the number of revoked keys; a change from the last count drops everything (True)."""
        with self._lock:
            changed = self._revoked_count is not None and count != self._revoked_count
            self._revoked_count = count
            if changed:
                self._data.clear()
                self._generation += 1
            return changed

    def clear(self) -> None:
        """Forget everything, including the last revocation count (tests, database switches)."""
        with self._lock:
            self._data.clear()
            self._generation += 1
            self._revoked_count = None
            self._next_check = 0.0


KEY_CACHE = KeyCache()
