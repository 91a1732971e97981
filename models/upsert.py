"""Portable INSERT ... ON CONFLICT DO NOTHING for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

__all__ = ["insert_ignore"]


def insert_ignore(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]], conflict: Sequence[str]) -> int:
    """Insert rows, silently skipping those that collide on the ``conflict`` unique columns.

    Returns how many rows were actually inserted. Defaults declared with ``default_factory`` on
    the model (ids, timestamps) are applied here, since a Core insert does not run them.
    """
    if not rows:
        return 0
    table = model.__table__  # type: ignore[attr-defined]
    full = [model.model_validate(r).model_dump() | {k: v for k, v in r.items()} for r in rows]
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    pk = list(table.primary_key.columns)[0]
    stmt = ins.values(full).on_conflict_do_nothing(index_elements=list(conflict)).returning(pk)
    return len(session.execute(stmt).all())
