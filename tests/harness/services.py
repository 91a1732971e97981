"""The machine's PostgreSQL and RabbitMQ, isolated per test run: a fresh database and a fresh
vhost, created on demand and dropped at the end. Started if they are down."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

__all__ = ["PG_ADMIN_DSN", "ensure_postgres", "ensure_rabbitmq", "pg_database", "rabbit_vhost"]

PG_HOST = os.environ.get("MAILPIPE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MAILPIPE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MAILPIPE_TEST_PG_USER", "postgres")
PG_ADMIN_DSN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
RABBIT_HOST = os.environ.get("MAILPIPE_TEST_RABBIT_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("MAILPIPE_TEST_RABBIT_PORT", "5672"))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(0.5)
    return False


def ensure_postgres() -> None:
    """Start the local cluster if nothing answers on the PostgreSQL port."""
    if _port_open(PG_HOST, PG_PORT):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        raise RuntimeError("PostgreSQL is not installed and not reachable on 127.0.0.1:5432")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False)
    if not _wait(PG_HOST, PG_PORT, 30):
        raise RuntimeError("PostgreSQL did not start on 127.0.0.1:5432")


def ensure_rabbitmq() -> None:
    """Start RabbitMQ (or just its app) if nothing answers on the AMQP port."""
    if _port_open(RABBIT_HOST, RABBIT_PORT):
        return
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("RabbitMQ is not installed and not reachable on 127.0.0.1:5672")
    if subprocess.run(["rabbitmqctl", "-q", "start_app"], capture_output=True).returncode != 0:
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
    if not _wait(RABBIT_HOST, RABBIT_PORT, 60):
        raise RuntimeError("RabbitMQ did not start on 127.0.0.1:5672")


@contextmanager
def pg_database(prefix: str = "mailpipe_test") -> Iterator[str]:
    """A new empty database; yields its SQLAlchemy URL and drops it afterwards."""
    ensure_postgres()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def rabbit_vhost(prefix: str = "mailpipe_test") -> Iterator[str]:
    """A new vhost for guest; yields its amqp:// URL and deletes it (and its queues) afterwards."""
    ensure_rabbitmq()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True)
    try:
        yield f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, capture_output=True)
