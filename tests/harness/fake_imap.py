"""An in-memory IMAP account and an ImapSession over it that behave like the real client on Dovecot.

``FakeImapServer`` holds folders (UIDVALIDITY, UIDNEXT, MODSEQ, flags, special-use) and has the same
scenario helpers as the Dovecot test harness (seed, flags, status, set_uidvalidity, expunge,
add_flags, create_folder, stop/start) plus ``fail()`` to inject any ImapError kind. ``fake_connect``
returns a ``connect``-compatible factory. Behaviour mirrored from Dovecot 2.3: CRLF line endings,
INTERNALDATE in UTC to the second, case-insensitive keywords, INBOX in any case, \\Noselect folders
unlisted and "doesn't exist", failed APPEND carries [TRYCREATE], [LIMIT] past the connection cap.
"""

from __future__ import annotations

import email.policy
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.parser import BytesHeaderParser

from pipeline.clients.imap import (
    CONNECTION_LOST,
    NO_FOLDER_SELECTED,
    SESSION_CLOSED,
    FetchedMessage,
    FlagChanges,
    FolderInfo,
    FolderStatus,
    ImapError,
    ImapErrorKind,
    ImapSession,
    ImapSettings,
    MailboxEvent,
)
from pipeline.clients.imap_wire import check_header_name, flag_list, response_code

__all__ = [
    "DEFAULT_CAPABILITIES",
    "GMAIL_CAPABILITIES",
    "FakeFolder",
    "FakeImapServer",
    "FakeImapSession",
    "FakeMessage",
    "fake_connect",
]

DEFAULT_CAPABILITIES = frozenset(
    {"IMAP4REV1", "ENABLE", "IDLE", "LITERAL+", "UIDPLUS", "CONDSTORE", "QRESYNC", "MOVE", "SPECIAL-USE", "ESEARCH"}
)
GMAIL_CAPABILITIES = frozenset(
    {"IMAP4REV1", "ENABLE", "IDLE", "LITERAL+", "UIDPLUS", "CONDSTORE", "MOVE", "SPECIAL-USE", "X-GM-EXT-1"}
)
OPERATIONS = (
    "connect", "list_folders", "status", "select", "search_uids", "fetch", "add_flags", "append", "search_header",
    "remove_flags", "fetch_flags", "idle",
)
_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
_DEFAULT_FOLDERS = (("INBOX", ()), ("Sent", ("\\Sent",)), ("Drafts", ("\\Drafts",)), ("Trash", ("\\Trash",)))
_GMAIL_FOLDERS = (
    ("INBOX", ()),
    ("[Gmail]/All Mail", ("\\All",)),
    ("[Gmail]/Drafts", ("\\Drafts",)),
    ("[Gmail]/Important", ("\\Important",)),
    ("[Gmail]/Sent Mail", ("\\Sent",)),
    ("[Gmail]/Spam", ("\\Junk",)),
    ("[Gmail]/Starred", ("\\Flagged",)),
    ("[Gmail]/Trash", ("\\Trash",)),
)
_DEFAULT_MESSAGES = {
    ImapErrorKind.DNS: "[Errno -2] Name or service not known",
    ImapErrorKind.CONNECT: "[Errno 111] Connection refused",
    ImapErrorKind.TLS: "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate",
    ImapErrorKind.AUTH: "[AUTHENTICATIONFAILED] Authentication failed.",
    ImapErrorKind.TIMEOUT: "timed out",
    ImapErrorKind.PROTOCOL: "[UNAVAILABLE] Internal error occurred.",
}
_FATAL_KINDS = frozenset({ImapErrorKind.CONNECT, ImapErrorKind.TIMEOUT, ImapErrorKind.TLS})
_LINE_ENDINGS = re.compile(rb"\r\n|\r(?!\n)|\n")
_uidvalidity_counter = itertools.count(1_700_000_000)
_gm_msgid_counter = itertools.count(1_800_000_000_000_000_000)


@dataclass
class FakeMessage:
    """One stored message."""

    uid: int
    raw: bytes
    flags: set[str]
    internaldate: datetime
    modseq: int
    gm_msgid: int | None = None
    gm_thrid: int | None = None


@dataclass
class FakeFolder:
    """One mailbox with its IMAP counters."""

    name: str
    special_use: frozenset[str]
    selectable: bool
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)
    expunged: dict[int, int] = field(default_factory=dict)  # UID -> MODSEQ of its expunge (for VANISHED)

    def bump(self) -> int:
        """Advance and return the folder's MODSEQ."""
        self.highestmodseq += 1
        return self.highestmodseq

    def canonical_flag(self, flag: str) -> str:
        """System flags in canonical case; keywords case-insensitive, first spelling wins."""
        if flag.lower() in _SYSTEM_FLAGS:
            return _SYSTEM_FLAGS[flag.lower()]
        return self.keywords.setdefault(flag.casefold(), flag)


@dataclass
class _Failure:
    """An injected error for the next `remaining` calls of op."""

    kind: ImapErrorKind
    op: str
    remaining: int
    message: str


class FakeImapServer:
    """One account's mailboxes in memory, with the scenario helpers of the Dovecot harness."""

    def __init__(
        self,
        username: str = "alice@example.test",
        password: str | None = "alicepass",
        oauth_token: str | None = None,
        *,
        gmail: bool = False,
        capabilities: Iterable[str] | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.oauth_token = oauth_token
        self.gmail = gmail
        default_caps = GMAIL_CAPABILITIES if gmail else DEFAULT_CAPABILITIES
        self.capabilities = frozenset(c.upper() for c in (capabilities if capabilities is not None else default_caps))
        self.max_connections = max_connections
        self.running = True
        self.folders: dict[str, FakeFolder] = {}
        self.sessions: list[FakeImapSession] = []
        self.log: list[tuple[str, str | None, object]] = []
        self._failures: list[_Failure] = []
        self.changed = threading.Condition()  # idling sessions wait on it for events
        for name, special_use in _GMAIL_FOLDERS if gmail else _DEFAULT_FOLDERS:
            self.create_folder(name, special_use[0] if special_use else None)

    # -- scenario helpers (same names as tests.harness.dovecot.Dovecot, without the user) -------

    def create_folder(self, name: str, special_use: str | None = None) -> FakeFolder:
        """Create a folder (and \\Noselect parents for "a/b"); set special_use if given."""
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if self._find(parent) is None:
                self.folders[parent] = FakeFolder(parent, frozenset(), False, next(_uidvalidity_counter))
        existing = self._find(name)
        if existing is not None:
            existing.selectable = True
            if special_use is not None:
                existing.special_use = frozenset({special_use})
            return existing
        folder = FakeFolder(
            name, frozenset({special_use}) if special_use else frozenset(), True, next(_uidvalidity_counter)
        )
        self.folders[name] = folder
        return folder

    def folder(self, name: str) -> FakeFolder:
        """The folder called name (INBOX in any case); KeyError if missing."""
        found = self._find(name)
        if found is None:
            raise KeyError(name)
        return found

    def seed(
        self,
        folder: str,
        messages: bytes | Iterable[bytes],
        flags: Iterable[str] | None = None,
        when: datetime | None = None,
        gm_msgid: int | None = None,
        gm_thrid: int | None = None,
    ) -> list[int]:
        """Store messages (folder created if missing) and return their UIDs, like Dovecot.seed."""
        raws = [bytes(messages)] if isinstance(messages, (bytes, bytearray)) else [bytes(m) for m in messages]
        target = self._find(folder) or self.create_folder(folder)
        uids = [self._store(target, raw, flags or (), when, gm_msgid, gm_thrid) for raw in raws]
        if uids:
            self._announce(target, lambda session: [MailboxEvent("exists", number=len(target.messages))])
        return uids

    def flags(self, folder: str) -> dict[int, frozenset[str]]:
        """Map each UID in folder to its flags."""
        return {uid: frozenset(m.flags) for uid, m in self.folder(folder).messages.items()}

    def status(self, folder: str) -> dict[str, int]:
        """messages, uidnext, uidvalidity and highestmodseq, like Dovecot.status."""
        target = self.folder(folder)
        return {
            "messages": len(target.messages),
            "uidnext": target.uidnext,
            "uidvalidity": target.uidvalidity,
            "highestmodseq": target.highestmodseq,
        }

    def set_uidvalidity(self, folder: str, value: int) -> None:
        """Force a new UIDVALIDITY (UIDs stay as they are, as with doveadm mailbox update)."""
        self.folder(folder).uidvalidity = value

    def expunge(self, folder: str, uid: int | Sequence[int]) -> None:
        """Remove messages, as another client would."""
        target = self.folder(folder)
        for one in sorted(_uids(uid), reverse=True):
            if one not in target.messages:
                continue
            seq = sorted(target.messages).index(one) + 1
            del target.messages[one]
            target.expunged[one] = target.bump()
            self._announce(target, lambda session, seq=seq, one=one: [
                MailboxEvent("vanished", uids=(one,)) if "QRESYNC" in session.enabled else MailboxEvent("expunge", number=seq)])

    def add_flags(self, folder: str, uid: int | Sequence[int], flags: Iterable[str]) -> None:
        """Add flags, as another client would."""
        self._add_flags(self.folder(folder), _uids(uid), list(flags))

    def remove_flags(self, folder: str, uid: int | Sequence[int], flags: Iterable[str]) -> None:
        """Remove flags, as another client would."""
        self._add_flags(self.folder(folder), _uids(uid), list(flags), remove=True)

    def kick(self) -> None:
        """Disconnect every open session (as ``doveadm kick`` does); new logins still work."""
        for session in list(self.sessions):
            session._drop("Disconnected by the administrator.")
        with self.changed:
            self.changed.notify_all()

    def stop(self) -> None:
        """Simulate an outage: open sessions lose their connection, new ones are refused."""
        self.running = False
        for session in list(self.sessions):
            session._drop("Server shutting down.")
        with self.changed:
            self.changed.notify_all()

    def start(self) -> None:
        """End the outage; mail is kept."""
        self.running = True

    def restart(self) -> None:
        """stop() then start()."""
        self.stop()
        self.start()

    def fail(
        self, kind: ImapErrorKind | str, op: str = "connect", times: int = 1, message: str | None = None
    ) -> None:
        """Make the next `times` calls of op ("connect", "fetch", ... or "*") raise ImapError(kind)."""
        error_kind = ImapErrorKind(kind)
        if op != "*" and op not in OPERATIONS:
            raise ValueError(f"op must be '*' or one of {OPERATIONS}")
        self._failures.append(_Failure(error_kind, op, times, message or _DEFAULT_MESSAGES[error_kind]))

    # -- used by the sessions -------------------------------------------------------------------

    def _connect(self, settings: ImapSettings) -> FakeImapSession:
        """Authenticate like Dovecot would and open a session."""
        self._maybe_fail("connect")
        if not self.running:
            raise ImapError(ImapErrorKind.CONNECT, _DEFAULT_MESSAGES[ImapErrorKind.CONNECT])
        secret_ok = (
            settings.oauth_token == self.oauth_token
            if settings.oauth_token is not None
            else settings.password == self.password
        )
        if settings.username != self.username or not secret_ok:
            raise ImapError(ImapErrorKind.AUTH, _DEFAULT_MESSAGES[ImapErrorKind.AUTH], "AUTHENTICATIONFAILED")
        if self.max_connections is not None and len(self.sessions) >= self.max_connections:
            raise ImapError(
                ImapErrorKind.PROTOCOL,
                "[LIMIT] Maximum number of connections from user+IP exceeded "
                f"(mail_max_userip_connections={self.max_connections})",
                "LIMIT",
            )
        session = FakeImapSession(self, settings.fetch_batch)
        self.sessions.append(session)
        return session

    def _maybe_fail(self, op: str) -> None:
        """Raise the first injected failure that matches op."""
        for failure in self._failures:
            if failure.op in (op, "*"):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                from_server = failure.kind in (ImapErrorKind.AUTH, ImapErrorKind.PROTOCOL)
                raise ImapError(failure.kind, failure.message, response_code(failure.message) if from_server else None)

    def _find(self, name: str) -> FakeFolder | None:
        """Look a folder up, INBOX case-insensitively."""
        if name.upper() == "INBOX":
            return self.folders.get("INBOX")
        return self.folders.get(name)

    def _existing(self, name: str, code: str | None = None) -> FakeFolder:
        """A selectable folder or Dovecot's "Mailbox doesn't exist" error."""
        found = self._find(name)
        if found is None or not found.selectable:
            prefix = f"[{code}] " if code else ""
            raise ImapError(ImapErrorKind.PROTOCOL, f"{prefix}Mailbox doesn't exist: {name}", code)
        return found

    def _store(
        self,
        folder: FakeFolder,
        raw: bytes,
        flags: Iterable[str],
        when: datetime | None,
        gm_msgid: int | None,
        gm_thrid: int | None,
    ) -> int:
        """Add one message with the next UID."""
        uid = folder.uidnext
        folder.uidnext += 1
        if self.gmail and gm_msgid is None:
            gm_msgid = next(_gm_msgid_counter)
        folder.messages[uid] = FakeMessage(
            uid=uid,
            raw=_LINE_ENDINGS.sub(b"\r\n", raw),
            flags={folder.canonical_flag(f) for f in flags},
            internaldate=_server_time(when),
            modseq=folder.bump(),
            gm_msgid=gm_msgid,
            gm_thrid=gm_thrid if gm_thrid is not None else gm_msgid,
        )
        return uid

    def _add_flags(self, folder: FakeFolder, uids: Iterable[int], flags: Sequence[str], *, remove: bool = False,
                   by: FakeImapSession | None = None) -> None:
        """Add (or remove) flags of existing messages, bumping MODSEQ for each changed one and telling
        the other sessions on the folder (a FETCH with the UID under QRESYNC, else the sequence number)."""
        for uid in uids:
            message = folder.messages.get(uid)
            if message is None:
                continue
            wanted = {folder.canonical_flag(f) for f in flags}
            changed = bool(wanted & message.flags) if remove else not wanted <= message.flags
            if not changed:
                continue
            message.flags = message.flags - wanted if remove else message.flags | wanted
            message.modseq = folder.bump()
            seq = sorted(folder.messages).index(uid) + 1
            self._announce(folder, lambda session, m=message, seq=seq: [MailboxEvent(
                "flags", number=seq, uids=(m.uid,) if "QRESYNC" in session.enabled else (), flags=frozenset(m.flags),
                modseq=m.modseq if "CONDSTORE" in session.enabled else None)], but=by)

    def _announce(self, folder: FakeFolder, events: Callable[[FakeImapSession], list[MailboxEvent]],
                  but: FakeImapSession | None = None) -> None:
        """Queue events for every other session that has folder selected, and wake idlers."""
        with self.changed:
            for session in self.sessions:
                if session is not but and session._selected is not None and self._find(session._selected[0]) is folder:
                    session._pending.extend(events(session))
            self.changed.notify_all()


class FakeImapSession:
    """ImapSession over a FakeImapServer; same selection rules and errors as the real one."""

    def __init__(self, server: FakeImapServer, fetch_batch: int) -> None:
        self._server = server
        self._fetch_batch = fetch_batch
        self._selected: tuple[str, bool] | None = None
        self._closed = False
        self._dropped: str | None = None
        self._lost: str | None = None
        self.capabilities: frozenset[str] = server.capabilities
        enable = "ENABLE" in server.capabilities
        qresync = enable and "QRESYNC" in server.capabilities
        self.enabled: frozenset[str] = (frozenset({"QRESYNC", "CONDSTORE"}) if qresync
                                        else frozenset({"CONDSTORE"}) if enable and "CONDSTORE" in server.capabilities else frozenset())
        self._pending: list[MailboxEvent] = []
        self._idling = False

    def list_folders(self) -> list[FolderInfo]:
        """Selectable folders with their special-use attributes."""
        self._enter("list_folders")
        return [FolderInfo(f.name, f.special_use) for f in self._server.folders.values() if f.selectable]

    def status(self, folder: str) -> FolderStatus:
        """STATUS numbers of folder."""
        self._enter("status", folder)
        return self._status_of(self._server._existing(folder))

    def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        """Select folder for search_uids and fetch; a failed select leaves nothing selected."""
        self._enter("select", folder, readonly)
        self._selected = None
        self._pending = []
        target = self._server._existing(folder)
        self._selected = (target.name, readonly)
        return self._status_of(target)

    def search_uids(self, since: date | None = None, uid_from: int | None = None) -> list[int]:
        """UIDs of the selected folder, ascending, filtered by INTERNALDATE day (UTC) and UID."""
        folder = self._selected_folder("search_uids")
        return [
            uid
            for uid, message in sorted(folder.messages.items())
            if (since is None or message.internaldate.date() >= since) and (uid_from is None or uid >= uid_from)
        ]

    def fetch_peek(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """Messages of the selected folder in ascending UID order; flags are left alone."""
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), self._fetch_batch):
            batch = wanted[start : start + self._fetch_batch]
            folder = self._selected_folder("fetch", batch)
            found = [folder.messages[uid] for uid in batch if uid in folder.messages]
            gmail = "X-GM-EXT-1" in self.capabilities
            for message in found:
                yield FetchedMessage(
                    uid=message.uid,
                    flags=frozenset(message.flags),
                    internaldate=message.internaldate,
                    size=len(message.raw),
                    raw=message.raw,
                    gm_msgid=message.gm_msgid if gmail else None,
                    gm_thrid=message.gm_thrid if gmail else None,
                )

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Add flags on the server (only for an explicit org setting)."""
        if not uids or not flags:
            return
        flag_list(flags)
        self._enter("add_flags", folder, (list(uids), list(flags)))
        target = self._server._existing(folder)
        self._server._add_flags(target, sorted(set(uids)), list(flags), by=self)
        self._keep_selection(target, readonly=False)

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Remove flags on the server (a user's change through the API)."""
        if not uids or not flags:
            return
        flag_list(flags)
        self._enter("remove_flags", folder, (list(uids), list(flags)))
        target = self._server._existing(folder)
        self._server._add_flags(target, sorted(set(uids)), list(flags), remove=True, by=self)
        self._keep_selection(target, readonly=False)

    def fetch_flags(self, uid_from: int = 1, changedsince: int | None = None) -> FlagChanges:
        """Flags from uid_from up; with changedsince only newer MODSEQs, plus VANISHED under QRESYNC."""
        if changedsince is not None and "CONDSTORE" not in self.enabled:
            raise ImapError(ImapErrorKind.PROTOCOL, "CHANGEDSINCE needs CONDSTORE, which this server does not offer")
        folder = self._selected_folder("fetch_flags", (uid_from, changedsince))
        chosen = {uid: m for uid, m in folder.messages.items()
                  if uid >= uid_from and (changedsince is None or m.modseq > changedsince)}
        gone: frozenset[int] = frozenset()
        if changedsince is not None and "QRESYNC" in self.enabled:
            gone = frozenset(uid for uid, modseq in folder.expunged.items() if uid >= uid_from and modseq > changedsince)
        gone |= frozenset(uid for e in self._pending if e.kind == "vanished" for uid in e.uids)
        self._pending = [e for e in self._pending if e.kind != "vanished"]
        top = max((m.modseq for m in chosen.values()), default=None) if "CONDSTORE" in self.enabled else None
        modseqs = {uid: m.modseq for uid, m in chosen.items()} if "CONDSTORE" in self.enabled else {}
        return FlagChanges(flags={uid: frozenset(m.flags) for uid, m in sorted(chosen.items())}, modseqs=modseqs, vanished=gone,
                           highestmodseq=top, complete=changedsince is None)

    def idle_start(self) -> None:
        """Enter IDLE on the selected folder."""
        self._selected_folder("idle")
        if "IDLE" not in self.capabilities:
            raise ImapError(ImapErrorKind.PROTOCOL, "this server does not offer IDLE")
        if self._idling:
            raise ImapError(ImapErrorKind.PROTOCOL, "already idling")
        self._idling = True

    def idle_wait(self, timeout: float) -> list[MailboxEvent]:
        """Wait up to timeout seconds for events; a dropped connection is a connect error."""
        if not self._idling:
            raise ImapError(ImapErrorKind.PROTOCOL, "not idling; call idle_start() first")
        deadline = time.monotonic() + timeout
        with self._server.changed:
            while not self._pending and self._dropped is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._server.changed.wait(left)
            events, self._pending = self._pending, []
        if self._dropped is not None or self._closed:
            self._lost = self._dropped or SESSION_CLOSED
            raise ImapError(ImapErrorKind.CONNECT, self._lost)
        return events

    def idle_done(self) -> list[MailboxEvent]:
        """Leave IDLE; events that arrived meanwhile."""
        self._enter("idle")
        self._idling = False
        with self._server.changed:
            events, self._pending = self._pending, []
        return events

    def interrupt(self) -> None:
        """End the connection from another thread."""
        self._drop("interrupted")
        with self._server.changed:
            self._server.changed.notify_all()

    def append(self, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None) -> tuple[int, int] | None:
        """APPEND with CRLF line endings; (uidvalidity, uid) when UIDPLUS is advertised."""
        if flags:
            flag_list(flags)
        self._enter("append", folder, list(flags))
        target = self._server._existing(folder, code="TRYCREATE")
        uid = self._server._store(target, raw, flags, when, None, None)
        return (target.uidvalidity, uid) if "UIDPLUS" in self.capabilities else None

    def search_header(self, folder: str, name: str, value: str) -> list[int]:
        """UIDs whose header name contains value, case-insensitively, after MIME-word decoding."""
        check_header_name(name)
        self._enter("search_header", folder, (name, value))
        target = self._server._existing(folder)
        needle = value.casefold()
        parser = BytesHeaderParser(policy=email.policy.default)
        hits = []
        for uid, message in sorted(target.messages.items()):
            headers = parser.parsebytes(message.raw)
            if any(needle in str(h).casefold() for h in headers.get_all(name, [])):
                hits.append(uid)
        self._keep_selection(target, readonly=True)
        return hits

    def close(self) -> None:
        """Log out; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self in self._server.sessions:
            self._server.sessions.remove(self)

    def _drop(self, reason: str) -> None:
        """The server closed this connection; the next command finds out."""
        self._dropped = reason
        if self in self._server.sessions:
            self._server.sessions.remove(self)

    def _enter(self, op: str, folder: str | None = None, detail: object = None) -> None:
        """Checks every command makes (closed, connection gone, injected failure), then log it."""
        if self._closed:
            raise ImapError(ImapErrorKind.PROTOCOL, SESSION_CLOSED)
        if self._lost is not None:
            raise ImapError(ImapErrorKind.CONNECT, f"{CONNECTION_LOST}: {self._lost}")
        if self._dropped is not None:
            self._lost = self._dropped
            raise ImapError(ImapErrorKind.CONNECT, self._dropped)
        try:
            self._server._maybe_fail(op)
        except ImapError as exc:
            if exc.kind in _FATAL_KINDS:
                self._lost = exc.message
                self._drop(exc.message)
            raise
        self._server.log.append((op, folder, detail))

    def _selected_folder(self, op: str, detail: object = None) -> FakeFolder:
        """The selected folder, after the common checks."""
        self._enter(op, self._selected[0] if self._selected else None, detail)
        if self._selected is None:
            raise ImapError(ImapErrorKind.PROTOCOL, NO_FOLDER_SELECTED)
        return self._server.folder(self._selected[0])

    def _keep_selection(self, target: FakeFolder, readonly: bool) -> None:
        """Like the real session: with nothing selected before, the used folder stays selected."""
        if self._selected is None:
            self._selected = (target.name, readonly)

    def _status_of(self, folder: FakeFolder) -> FolderStatus:
        """FolderStatus of folder, with HIGHESTMODSEQ only under CONDSTORE."""
        return FolderStatus(
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            messages=len(folder.messages),
            highestmodseq=folder.highestmodseq if "CONDSTORE" in self.capabilities else None,
        )


def fake_connect(server: FakeImapServer) -> Callable[[ImapSettings], ImapSession]:
    """A drop-in for pipeline.clients.imap.connect that opens sessions on server."""

    def connect(settings: ImapSettings) -> ImapSession:
        return server._connect(settings)

    return connect


def _server_time(when: datetime | None) -> datetime:
    """INTERNALDATE as Dovecot reports it here: UTC, whole seconds (naive input taken as UTC)."""
    moment = when or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _uids(uid: int | Sequence[int]) -> list[int]:
    """One UID or several as a list."""
    return [uid] if isinstance(uid, int) else list(uid)
