"""Single-leader election for the scheduler with a PostgreSQL session advisory lock.

The lock lives on one dedicated, non-pooled connection held for the leader's lifetime (a pooled
or PgBouncer-transaction connection would silently drop it). If that connection dies, so does
leadership: :meth:`PgLeaderLock.ensure` notices on the next tick and re-campaigns. When the
leader process is killed, PostgreSQL ends its session and releases the lock at once.
"""

from __future__ import annotations

import threading
from typing import Protocol

import psycopg
import structlog

__all__ = ["AlwaysLeader", "LeaderLock", "PgLeaderLock", "leader_lock_for"]

log = structlog.get_logger("mailpipe.leader")

# Arbitrary, fixed 64-bit key: "mailpipe" in ASCII, as a signed bigint.
LOCK_KEY = int.from_bytes(b"mailpipe", "big", signed=True)


class LeaderLock(Protocol):
    def ensure(self) -> bool:
        """Return True while this process leads; try to become leader otherwise."""

    def release(self) -> None:
        """Give up leadership (clean shutdown)."""


class AlwaysLeader:
    """Embedded mode (SQLite, one process): there is nobody to elect."""

    def ensure(self) -> bool:
        return True

    def release(self) -> None:
        return None


class PgLeaderLock:
    """``pg_try_advisory_lock`` on a dedicated connection; re-checked every tick."""

    def __init__(self, dsn: str, key: int = LOCK_KEY) -> None:
        self._dsn = dsn
        self._key = key
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._leading = False
        self._lock = threading.Lock()

    @property
    def leading(self) -> bool:
        return self._leading

    def ensure(self) -> bool:
        with self._lock:
            if self._leading and self._alive():
                return True
            if self._leading:
                log.warning("leader_connection_lost")
                self._drop()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5, application_name="mailpipe-scheduler")
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                self._leading = bool(row and row[0])
            except psycopg.Error as exc:
                log.warning("leader_campaign_failed", error=type(exc).__name__)
                self._drop()
            return self._leading

    def _alive(self) -> bool:
        try:
            assert self._conn is not None
            self._conn.execute("SELECT 1")
            return True
        except (psycopg.Error, AssertionError):
            return False

    def _drop(self) -> None:
        self._leading = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def release(self) -> None:
        with self._lock:
            if self._conn is not None and self._leading:
                try:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                except psycopg.Error:
                    pass
            self._drop()


def leader_lock_for(database_url: str) -> LeaderLock:
    """A real lock on PostgreSQL; on SQLite the single embedded process always leads."""
    if database_url.startswith("sqlite"):
        return AlwaysLeader()
    dsn = "postgresql://" + database_url.split("://", 1)[1]
    return PgLeaderLock(dsn)
