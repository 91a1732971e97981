"""The real IMAP client against a local Dovecot: the shared contract plus transport and error kinds."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import pytest

from pipeline.clients.imap import (
    CONNECTION_LOST,
    ImapError,
    ImapErrorKind,
    ImapSession,
    ImapSettings,
    connect,
)
from tests.harness.dovecot import Dovecot
from tests.harness.fixtures import ALICE_EMAIL, ALICE_PASSWORD
from tests.harness.imap_contract import ImapSessionContract, ImapStateContract, mail
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


class DovecotBackend:
    """One fresh user on the session Dovecot, seen through the real client."""

    def __init__(self, server: Dovecot, user: str, password: str, tls: ssl.SSLContext) -> None:
        self.server, self.user, self.password, self.tls = server, user, password, tls

    def settings(self, **overrides: Any) -> ImapSettings:
        """STARTTLS settings for this user, with overrides."""
        values: dict[str, Any] = {
            "host": self.server.host,
            "port": self.server.port,
            "security": "starttls",
            "username": self.user,
            "password": self.password,
            "ssl_context": self.tls,
            "timeout": 5.0,
        }
        values.update(overrides)
        return ImapSettings(**values)

    def connect(self, **overrides: Any) -> ImapSession:
        return connect(self.settings(**overrides))

    def seed(
        self, folder: str, messages: bytes | Iterable[bytes], flags: Iterable[str] | None = None, when: datetime | None = None
    ) -> list[int]:
        return self.server.seed(self.user, folder, messages, flags, when)

    def flags(self, folder: str) -> dict[int, frozenset[str]]:
        return self.server.flags(self.user, folder)

    def status(self, folder: str) -> dict[str, int]:
        return self.server.status(self.user, folder)

    def set_uidvalidity(self, folder: str, value: int) -> None:
        self.server.set_uidvalidity(self.user, folder, value)

    def expunge(self, folder: str, uid: int) -> None:
        self.server.expunge(self.user, folder, uid)

    def add_flags(self, folder: str, uid: int, flags: Iterable[str]) -> None:
        self.server.add_flags(self.user, folder, uid, flags)

    def create_folder(self, name: str, special_use: str | None = None) -> None:
        self.server.create_folder(self.user, name, special_use)

    def remove_flags(self, folder: str, uid: int, flags: Iterable[str]) -> None:
        self.server.remove_flags(self.user, folder, uid, flags)

    def kick(self) -> None:
        self.server.kick(self.user)


@pytest.fixture
def backend(dovecot: Dovecot, dovecot_user: tuple[str, str], tls_context_for_tests: ssl.SSLContext) -> DovecotBackend:
    return DovecotBackend(dovecot, *dovecot_user, tls_context_for_tests)


class TestDovecotState(ImapStateContract):
    """Flags both ways, CHANGEDSINCE/VANISHED and IDLE, on Dovecot."""


class TestDovecotSession(ImapSessionContract):
    """The shared ImapSession behaviour, on Dovecot 2.3."""


@pytest.mark.parametrize("security,use_tls_port", [("none", False), ("starttls", False), ("ssl", True)])
def test_login_over_each_transport(backend: DovecotBackend, security: str, use_tls_port: bool) -> None:
    port = backend.server.tls_port if use_tls_port else backend.server.port
    session = backend.connect(security=security, port=port)
    try:
        assert session.status("INBOX").messages == 0
    finally:
        session.close()


def test_non_ascii_password_logs_in_with_authenticate_plain(backend: DovecotBackend) -> None:
    backend.server.add_user("umlaut@example.test", "pässwört-ß")
    session = backend.connect(username="umlaut@example.test", password="pässwört-ß")
    session.close()
    with pytest.raises(ImapError) as caught:
        backend.connect(username="umlaut@example.test", password="pässwört-x")
    assert caught.value.kind is ImapErrorKind.AUTH


def test_xoauth2_token_login_and_bad_token(backend: DovecotBackend) -> None:
    backend.server.add_user("oauth-user@example.test", "token-abc-123")
    session = backend.connect(username="oauth-user@example.test", password=None, oauth_token="token-abc-123")
    session.close()
    with pytest.raises(ImapError) as caught:
        backend.connect(username="oauth-user@example.test", password=None, oauth_token="token-wrong-456")
    assert caught.value.kind is ImapErrorKind.AUTH
    assert "token-wrong-456" not in str(caught.value)


def test_closed_port_is_a_connect_error(backend: DovecotBackend) -> None:
    with pytest.raises(ImapError) as caught:
        backend.connect(port=free_port(), security="none")
    assert caught.value.kind is ImapErrorKind.CONNECT


def test_unresolvable_host_is_a_dns_error(backend: DovecotBackend) -> None:
    with pytest.raises(ImapError) as caught:
        backend.connect(host="nonexistent.invalid")
    assert caught.value.kind is ImapErrorKind.DNS


def test_tls_to_the_plain_port_is_a_tls_error(backend: DovecotBackend) -> None:
    with pytest.raises(ImapError) as caught:
        backend.connect(security="ssl", port=backend.server.port)
    assert caught.value.kind is ImapErrorKind.TLS


@pytest.mark.parametrize("security,use_tls_port", [("ssl", True), ("starttls", False)])
def test_untrusted_certificate_is_a_tls_error(backend: DovecotBackend, security: str, use_tls_port: bool) -> None:
    port = backend.server.tls_port if use_tls_port else backend.server.port
    with pytest.raises(ImapError) as caught:
        backend.connect(security=security, port=port, ssl_context=ssl.create_default_context())
    assert caught.value.kind is ImapErrorKind.TLS
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message


@pytest.mark.parametrize("security", ["none", "ssl"])
def test_server_that_never_answers_is_a_timeout(backend: DovecotBackend, security: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(ImapError) as caught:
            backend.connect(host="127.0.0.1", port=silent.getsockname()[1], security=security, timeout=0.3)
    assert caught.value.kind is ImapErrorKind.TIMEOUT


def test_connection_cap_is_a_protocol_error_with_limit_code(test_certs: tuple[Any, Any]) -> None:
    with Dovecot(*test_certs, max_userip_connections=1) as server:
        server.add_user(ALICE_EMAIL, ALICE_PASSWORD)
        settings = ImapSettings(server.host, server.port, "none", ALICE_EMAIL, password=ALICE_PASSWORD, timeout=5)
        first = connect(settings)
        try:
            with pytest.raises(ImapError) as caught:
                connect(settings)
            assert caught.value.kind is ImapErrorKind.PROTOCOL
            assert caught.value.code == "LIMIT"
        finally:
            first.close()


def test_outage_breaks_open_sessions_and_recovery_keeps_the_mail(
    fresh_dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext
) -> None:
    settings = ImapSettings(
        fresh_dovecot.host, fresh_dovecot.port, "starttls", ALICE_EMAIL, password=ALICE_PASSWORD,
        ssl_context=tls_context_for_tests, timeout=5,
    )
    uids = fresh_dovecot.seed(ALICE_EMAIL, "INBOX", [mail(1), mail(2)])
    session = connect(settings)
    session.select("INBOX")
    fresh_dovecot.stop()
    with pytest.raises(ImapError) as first:
        session.search_uids()
    assert first.value.kind is ImapErrorKind.CONNECT
    with pytest.raises(ImapError, match=re.escape(CONNECTION_LOST)) as second:
        session.status("INBOX")
    assert second.value.kind is ImapErrorKind.CONNECT
    session.close()
    with pytest.raises(ImapError) as refused:
        connect(settings)
    assert refused.value.kind is ImapErrorKind.CONNECT
    fresh_dovecot.start()
    again = connect(settings)
    try:
        again.select("INBOX")
        assert [m.raw for m in again.fetch_peek(uids)] == [mail(1), mail(2)]
    finally:
        again.close()


@pytest.fixture
def alice_session(dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext) -> Iterator[ImapSession]:
    session = connect(
        ImapSettings(dovecot.host, dovecot.tls_port, "ssl", ALICE_EMAIL, password=ALICE_PASSWORD,
                     ssl_context=tls_context_for_tests, timeout=5)
    )
    yield session
    session.close()


def test_session_dovecot_serves_alice(alice_session: ImapSession) -> None:
    names = {f.name for f in alice_session.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash"} <= names
