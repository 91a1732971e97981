"""The in-process benchmarks' environment, written once: a fresh secret key, quiet logs, a spool
and a migrated database of the bench's own (SQLite in a temporary directory, or a PostgreSQL
database created for the run and dropped after it), with the engine reset on the way out."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def migrated_database(*, pg: bool, pg_name: str, prefix: str) -> Iterator[Path]:
    """Set the environment and migrate; yields the run's temporary directory."""
    from ops.crypto import generate_key_entry

    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({"MAILPIPE_SECRET_KEYS": generate_key_entry("bench"), "MAILPIPE_LOG_LEVEL": "WARNING",
                       "MAILPIPE_SPOOL_DIR": str(work / "spool")})
    with ExitStack() as stack:
        if pg:
            from tests.harness.services import pg_database

            os.environ["MAILPIPE_DATABASE_URL"] = stack.enter_context(pg_database(pg_name))
        else:
            os.environ["MAILPIPE_DATABASE_URL"] = f"sqlite:///{work / 'bench.db'}"
        try:
            from ops.migrate import upgrade

            upgrade(os.environ["MAILPIPE_DATABASE_URL"])
            import pipeline.actors  # noqa: F401

            yield work
        finally:
            from models.db import reset_engine

            reset_engine()
