"""Pytest fixtures for the loopback Dovecot and SMTP test servers (loaded as a plugin by conftest)."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.certs import make_self_signed
from tests.harness.dovecot import Dovecot
from tests.harness.smtp import SmtpServer

__all__ = [
    "ALICE_EMAIL",
    "ALICE_PASSWORD",
    "ALICE_TOKEN",
    "dovecot",
    "dovecot_user",
    "fresh_dovecot",
    "smtp_server",
    "test_certs",
    "tls_context_for_tests",
]

ALICE_EMAIL = "alice@example.test"
ALICE_PASSWORD = "alicepass"
ALICE_TOKEN = "fake-oauth-token-alice"


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One self-signed localhost (cert, key) shared by every test server in the session."""
    return make_self_signed(tmp_path_factory.mktemp("tls"))


def _started_dovecot(certs: tuple[Path, Path]) -> Dovecot:
    """A running Dovecot with alice@example.test / alicepass."""
    server = Dovecot(*certs)
    server.add_user(ALICE_EMAIL, ALICE_PASSWORD)
    server.start()
    return server


@pytest.fixture(scope="session")
def dovecot(test_certs: tuple[Path, Path]) -> Iterator[Dovecot]:
    """Session-wide Dovecot; give each test its own user (see dovecot_user) to stay independent."""
    server = _started_dovecot(test_certs)
    yield server
    server.close()


@pytest.fixture
def fresh_dovecot(test_certs: tuple[Path, Path]) -> Iterator[Dovecot]:
    """A Dovecot of the test's own, for stop/restart and config-changing scenarios."""
    server = _started_dovecot(test_certs)
    yield server
    server.close()


@pytest.fixture
def dovecot_user(dovecot: Dovecot) -> tuple[str, str]:
    """A brand-new (email, password) login with an empty mailbox on the session Dovecot."""
    email = f"u{uuid.uuid4().hex[:12]}@example.test"
    password = f"pw-{uuid.uuid4().hex[:12]}"
    dovecot.add_user(email, password)
    return email, password


@pytest.fixture
def smtp_server(test_certs: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """STARTTLS submission server requiring AUTH: alice/alicepass, XOAUTH2 token ALICE_TOKEN."""
    server = SmtpServer(
        users={ALICE_EMAIL: ALICE_PASSWORD},
        tokens={ALICE_EMAIL: ALICE_TOKEN},
        cert_path=test_certs[0],
        key_path=test_certs[1],
    )
    server.start()
    yield server
    server.close()


@pytest.fixture
def tls_context_for_tests(test_certs: tuple[Path, Path]) -> ssl.SSLContext:
    """Client SSL context that trusts the test servers' self-signed certificate."""
    return ssl.create_default_context(cafile=str(test_certs[0]))
