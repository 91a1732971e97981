"""Alembic, driven programmatically: `mailpipe migrate` and `serve` call :func:`upgrade`."""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "check", "upgrade"]

_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "migrations")


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at mailpipe's migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", _SCRIPTS)
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the models and the migrated schema differ (``alembic check``)."""
    command.check(alembic_config(database_url))
