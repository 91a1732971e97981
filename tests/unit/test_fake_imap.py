"""The in-memory IMAP fake: the same contract as the real client on Dovecot, plus its own knobs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline.clients.imap import CONNECTION_LOST, ImapError, ImapErrorKind, ImapSession, ImapSettings
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.imap_contract import ImapSessionContract, ImapStateContract, mail


class FakeBackend:
    """A FakeImapServer seen through fake_connect, with the contract's scenario helpers."""

    def __init__(self, server: FakeImapServer) -> None:
        self.server = server

    def settings(self, **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": "imap.example.test",
            "port": 993,
            "security": "ssl",
            "username": self.server.username,
            "password": self.server.password,
        }
        values.update(overrides)
        return ImapSettings(**values)

    def connect(self, **overrides: Any) -> ImapSession:
        return fake_connect(self.server)(self.settings(**overrides))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)


@pytest.fixture
def server() -> FakeImapServer:
    return FakeImapServer()


@pytest.fixture
def backend(server: FakeImapServer) -> FakeBackend:
    return FakeBackend(server)


class TestFakeState(ImapStateContract):
    """Flags both ways, CHANGEDSINCE/VANISHED and IDLE, on the fake."""


class TestFakeSession(ImapSessionContract):
    """The shared ImapSession behaviour, on the fake."""


def test_fake_sessions_satisfy_the_protocol(backend: FakeBackend) -> None:
    assert isinstance(backend.connect(), ImapSession)


@pytest.mark.parametrize("kind", list(ImapErrorKind))
def test_connect_failures_of_every_kind_can_be_injected(backend: FakeBackend, kind: ImapErrorKind) -> None:
    backend.server.fail(kind)
    with pytest.raises(ImapError) as caught:
        backend.connect()
    assert caught.value.kind is kind
    backend.connect().close()


def test_injected_timeout_mid_session_kills_the_session(backend: FakeBackend) -> None:
    backend.server.seed("INBOX", mail(1))
    session = backend.connect()
    session.select("INBOX")
    backend.server.fail("timeout", op="fetch")
    with pytest.raises(ImapError) as first:
        list(session.fetch_peek([1]))
    assert first.value.kind is ImapErrorKind.TIMEOUT
    with pytest.raises(ImapError, match=re.escape(CONNECTION_LOST)) as second:
        session.search_uids()
    assert second.value.kind is ImapErrorKind.CONNECT


def test_injected_protocol_error_leaves_the_session_usable(backend: FakeBackend) -> None:
    session = backend.connect()
    backend.server.fail("protocol", op="status", message="[UNAVAILABLE] Try again later")
    with pytest.raises(ImapError) as caught:
        session.status("INBOX")
    assert caught.value.code == "UNAVAILABLE"
    assert session.status("INBOX").messages == 0


def test_wrong_token_and_wrong_user_are_auth_errors() -> None:
    server = FakeImapServer("bob@example.test", password=None, oauth_token="token-bob-1")
    backend = FakeBackend(server)
    backend.connect(password=None, oauth_token="token-bob-1").close()
    wrong_token = {"password": None, "oauth_token": "token-wrong"}
    wrong_user = {"username": "eve@example.test", "password": None, "oauth_token": "token-bob-1"}
    for overrides in (wrong_token, wrong_user):
        with pytest.raises(ImapError) as caught:
            backend.connect(**overrides)
        assert caught.value.kind is ImapErrorKind.AUTH


def test_outage_breaks_open_sessions_and_recovery_keeps_the_mail(backend: FakeBackend) -> None:
    uids = backend.server.seed("INBOX", [mail(1), mail(2)])
    session = backend.connect()
    session.select("INBOX")
    backend.server.stop()
    with pytest.raises(ImapError, match="shutting down") as first:
        session.search_uids()
    assert first.value.kind is ImapErrorKind.CONNECT
    with pytest.raises(ImapError, match=re.escape(CONNECTION_LOST)):
        session.status("INBOX")
    session.close()
    with pytest.raises(ImapError) as refused:
        backend.connect()
    assert refused.value.kind is ImapErrorKind.CONNECT
    backend.server.start()
    again = backend.connect()
    again.select("INBOX")
    assert [m.raw for m in again.fetch_peek(uids)] == [mail(1), mail(2)]


def test_connection_cap_gives_limit_until_a_session_closes() -> None:
    backend = FakeBackend(FakeImapServer(max_connections=1))
    first = backend.connect()
    with pytest.raises(ImapError) as caught:
        backend.connect()
    assert (caught.value.kind, caught.value.code) == (ImapErrorKind.PROTOCOL, "LIMIT")
    first.close()
    backend.connect().close()


def test_gmail_mode_has_all_mail_and_message_ids() -> None:
    server = FakeImapServer(gmail=True)
    backend = FakeBackend(server)
    [uid] = server.seed("[Gmail]/All Mail", mail(1), gm_msgid=1234567890123, gm_thrid=42)
    [other] = server.seed("INBOX", mail(2))
    session = backend.connect()
    assert "X-GM-EXT-1" in session.capabilities
    folders = {f.name: f.special_use for f in session.list_folders()}
    assert folders["[Gmail]/All Mail"] == frozenset({"\\All"})
    assert folders["[Gmail]/Sent Mail"] == frozenset({"\\Sent"})
    session.select("[Gmail]/All Mail")
    [message] = list(session.fetch_peek([uid]))
    assert (message.gm_msgid, message.gm_thrid) == (1234567890123, 42)
    session.select("INBOX")
    [generated] = list(session.fetch_peek([other]))
    assert generated.gm_msgid is not None and generated.gm_thrid == generated.gm_msgid


def test_without_uidplus_or_condstore_the_extras_are_none() -> None:
    backend = FakeBackend(FakeImapServer(capabilities={"IMAP4REV1", "SPECIAL-USE"}))
    session = backend.connect()
    assert session.append("Sent", mail(1), ["\\Seen"], None) is None
    assert session.status("Sent").highestmodseq is None


def test_log_records_commands_so_tests_can_prove_sync_wrote_nothing(backend: FakeBackend) -> None:
    [uid] = backend.server.seed("INBOX", mail(1))
    session = backend.connect()
    session.select("INBOX")
    list(session.fetch_peek([uid]))
    assert [op for op, _folder, _detail in backend.server.log] == ["select", "fetch"]
    assert backend.server.flags("INBOX") == {uid: frozenset()}


def test_keywords_are_case_insensitive_and_system_flags_canonical(backend: FakeBackend) -> None:
    [uid] = backend.server.seed("INBOX", mail(1), flags=["$MyTag", "\\seen"])
    session = backend.connect()
    session.add_flags("INBOX", [uid], ["$mytag", "\\ANSWERED"])
    assert backend.server.flags("INBOX") == {uid: frozenset({"$MyTag", "\\Seen", "\\Answered"})}


def test_creating_a_noselect_parent_makes_it_selectable(server: FakeImapServer) -> None:
    server.create_folder("Clients/Acme")
    session = FakeBackend(server).connect()
    assert "Clients" not in {f.name for f in session.list_folders()}
    server.create_folder("Clients")
    assert session.select("Clients").messages == 0


def test_unknown_fail_op_is_rejected(server: FakeImapServer) -> None:
    with pytest.raises(ValueError):
        server.fail("timeout", op="fetchh")
