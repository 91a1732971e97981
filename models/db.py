"""Engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

__all__ = ["engine_for", "get_engine", "reset_engine", "session_scope", "is_postgres"]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _private_sqlite_file(path: str) -> None:
    """Create the database file 0600 (in a new 0700 directory), or tighten it and its ``-wal``/``-shm``.

    SQLite gives the ``-wal``, ``-shm`` and journal files it creates later the permissions of the
    database file, so a private database file keeps them private too.
    """
    from ops.private_files import PRIVATE_FILE, make_private_dirs, open_private, tighten

    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    os.close(open_private(path, os.O_RDONLY))
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(path + suffix, PRIVATE_FILE)


def engine_for(url: str, **kwargs: Any) -> Engine:
    """Build an engine with the dialect's production settings (a SQLite file is private: 0600)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(path)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("connect_args", {"connect_timeout": 10, "application_name": "mailpipe"})
    return create_engine(url, **kwargs)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    from ops.settings import get_settings

    return engine_for(get_settings().database_url)


def reset_engine() -> None:
    """Dispose the cached engine (tests switch databases)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


def is_postgres(engine: Engine | Connection | None = None) -> bool:
    """Whether ``engine`` (a session's bind, or the process engine by default) talks to PostgreSQL."""
    return (engine or get_engine()).dialect.name == "postgresql"


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine or get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
