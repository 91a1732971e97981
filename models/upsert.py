"""Portable INSERT ... ON CONFLICT DO NOTHING for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

__all__ = ["insert_ignore", "row_defaults"]


@cache
def _defaults(model: type[SQLModel]) -> tuple[tuple[str, Callable[[], Any] | None, Any], ...]:
    """(field, default_factory, default) for every field, computed once per model."""
    out = []
    for name, info in model.model_fields.items():
        factory = cast(Callable[[], Any] | None, info.default_factory)  # the models' factories take no arguments
        default = None if info.is_required() else info.default
        out.append((name, factory, default))
    return tuple(out)


def row_defaults(model: type[SQLModel], row: dict[str, Any]) -> dict[str, Any]:
    """``row`` completed with the model's defaults (ids, timestamps, empty lists)."""
    full = dict(row)
    for name, factory, default in _defaults(model):
        if name not in full:
            full[name] = factory() if factory is not None else default
    return full


def insert_ignore(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]], conflict: Sequence[str]) -> int:
    """Insert rows, silently skipping those that collide on the ``conflict`` unique columns.

    Returns how many rows were inserted. One compiled statement is reused for every batch
    (executemany with RETURNING), so large batches stay cheap on both dialects.
    """
    if not rows:
        return 0
    table = sa_inspect(model).local_table
    full = [row_defaults(model, r) for r in rows]
    keys = set().union(*(r.keys() for r in full))
    full = [{k: r.get(k) for k in keys} for r in full]
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    pk = list(table.primary_key.columns)[0]
    stmt = ins.on_conflict_do_nothing(index_elements=list(conflict)).returning(pk)
    return len(session.execute(stmt, full).all())
