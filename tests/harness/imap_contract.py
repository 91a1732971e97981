"""Behaviour every ImapSession must show, run against Dovecot and against the in-memory fake.

A test module subclasses ``ImapSessionContract`` and provides a ``backend`` fixture: something
that opens sessions and stages server-side scenarios (the Dovecot harness or FakeImapServer).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any, Protocol

import pytest

from pipeline.clients.imap import (
    NO_FOLDER_SELECTED,
    SESSION_CLOSED,
    FolderInfo,
    FolderStatus,
    ImapError,
    ImapErrorKind,
    ImapSession,
    MailboxEvent,
)

__all__ = ["ImapBackend", "ImapSessionContract", "mail"]


class ImapBackend(Protocol):
    """A server under test: open sessions, stage and inspect mailbox state."""

    def connect(self, **overrides: Any) -> ImapSession:
        """Log in (overrides go to ImapSettings, e.g. password or fetch_batch)."""
        ...

    def seed(
        self, folder: str, messages: bytes | Iterable[bytes], flags: Iterable[str] | None = None, when: datetime | None = None
    ) -> list[int]:
        """Store messages and return their UIDs."""
        ...

    def flags(self, folder: str) -> dict[int, frozenset[str]]:
        """UID -> flags, as the server has them."""
        ...

    def status(self, folder: str) -> dict[str, int]:
        """messages, uidnext, uidvalidity, highestmodseq."""
        ...

    def set_uidvalidity(self, folder: str, value: int) -> None:
        """Force a UIDVALIDITY change."""
        ...

    def expunge(self, folder: str, uid: int) -> None:
        """Expunge as another client."""
        ...

    def add_flags(self, folder: str, uid: int, flags: Iterable[str]) -> None:
        """Flag as another client."""
        ...

    def create_folder(self, name: str, special_use: str | None = None) -> None:
        """Create a mailbox."""
        ...

    def remove_flags(self, folder: str, uid: int, flags: Iterable[str]) -> None:
        """Unflag as another client."""
        ...

    def kick(self) -> None:
        """Disconnect the user's sessions (doveadm kick)."""
        ...


def mail(n: int, subject: str | None = None, message_id: str | None = None, eol: bytes = b"\r\n") -> bytes:
    """A small RFC 5322 message numbered n."""
    lines = [
        b"From: Sender <sender@example.test>",
        b"To: alice@example.test",
        f"Subject: {subject or f'message {n}'}".encode(),
        f"Message-ID: {message_id or f'<msg-{n}@example.test>'}".encode(),
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000",
        b"",
        f"Body of message {n}.".encode(),
        b"",
    ]
    return eol.join(lines)


JAN = datetime(2024, 1, 1, 9, 30, tzinfo=UTC)
MAR = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
JUN = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)


class ImapSessionContract:
    """The shared behaviour; subclasses supply the ``backend`` fixture."""

    @pytest.fixture
    def session(self, backend: ImapBackend) -> Iterator[ImapSession]:
        opened = backend.connect()
        yield opened
        opened.close()

    def test_capabilities_are_upper_case_and_include_uidplus(self, session: ImapSession) -> None:
        assert {"IMAP4REV1", "UIDPLUS", "CONDSTORE"} <= session.capabilities
        assert all(c == c.upper() for c in session.capabilities)

    def test_list_folders_shows_special_use_and_hides_noselect_parents(self, backend: ImapBackend) -> None:
        backend.create_folder("Archive", "\\Archive")
        backend.seed("Projects/2024", mail(1))
        session = backend.connect()  # after create_folder: Dovecot applies special-use to new sessions
        try:
            folders = {f.name: f for f in session.list_folders()}
        finally:
            session.close()
        assert folders["Sent"] == FolderInfo("Sent", frozenset({"\\Sent"}))
        assert folders["Drafts"].special_use == frozenset({"\\Drafts"})
        assert folders["Trash"].special_use == frozenset({"\\Trash"})
        assert folders["Archive"].special_use == frozenset({"\\Archive"})
        assert folders["INBOX"].special_use == frozenset()
        assert "Projects/2024" in folders
        assert "Projects" not in folders

    def test_folder_names_with_spaces_and_non_ascii_round_trip(self, backend: ImapBackend) -> None:
        for name in ("Sent Items", "Entwürfe/Büro"):
            backend.create_folder(name)
        session = backend.connect()
        try:
            names = {f.name for f in session.list_folders()}
            assert {"Sent Items", "Entwürfe/Büro"} <= names
            for name in ("Sent Items", "Entwürfe/Büro"):
                appended = session.append(name, mail(1), [], None)
                assert appended is not None
                assert session.select(name).messages == 1
                assert session.search_uids() == [appended[1]]
                assert backend.status(name)["messages"] == 1
        finally:
            session.close()

    def test_large_message_is_fetched_whole(self, backend: ImapBackend, session: ImapSession) -> None:
        body = b"".join(b"line %07d of a large attachment-like body\r\n" % n for n in range(60_000))
        raw = mail(1).replace(b"Body of message 1.\r\n", body)
        assert len(raw) > 2_500_000
        [uid] = backend.seed("INBOX", raw)
        session.select("INBOX")
        [message] = list(session.fetch_peek([uid]))
        assert message.raw == raw
        assert message.size == len(raw)

    def test_status_reports_the_servers_numbers(self, backend: ImapBackend, session: ImapSession) -> None:
        backend.seed("INBOX", [mail(1), mail(2), mail(3)])
        server = backend.status("INBOX")
        assert session.status("INBOX") == FolderStatus(
            uidvalidity=server["uidvalidity"], uidnext=4, messages=3, highestmodseq=server["highestmodseq"]
        )

    def test_select_reports_the_same_numbers_as_status(self, backend: ImapBackend, session: ImapSession) -> None:
        backend.seed("INBOX", [mail(1), mail(2)])
        assert session.select("INBOX") == session.status("INBOX")
        assert session.select("inbox", readonly=False).messages == 2

    def test_missing_folder_is_a_protocol_error_and_deselects(self, session: ImapSession) -> None:
        session.select("INBOX")
        with pytest.raises(ImapError) as selecting:
            session.select("Nope")
        with pytest.raises(ImapError) as asking:
            session.status("Nope")
        for caught in (selecting, asking):
            assert caught.value.kind is ImapErrorKind.PROTOCOL
            assert "doesn't exist" in caught.value.message
        with pytest.raises(ImapError, match=re.escape(NO_FOLDER_SELECTED)):
            session.search_uids()

    def test_fetch_and_search_need_a_selected_folder(self, backend: ImapBackend, session: ImapSession) -> None:
        backend.seed("INBOX", mail(1))
        with pytest.raises(ImapError) as caught:
            list(session.fetch_peek([1]))
        assert caught.value.kind is ImapErrorKind.PROTOCOL
        assert list(session.fetch_peek([])) == []

    def test_search_uids_by_date_and_uid(self, backend: ImapBackend, session: ImapSession) -> None:
        jan = backend.seed("INBOX", mail(1), when=JAN)
        mar = backend.seed("INBOX", mail(2), when=MAR)
        jun = backend.seed("INBOX", mail(3), when=JUN)
        uids = jan + mar + jun
        session.select("INBOX")
        assert session.search_uids() == uids
        assert session.search_uids(since=date(2024, 2, 15)) == mar + jun
        assert session.search_uids(since=date(2024, 3, 1)) == mar + jun
        assert session.search_uids(uid_from=mar[0]) == mar + jun
        assert session.search_uids(uid_from=jun[0] + 10) == []
        assert session.search_uids(since=date(2024, 1, 1), uid_from=jun[0]) == jun
        assert session.search_uids(since=date(2025, 1, 1)) == []

    def test_fetch_returns_exact_bytes_flags_date_and_size(self, backend: ImapBackend, session: ImapSession) -> None:
        raw = mail(7, subject="Quarterly numbers")
        [uid] = backend.seed("INBOX", raw, flags=["\\Flagged", "$Work"], when=MAR)
        session.select("INBOX")
        [message] = list(session.fetch_peek([uid]))
        assert message.uid == uid
        assert message.raw == raw
        assert message.size == len(raw)
        assert message.flags == frozenset({"\\Flagged", "$Work"})
        assert message.internaldate == MAR
        assert message.gm_msgid is None and message.gm_thrid is None

    def test_fetch_never_changes_flags_on_the_server(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2)]) + backend.seed("INBOX", mail(3), flags=["\\Flagged"])
        before = backend.flags("INBOX")
        for readonly in (True, False):
            session.select("INBOX", readonly=readonly)
            assert [m.uid for m in session.fetch_peek(uids)] == uids
        assert backend.flags("INBOX") == before
        assert all("\\Seen" not in flags for flags in backend.flags("INBOX").values())

    def test_fetch_batches_orders_and_skips_missing_uids(self, backend: ImapBackend) -> None:
        uids = backend.seed("INBOX", [mail(n) for n in range(1, 6)])
        session = backend.connect(fetch_batch=2)
        try:
            session.select("INBOX")
            fetched = list(session.fetch_peek([uids[4], uids[0], uids[2], 999, uids[2]]))
            assert [m.uid for m in fetched] == [uids[0], uids[2], uids[4]]
            assert [m.raw for m in fetched] == [mail(1), mail(3), mail(5)]
        finally:
            session.close()

    def test_bare_lf_messages_come_back_with_crlf(self, backend: ImapBackend, session: ImapSession) -> None:
        [uid] = backend.seed("INBOX", mail(1, eol=b"\n"))
        session.select("INBOX")
        [message] = list(session.fetch_peek([uid]))
        assert message.raw == mail(1)

    def test_append_returns_appenduid_and_keeps_flags_and_date(
        self, backend: ImapBackend, session: ImapSession
    ) -> None:
        result = session.append("Sent", mail(1, eol=b"\n"), ["\\Seen"], MAR)
        status = backend.status("Sent")
        assert result == (status["uidvalidity"], status["uidnext"] - 1)
        assert result is not None
        uid = result[1]
        assert backend.flags("Sent") == {uid: frozenset({"\\Seen"})}
        session.select("Sent")
        [message] = list(session.fetch_peek([uid]))
        assert message.raw == mail(1)
        assert message.internaldate == MAR

    def test_append_to_a_missing_folder_says_trycreate(self, session: ImapSession) -> None:
        with pytest.raises(ImapError) as caught:
            session.append("Nope", mail(1), [], None)
        assert caught.value.kind is ImapErrorKind.PROTOCOL
        assert caught.value.code == "TRYCREATE"

    def test_search_header_finds_message_id_and_mime_encoded_subject(self, session: ImapSession) -> None:
        first = session.append("Sent", mail(1, message_id="<id-1@example.test>"), ["\\Seen"], None)
        second = session.append("Sent", mail(2, subject="=?utf-8?q?Caf=C3=A9_order?="), ["\\Seen"], None)
        assert first is not None and second is not None
        assert session.search_header("Sent", "Message-ID", "<id-1@example.test>") == [first[1]]
        assert session.search_header("Sent", "message-id", "<ID-1@example.test>") == [first[1]]
        assert session.search_header("Sent", "Subject", "Café") == [second[1]]
        assert session.search_header("Sent", "Message-ID", "<unknown@example.test>") == []

    def test_folder_level_calls_keep_the_callers_selection(self, backend: ImapBackend, session: ImapSession) -> None:
        inbox = backend.seed("INBOX", [mail(1), mail(2)])
        [sent] = backend.seed("Sent", mail(3, message_id="<sent-3@example.test>"))
        session.select("INBOX")
        assert session.search_header("Sent", "Message-ID", "<sent-3@example.test>") == [sent]
        session.add_flags("Sent", [sent], ["$Filed"])
        assert session.search_uids() == inbox
        assert [m.raw for m in session.fetch_peek(inbox)] == [mail(1), mail(2)]

    def test_add_flags_changes_only_the_given_messages(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2)])
        session.add_flags("INBOX", [uids[0]], ["\\Answered", "$Done"])
        session.add_flags("INBOX", [], ["\\Seen"])
        assert backend.flags("INBOX") == {uids[0]: frozenset({"\\Answered", "$Done"}), uids[1]: frozenset()}
        with pytest.raises(ValueError):
            session.add_flags("INBOX", [uids[0]], ["\\Recent"])

    def test_changes_by_other_clients_are_visible(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2), mail(3)])
        before = session.status("INBOX")
        backend.add_flags("INBOX", uids[0], ["\\Seen"])
        backend.expunge("INBOX", uids[1])
        after = session.status("INBOX")
        assert (after.messages, after.uidnext) == (2, before.uidnext)
        assert after.highestmodseq is not None and before.highestmodseq is not None
        assert after.highestmodseq > before.highestmodseq
        session.select("INBOX")
        assert session.search_uids() == [uids[0], uids[2]]
        assert [m.flags for m in session.fetch_peek(uids)] == [frozenset({"\\Seen"}), frozenset()]

    def test_uidvalidity_change_shows_in_status(self, backend: ImapBackend, session: ImapSession) -> None:
        backend.seed("INBOX", mail(1))
        old = session.status("INBOX").uidvalidity
        backend.set_uidvalidity("INBOX", old + 1000)
        assert session.status("INBOX").uidvalidity == old + 1000

    def test_wrong_password_is_an_auth_error_that_hides_the_secret(self, backend: ImapBackend) -> None:
        with pytest.raises(ImapError) as caught:
            backend.connect(password="not-the-password-xyz")
        assert caught.value.kind is ImapErrorKind.AUTH
        assert caught.value.code == "AUTHENTICATIONFAILED"
        assert "not-the-password-xyz" not in str(caught.value)

    def test_closed_session_refuses_commands(self, backend: ImapBackend) -> None:
        session = backend.connect()
        session.close()
        session.close()
        with pytest.raises(ImapError, match=re.escape(SESSION_CLOSED)) as caught:
            session.status("INBOX")
        assert caught.value.kind is ImapErrorKind.PROTOCOL


def _events_until(session: ImapSession, wanted: str, timeout: float = 10.0) -> list[MailboxEvent]:
    """idle_wait until an event of kind ``wanted`` has come (every event seen is returned)."""
    import time

    seen: list[MailboxEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += session.idle_wait(max(0.05, deadline - time.monotonic()))
        if any(e.kind == wanted for e in seen):
            return seen
    raise AssertionError(f"no {wanted} event within {timeout}s; got {seen}")


class ImapStateContract:
    """Flags both ways, CHANGEDSINCE/VANISHED and IDLE: the calls real-time sync is built on
    (run against servers that offer CONDSTORE, QRESYNC and IDLE)."""

    @pytest.fixture
    def session(self, backend: ImapBackend) -> Iterator[ImapSession]:
        opened = backend.connect()
        yield opened
        opened.close()

    def test_qresync_is_enabled(self, session: ImapSession) -> None:
        assert {"CONDSTORE", "QRESYNC"} <= session.enabled

    def test_remove_flags_changes_only_the_given_messages(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2)], flags=["\\Seen", "\\Flagged"])
        session.remove_flags("INBOX", [uids[0]], ["\\Seen"])
        session.remove_flags("INBOX", [], ["\\Seen"])
        assert backend.flags("INBOX") == {uids[0]: frozenset({"\\Flagged"}), uids[1]: frozenset({"\\Seen", "\\Flagged"})}

    def test_fetch_flags_window_lists_every_uid_from_the_start(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2), mail(3)])
        backend.add_flags("INBOX", uids[1], ["\\Seen"])
        session.select("INBOX")
        window = session.fetch_flags(uid_from=uids[1])
        assert window.complete and window.flags == {uids[1]: frozenset({"\\Seen"}), uids[2]: frozenset()}
        assert session.fetch_flags(uid_from=uids[2] + 5).flags == {}

    def test_changedsince_reports_flag_changes_and_vanished_uids(self, backend: ImapBackend, session: ImapSession) -> None:
        uids = backend.seed("INBOX", [mail(1), mail(2), mail(3)])
        modseq = session.select("INBOX").highestmodseq
        assert modseq is not None
        backend.add_flags("INBOX", uids[0], ["\\Seen"])
        backend.expunge("INBOX", uids[2])
        session.select("INBOX")
        changes = session.fetch_flags(changedsince=modseq)
        assert not changes.complete
        assert changes.flags == {uids[0]: frozenset({"\\Seen"})}
        assert changes.vanished == {uids[2]}
        assert changes.highestmodseq is not None and changes.highestmodseq > modseq

    def test_idle_reports_new_mail_flag_changes_and_expunges(self, backend: ImapBackend, session: ImapSession) -> None:
        [first] = backend.seed("INBOX", mail(1))
        session.select("INBOX")
        session.idle_start()
        assert session.idle_wait(0.2) == []
        backend.seed("INBOX", mail(2))
        assert any(e.kind == "exists" and e.number == 2 for e in _events_until(session, "exists"))
        backend.add_flags("INBOX", first, ["\\Seen"])
        changed = [e for e in _events_until(session, "flags") if e.kind == "flags"]
        assert changed[-1].uids == (first,) and changed[-1].flags is not None and "\\Seen" in changed[-1].flags
        backend.expunge("INBOX", first)
        gone = [e for e in _events_until(session, "vanished") if e.kind == "vanished"]
        assert gone[-1].uids == (first,)
        session.idle_done()
        assert session.search_uids() == [first + 1]

    def test_a_kicked_idle_session_fails_with_a_connect_error(self, backend: ImapBackend, session: ImapSession) -> None:
        session.select("INBOX")
        session.idle_start()
        backend.kick()
        with pytest.raises(ImapError) as caught:
            _events_until(session, "never")
        assert caught.value.kind is ImapErrorKind.CONNECT
        with pytest.raises(ImapError):
            session.status("INBOX")
