"""Fixtures for the integration tests: the real pipeline on PostgreSQL + RabbitMQ with an
in-process Dramatiq worker, and Dovecot's certificate trusted the way production trusts CAs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker

from tests.conftest import reset_process_state
from tests.harness.wait import wait_until

__all__ = ["live", "process_env", "wait_until"]


@pytest.fixture
def live(fresh_pg_url: str, amqp_url: str, test_certs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Settings on a fresh migrated PostgreSQL database and the run's RabbitMQ vhost, and a
    4-thread worker consuming from RabbitMQ in this process."""
    import pipeline.actors  # noqa: F401
    from ops.migrate import upgrade
    from pipeline.broker import build_broker, use_broker

    upgrade(fresh_pg_url)
    monkeypatch.setenv("MAILPIPE_DATABASE_URL", fresh_pg_url)
    monkeypatch.setenv("MAILPIPE_BROKER_URL", amqp_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(test_certs[0]))
    monkeypatch.setenv("MAILPIPE_SYNC_RATE_PER_HOUR", "1000000")  # rate limiting has its own tests
    from pipeline.flows.connections import tls_context

    tls_context.cache_clear()
    reset_process_state()
    broker = build_broker(amqp_url)
    for q in broker.get_declared_queues():
        broker.flush(q)
    use_broker(broker)
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        yield {"pg_url": fresh_pg_url, "amqp_url": amqp_url, "broker": broker, "worker": worker}
    finally:
        worker.stop(timeout=10_000)
        broker.close()
        tls_context.cache_clear()


def process_env(pg_url: str, amqp_url: str, tmp_path: Path, cert: Path, monkeypatch: pytest.MonkeyPatch,
                **extra: str) -> tuple[dict[str, str], Any]:
    """Settings shared by this process and the `mailpipe worker` processes a test starts: a migrated
    database, the run's RabbitMQ vhost (queues emptied), a key and a storage directory of its own.
    Returns the environment for the processes and this process's broker (no worker here)."""
    from ops.crypto import generate_key_entry
    from ops.migrate import upgrade
    from pipeline.broker import build_broker, use_broker
    from pipeline.flows.connections import tls_context

    upgrade(pg_url)
    env = {"MAILPIPE_DATABASE_URL": pg_url, "MAILPIPE_BROKER_URL": amqp_url, "MAILPIPE_SECRET_KEYS": generate_key_entry("proc"),
           "MAILPIPE_STORAGE_URL": f"file://{tmp_path / 'store'}", "SSL_CERT_FILE": str(cert), **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    tls_context.cache_clear()
    reset_process_state()
    broker = use_broker(build_broker(amqp_url))
    for q in broker.get_declared_queues():
        broker.flush(q)
    return env, broker
