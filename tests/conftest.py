"""Shared fixtures: an isolated environment per test (own SQLite file, fresh StubBroker, own
secret key), plus the real PostgreSQL database and RabbitMQ vhost for integration tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ops.crypto import generate_key_entry  # noqa: E402

pytest_plugins = ["tests.harness.fixtures"] if (ROOT / "tests/harness/fixtures.py").exists() else []

_MAILPIPE_VARS = [k for k in os.environ if k.startswith("MAILPIPE_")]
TEST_ALLOWED_NETS = "127.0.0.0/8"


def reset_process_state() -> None:
    """Forget cached settings, engine, keyring and API-key lookups."""
    from models.db import reset_engine
    from ops.keys import reset_keyring
    from ops.orgs import KEY_CACHE
    from ops.settings import reset_settings
    from pipeline.clients.storage import reset_storage
    from pipeline.flows.connections import use_imap_connector, use_smtp_transport
    from web.intake import reset_intake
    from web.ratelimit import reset_limits
    from web.routes import tracking

    reset_intake()
    reset_limits()
    tracking._LINKS.clear()
    reset_settings()
    reset_storage()
    use_imap_connector(None)
    use_smtp_transport(None)
    reset_engine()
    reset_keyring()
    KEY_CACHE.clear()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with only defaults pointing into its own temp dir."""
    for var in _MAILPIPE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILPIPE_DATABASE_URL", f"sqlite:///{tmp_path / 'mailpipe.db'}")
    monkeypatch.setenv("MAILPIPE_SECRET_KEYS", generate_key_entry("test1"))
    monkeypatch.setenv("MAILPIPE_STORAGE_URL", f"file://{tmp_path / 'attachments'}")
    # The test servers (Dovecot, aiosmtpd, stand-ins) listen on 127.0.0.1; the connection guard
    # refuses loopback unless allowed. Tests that show the refusal delete this variable.
    monkeypatch.setenv("MAILPIPE_MAIL_ALLOWED_NETS", TEST_ALLOWED_NETS)
    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database for this test; yields its URL."""
    from models import metadata
    from models.db import get_engine

    metadata.create_all(get_engine())
    yield os.environ["MAILPIPE_DATABASE_URL"]


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    """A fresh StubBroker with every actor rebound to it; no retries so failures surface."""
    import pipeline.actors  # noqa: F401  (declares the actors)
    from pipeline.broker import build_broker, use_broker

    broker = build_broker(None)
    assert isinstance(broker, StubBroker)
    for m in broker.middleware:
        if type(m).__name__ == "Retries":
            m.max_retries = 0  # type: ignore[attr-defined]
    use_broker(broker)
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the whole run, migrated, dropped at the end."""
    from ops.migrate import upgrade
    from tests.harness.services import pg_database

    with pg_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database for one test."""
    from tests.harness.services import pg_database

    with pg_database("mailpipe_t") as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of its own for this run."""
    from tests.harness.services import rabbit_vhost

    with rabbit_vhost() as url:
        yield url


@pytest.fixture
def use_pg(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's settings at the run's PostgreSQL database."""
    monkeypatch.setenv("MAILPIPE_DATABASE_URL", pg_url)
    reset_process_state()
    return pg_url
