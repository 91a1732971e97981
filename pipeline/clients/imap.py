"""The IMAP client interface the sync code uses, and its real implementation over imap-tools.

Sync code talks to an ``ImapSession`` only (``tests/harness/fake_imap.py`` is its in-memory twin). Reading never
changes the mailbox: folders are opened with EXAMINE and bodies fetched with BODY.PEEK[], so \\Seen
is never set by accident. Every failure surfaces as ``ImapError`` with a kind the caller can act on;
its message carries the server's words and never the password or token.

Every connection goes through the outbound guard (``netguard``): the host is resolved once, each
address is checked against ``MAILPIPE_MAIL_ALLOWED_NETS``, and the socket goes to exactly the
address checked while TLS verifies the certificate for the host name given. A plaintext
(``security: "none"``) login, or ``listed_only`` settings (an OAuth token off the provider's hosts),
also require the address to be inside those networks. The password travels as an IMAP literal
(AUTHENTICATE PLAIN when non-ASCII), and control characters in credentials are refused before
connecting, so no character of a credential can end the command and start another.
"""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol, runtime_checkable

from imap_tools.errors import MailboxLoginError, MailboxStarttlsError, UnexpectedCommandStatusError
from imap_tools.imap_utf7 import utf7_decode, utf7_encode
from imap_tools.mailbox import BaseMailBox
from imap_tools.utils import check_command_status

from pipeline.clients import netguard
from pipeline.clients.errors import ConnErrorKind
from pipeline.clients.imap_events import FlagChanges, MailboxEvent, parse_event
from pipeline.clients.imap_socket import PinnedIMAP4, PinnedIMAP4_SSL
from pipeline.clients.imap_wire import (
    ParseError,
    Value,
    appenduid,
    check_header_name,
    fetch_items,
    flag_list,
    imap_date,
    parse_internaldate,
    parse_responses,
    parse_search,
    quote,
    response_code,
    uid_set,
)
from pipeline.stages.endpoint_rules import PLAINTEXT_REASON
from pipeline.stages.netpolicy import Nets
from pipeline.stages.wire_text import unsafe_login

__all__ = [
    "CONNECTION_LOST",
    "HOST_NOT_ALLOWED",
    "NO_FOLDER_SELECTED",
    "SESSION_CLOSED",
    "SPECIAL_USE_FLAGS",
    "FetchedMessage",
    "FlagChanges",
    "MailboxEvent",
    "FolderInfo",
    "FolderStatus",
    "ImapError",
    "ImapErrorKind",
    "ImapSession",
    "ImapSettings",
    "connect",
]

SPECIAL_USE_FLAGS = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"})
_LEGACY_SPECIAL_USE = {"\\ALLMAIL": "\\All", "\\SPAM": "\\Junk", "\\STARRED": "\\Flagged"}
_NOT_SELECTABLE = frozenset({"\\NOSELECT", "\\NONEXISTENT"})
_TRANSIENT_LOGIN_CODES = frozenset({"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG", "CONTACTADMIN"})
SESSION_FLAGS = frozenset({"\\Recent"})
MIN_MAXLINE = 10_000_000
DEFAULT_FETCH_BATCH = 200
MIN_SCRUB_LENGTH = 4
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}$")
NO_FOLDER_SELECTED = "no folder selected; call select() first"
SESSION_CLOSED = "session is closed"
CONNECTION_LOST = "connection lost earlier, reconnect"
HOST_NOT_ALLOWED = "host_not_allowed"


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """A selectable folder and its RFC 6154 special-use attributes (e.g. {"\\Sent"})."""

    name: str
    special_use: frozenset[str]


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """The numbers that tell whether a folder changed; highestmodseq is None without CONDSTORE."""

    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int | None


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One message as fetched: exact RFC 822 bytes, flags (without \\Recent) and metadata."""

    uid: int
    flags: frozenset[str]
    internaldate: datetime | None
    size: int
    raw: bytes
    gm_msgid: int | None = None
    gm_thrid: int | None = None


ImapErrorKind = ConnErrorKind
"""The shared connection-failure kinds (see pipeline.clients.errors)."""


_FATAL_KINDS = frozenset({ImapErrorKind.CONNECT, ImapErrorKind.TIMEOUT, ImapErrorKind.TLS})


class ImapError(Exception):
    """Any IMAP failure; ``message`` is the server's text when there is one, ``code`` its [CODE]."""

    def __init__(self, kind: ImapErrorKind, message: str, code: str | None = None) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.code = code


@runtime_checkable
class ImapSession(Protocol):
    """One logged-in IMAP connection; fetch/search_uids work on the folder chosen with select()."""

    capabilities: frozenset[str]
    enabled: frozenset[str]
    """Extensions switched on with ENABLE (CONDSTORE, QRESYNC)."""

    def list_folders(self) -> list[FolderInfo]:
        """Selectable folders with their special-use attributes."""
        ...

    def status(self, folder: str) -> FolderStatus:
        """STATUS of a folder without selecting it."""
        ...

    def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        """Open folder (EXAMINE when readonly) for search_uids and fetch."""
        ...

    def search_uids(self, since: date | None = None, uid_from: int | None = None) -> list[int]:
        """UIDs in the selected folder, ascending, optionally since a date and/or from a UID."""
        ...

    def fetch_peek(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """Messages of the selected folder in ascending UID order, read with BODY.PEEK[]: never sets \\Seen."""
        ...

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Add flags on the server (an org's ``mark_seen``, or a user's change through the API)."""
        ...

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Remove flags on the server (a user's change through the API)."""
        ...

    def fetch_flags(self, uid_from: int = 1, changedsince: int | None = None) -> FlagChanges:
        """Flags of the selected folder's UIDs from ``uid_from`` up; with ``changedsince`` (CONDSTORE)
        only those changed after that MODSEQ, plus the UIDs expunged since (when QRESYNC is enabled)."""
        ...

    def idle_start(self) -> None:
        """Enter IDLE on the selected folder (RFC 2177); no other command until :meth:`idle_done`."""
        ...

    def idle_wait(self, timeout: float) -> list[MailboxEvent]:
        """Events the server sent while idling, waiting up to ``timeout`` seconds for the first;
        ImapError (connect) when the connection ends (a BYE, a kick, :meth:`interrupt`)."""
        ...

    def idle_done(self) -> list[MailboxEvent]:
        """Leave IDLE (DONE); the events that arrived meanwhile."""
        ...

    def interrupt(self) -> None:
        """From another thread: end the connection so a blocked :meth:`idle_wait` returns at once."""
        ...

    def append(self, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None) -> tuple[int, int] | None:
        """APPEND a message; (uidvalidity, uid) when the server reports APPENDUID."""
        ...

    def search_header(self, folder: str, name: str, value: str) -> list[int]:
        """UIDs in folder whose header name contains value (case-insensitive), ascending."""
        ...

    def close(self) -> None:
        """Log out and drop the connection; safe to call twice."""
        ...


@dataclass(frozen=True)
class ImapSettings:
    """Where and how to log in; exactly one of password / oauth_token (XOAUTH2).

    ``allowed_nets``: the networks the guard lets through beyond public addresses (None: the
    ``MAILPIPE_MAIL_ALLOWED_NETS`` setting). ``listed_only``: why this connection must stay inside
    them even for a public address (e.g. a provider's OAuth token going to a host the tenant chose).
    """

    host: str
    port: int
    security: str
    username: str
    password: str | None = None
    oauth_token: str | None = None
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = None
    fetch_batch: int = DEFAULT_FETCH_BATCH
    allowed_nets: Nets | None = None
    listed_only: str | None = None

    def __post_init__(self) -> None:
        if self.security not in ("ssl", "starttls", "none"):
            raise ValueError("security must be 'ssl', 'starttls' or 'none'")
        if (self.password is None) == (self.oauth_token is None):
            raise ValueError("give exactly one of password or oauth_token")
        if self.fetch_batch < 1:
            raise ValueError("fetch_batch must be positive")

    def __repr__(self) -> str:
        return (
            f"ImapSettings(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, auth={'oauth' if self.oauth_token else 'password'})"
        )


def connect(settings: ImapSettings) -> ImapSession:
    """Check, connect, secure and log in; raise ImapError (dns/connect/tls/timeout/auth/protocol).

    A host the guard refuses is a ``connect`` error with code ``host_not_allowed``; no connection
    is made. Credentials with control characters are an ``auth`` error, also before connecting.
    """
    imaplib._MAXLINE = max(imaplib._MAXLINE, MIN_MAXLINE)  # type: ignore[attr-defined]  # imaplib's line cap: private, not in typeshed
    secrets = _secrets(settings)
    _refuse_unsafe_text(settings)
    with _translated(secrets, phase="connect"):
        target = _checked(settings)
        mailbox = _PinnedMailBox(settings, target)
    try:
        with _translated(secrets, phase="auth"):
            _login(mailbox, settings)
        with _translated(secrets, phase="session"):
            return _ImapToolsSession(mailbox, settings.fetch_batch, secrets)
    except BaseException:
        _drop(mailbox.client)
        raise


def _refuse_unsafe_text(settings: ImapSettings) -> None:
    """Refuse a host or credential that could break the command line, before any connection."""
    unsafe = unsafe_login(settings.host, settings.username, settings.password, settings.oauth_token)
    if unsafe is not None:
        raise ImapError(ImapErrorKind(unsafe.kind), unsafe.message)


def _checked(settings: ImapSettings) -> netguard.CheckedHost:
    """Resolve and check the host (socket.gaierror for DNS failures); refusals become ImapError."""
    nets = settings.allowed_nets if settings.allowed_nets is not None else netguard.mail_nets()
    why = settings.listed_only or (PLAINTEXT_REASON if settings.security == "none" else None)
    try:
        return netguard.check_host(settings.host, nets, listed_only=why)
    except netguard.HostNotAllowed as exc:
        raise ImapError(ImapErrorKind.CONNECT, str(exc), HOST_NOT_ALLOWED) from None


class _PinnedMailBox(BaseMailBox):
    """An imap-tools mailbox on a pinned imaplib client, with the requested security.

    Certificates are always verified (the context defaults to the system store).
    """

    def __init__(self, settings: ImapSettings, target: netguard.CheckedHost) -> None:
        self._settings, self._target = settings, target
        super().__init__()

    def _get_mailbox_client(self) -> imaplib.IMAP4:
        s = self._settings
        context = s.ssl_context or ssl.create_default_context()
        if s.security == "ssl":
            return PinnedIMAP4_SSL(self._target, s.port, s.timeout, context)
        if s.security == "starttls" and s.port == 993:
            raise ImapError(ImapErrorKind.TLS, "port 993 expects implicit TLS: use security \"ssl\" there")
        client = PinnedIMAP4(self._target, s.port, s.timeout)
        if s.security == "starttls":
            try:
                check_command_status(client.starttls(context), MailboxStarttlsError)
            except BaseException:
                _drop(client)
                raise
        return client


def _login(mailbox: BaseMailBox, settings: ImapSettings) -> None:
    """LOGIN (AUTHENTICATE PLAIN for non-ASCII credentials) or AUTHENTICATE XOAUTH2."""
    if settings.oauth_token is not None:
        initial = f"user={settings.username}\x01auth=Bearer {settings.oauth_token}\x01\x01".encode()
        sent: list[bool] = []

        def respond(_challenge: bytes) -> bytes:
            # First call: the credentials. Later calls answer the server's JSON error challenge
            # with an empty response so it finishes with NO instead of waiting.
            if sent:
                return b""
            sent.append(True)
            return initial

        mailbox.client.authenticate("XOAUTH2", respond)
        return
    assert settings.password is not None
    if settings.username.isascii() and settings.password.isascii():
        _login_literal(mailbox.client, settings.username, settings.password)
    else:
        mailbox.login_utf8(settings.username, settings.password, initial_folder=None)


def _login_literal(client: imaplib.IMAP4, username: str, password: str) -> None:
    """LOGIN "username" {n}<CRLF>password: the password as a literal (RFC 3501 astring).

    A literal is counted bytes, so nothing in the password (quotes, backslashes, braces, or a CR/LF
    that slipped past validation) can end the command; the username is a quoted string, which
    control characters (refused before connecting) are the only way out of.
    """
    client.literal = password.encode("ascii")  # type: ignore[assignment]  # imaplib sends bytes
    try:
        result = client._simple_command("LOGIN", quote(username))
    finally:
        client.literal = None
    check_command_status(result, MailboxLoginError)
    client.state = "AUTH"


class _ImapToolsSession:
    """ImapSession over an imap-tools MailBox, using its imaplib client for the raw commands."""

    def __init__(self, mailbox: BaseMailBox, fetch_batch: int, secrets: frozenset[str]) -> None:
        self._mailbox = mailbox
        self._client = mailbox.client
        self._fetch_batch = fetch_batch
        self._secrets = secrets
        self._selected: tuple[str, bool] | None = None
        self._closed = False
        self._lost: str | None = None
        typ, data = self._client.capability()
        _check(typ, data)
        words = b" ".join(d for d in data if isinstance(d, bytes)).decode("ascii", "replace").upper().split()
        self._client.capabilities = tuple(words)
        self.capabilities: frozenset[str] = frozenset(words)
        self.enabled: frozenset[str] = frozenset()
        self._idle_tag: bytes | None = None
        self._events: list[MailboxEvent] = []
        if "ENABLE" in self.capabilities and "CONDSTORE" in self.capabilities:
            # CONDSTORE makes SELECT/EXAMINE report HIGHESTMODSEQ and FETCH carry MODSEQ; QRESYNC
            # (which implies it) reports expunges as VANISHED UIDs and puts the UID in every FETCH.
            wanted = "QRESYNC" if "QRESYNC" in self.capabilities else "CONDSTORE"
            typ, data = self._client.enable(wanted)
            _check(typ, data)
            enabled = self._client.untagged_responses.pop("ENABLED", [])
            said = b" ".join(d for d in enabled if isinstance(d, bytes)).decode("ascii", "replace").upper().split()
            self.enabled = frozenset(said) | ({"CONDSTORE"} if "QRESYNC" in said else set())

    def list_folders(self) -> list[FolderInfo]:
        """LIST "" "*" without \\Noselect/\\NonExistent entries; names decoded from modified UTF-7."""
        with self._call():
            typ, data = self._client.list()
            _check(typ, data)
            folders = []
            for response in parse_responses(data):
                if len(response) < 3 or not isinstance(response[0], list):
                    continue
                attributes = [a for a in response[0] if isinstance(a, str)]
                if any(a.upper() in _NOT_SELECTABLE for a in attributes):
                    continue
                folders.append(FolderInfo(_decode_name(response[2]), _special_use(attributes)))
            return folders

    def status(self, folder: str) -> FolderStatus:
        """STATUS (UIDNEXT UIDVALIDITY MESSAGES [HIGHESTMODSEQ])."""
        items = "UIDNEXT UIDVALIDITY MESSAGES" + (" HIGHESTMODSEQ" if self._condstore else "")
        with self._call():
            typ, data = self._client.status(_encode_name(folder), f"({items})")
            _check(typ, data)
            for response in reversed(parse_responses(data)):
                if len(response) >= 2 and isinstance(response[-1], list):
                    pairs = response[-1]
                    values = {str(k).upper(): v for k, v in zip(pairs[0::2], pairs[1::2], strict=False)}
                    return FolderStatus(
                        uidvalidity=_int(values.get("UIDVALIDITY")),
                        uidnext=_int(values.get("UIDNEXT")),
                        messages=_int(values.get("MESSAGES")),
                        highestmodseq=_int(values["HIGHESTMODSEQ"]) if "HIGHESTMODSEQ" in values else None,
                    )
            raise ImapError(ImapErrorKind.PROTOCOL, f"no STATUS data for {folder!r}")

    def select(self, folder: str, readonly: bool = True) -> FolderStatus:
        """EXAMINE (readonly) or SELECT folder and report its numbers from the response codes."""
        with self._call():
            self._selected = None
            typ, data = self._client.select(_encode_name(folder), readonly)
            _check(typ, data)
            self._selected = (folder, readonly)
            codes = self._client.untagged_responses
            if not data or data[-1] is None or "UIDVALIDITY" not in codes or "UIDNEXT" not in codes:
                return self.status(folder)  # a server that left numbers out of the SELECT response
            messages = _int(data[-1])
            modseq = codes.get("HIGHESTMODSEQ")
            return FolderStatus(
                uidvalidity=_int(codes["UIDVALIDITY"][-1]),
                uidnext=_int(codes["UIDNEXT"][-1]),
                messages=messages,
                highestmodseq=_int(modseq[-1]) if modseq and self._condstore else None,
            )

    def search_uids(self, since: date | None = None, uid_from: int | None = None) -> list[int]:
        """UID SEARCH [SINCE d] [UID n:*]; drops the highest UID that n:* always returns."""
        criteria: list[str] = []
        if since is not None:
            criteria += ["SINCE", imap_date(since)]
        if uid_from is not None:
            criteria += ["UID", f"{max(uid_from, 1)}:*"]
        with self._call():
            self._require_selected()
            typ, data = self._client.uid("SEARCH", *(criteria or ["ALL"]))
            _check(typ, data)
            uids = parse_search(data)
        return [uid for uid in uids if uid_from is None or uid >= uid_from]

    def fetch_peek(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """UID FETCH in batches with BODY.PEEK[] (plus X-GM-MSGID/THRID on Gmail), one message at a time."""
        wanted = sorted(set(uids))
        attributes = "UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]"
        if "X-GM-EXT-1" in self.capabilities:
            attributes += " X-GM-MSGID X-GM-THRID"
        for start in range(0, len(wanted), self._fetch_batch):
            batch = wanted[start : start + self._fetch_batch]
            with self._call():
                self._require_selected()
                typ, data = self._client.uid("FETCH", uid_set(batch), f"({attributes})")
                _check(typ, data)
                found = _messages_from(data, set(batch))
            for uid in batch:
                if uid in found:
                    yield found[uid]

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """UID STORE +FLAGS.SILENT in a read-write SELECT of folder."""
        self._store(folder, uids, "+FLAGS.SILENT", flags)

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """UID STORE -FLAGS.SILENT in a read-write SELECT of folder."""
        self._store(folder, uids, "-FLAGS.SILENT", flags)

    def _store(self, folder: str, uids: Sequence[int], action: str, flags: Sequence[str]) -> None:
        if not uids or not flags:
            return
        rendered = flag_list(flags)
        wanted = sorted(set(uids))
        with self._call(), self._in_folder(folder, readonly=False):
            for start in range(0, len(wanted), self._fetch_batch):
                batch = wanted[start : start + self._fetch_batch]
                _check(*self._client.uid("STORE", uid_set(batch), action, rendered))

    def fetch_flags(self, uid_from: int = 1, changedsince: int | None = None) -> FlagChanges:
        """UID FETCH n:* (UID FLAGS [MODSEQ]) [(CHANGEDSINCE m [VANISHED])]; the VANISHED (EARLIER) answer and
        any expunges reported meanwhile (VANISHED under QRESYNC) come back as ``vanished``."""
        if changedsince is not None and "CONDSTORE" not in self.enabled:
            raise ImapError(ImapErrorKind.PROTOCOL, "CHANGEDSINCE needs CONDSTORE, which this server does not offer")
        modifier = None
        if changedsince is not None:
            modifier = f"(CHANGEDSINCE {int(changedsince)}{' VANISHED' if 'QRESYNC' in self.enabled else ''})"
        items = "(UID FLAGS MODSEQ)" if "CONDSTORE" in self.enabled else "(UID FLAGS)"
        with self._call():
            self._require_selected()
            args = [uid_set([max(1, uid_from)]) + ":*", items] + ([modifier] if modifier else [])
            typ, data = self._client.uid("FETCH", *args)
            _check(typ, data)
            vanished_parts = self._client.untagged_responses.pop("VANISHED", [])
            flags: dict[int, frozenset[str]] = {}
            modseqs: dict[int, int] = {}
            top: int | None = None
            for response in parse_responses(data):
                fetched = fetch_items(response)
                if fetched is None or not isinstance(fetched.get("UID"), str) or not isinstance(fetched.get("FLAGS"), list):
                    continue
                uid = int(fetched["UID"])  # type: ignore[arg-type]
                if uid < uid_from:
                    continue  # n:* always names the highest UID, even below n
                flags[uid] = frozenset(f for f in fetched["FLAGS"] if isinstance(f, str)) - SESSION_FLAGS  # type: ignore[union-attr]
                modseq = fetched.get("MODSEQ")
                if isinstance(modseq, list) and modseq and isinstance(modseq[0], str) and modseq[0].isdigit():
                    modseqs[uid] = int(modseq[0])
                    top = max(top or 0, modseqs[uid])
            gone: set[int] = set()
            for part in vanished_parts:
                event = parse_event([b"VANISHED " + part] if isinstance(part, bytes) else [])
                if event is not None:
                    gone.update(event.uids)
        return FlagChanges(flags=flags, modseqs=modseqs, vanished=frozenset(gone), highestmodseq=top, complete=changedsince is None)

    def idle_start(self) -> None:
        """IDLE, then read up to the server's "+" continuation (untagged responses before it are kept)."""
        with self._call():
            self._require_selected()
            if "IDLE" not in self.capabilities:
                raise ImapError(ImapErrorKind.PROTOCOL, "this server does not offer IDLE")
            if self._idle_tag is not None:
                raise ImapError(ImapErrorKind.PROTOCOL, "already idling")
            tag = self._client._command("IDLE")
            while True:
                kind, parts = self._read_response()
                if kind == "+":
                    self._idle_tag = tag
                    return
                if kind == "tagged":
                    raise ImapError(ImapErrorKind.PROTOCOL, _server_text(parts) or "IDLE refused")
                self._keep_event(parts)

    def idle_wait(self, timeout: float) -> list[MailboxEvent]:
        """Wait for the first event (up to ``timeout`` seconds), then take every response already here."""
        with self._call():
            if self._idle_tag is None:
                raise ImapError(ImapErrorKind.PROTOCOL, "not idling; call idle_start() first")
            if not self._events and self._client.wait_readable(timeout):
                self._read_available()
            events, self._events = self._events, []
            if any(e.kind == "bye" for e in events):
                text = next(e.text for e in events if e.kind == "bye")
                raise ImapError(ImapErrorKind.CONNECT, f"the server ended the session: {text}")
            return events

    def idle_done(self) -> list[MailboxEvent]:
        """DONE, then read up to IDLE's tagged completion."""
        with self._call():
            tag, self._idle_tag = self._idle_tag, None
            if tag is None:
                return []
            self._client.send(b"DONE\r\n")
            while True:
                kind, parts = self._read_response()
                if kind == "tagged":
                    if not parts or not isinstance(parts[0], bytes) or not parts[0].startswith(tag):
                        raise ImapError(ImapErrorKind.PROTOCOL, "unexpected tagged response after DONE")
                    break
                if kind == "untagged":
                    self._keep_event(parts)
            events, self._events = self._events, []
            return events

    def interrupt(self) -> None:
        """Shut the socket down under a blocked read (another thread stops this connection)."""
        self._client.interrupt()

    def _read_available(self) -> None:
        """Read responses while a whole one is buffered or the socket has bytes (never blocks long)."""
        client = self._client
        while True:
            kind, parts = self._read_response()
            if kind == "untagged":
                self._keep_event(parts)
            if not client.has_pending() and not client.wait_readable(0):
                return

    def _keep_event(self, parts: list[object]) -> None:
        event = parse_event(parts)
        if event is not None:
            self._events.append(event)

    def _read_response(self) -> tuple[str, list[object]]:
        """One response as ("untagged" | "tagged" | "+", imaplib-style parts without the leading "* ").

        EOF is an abort (a CONNECT error). A literal ``{n}`` at a line's end is read whole.
        """
        line = self._client._get_line()
        if line.startswith(b"+"):
            return "+", [line]
        if not line.startswith(b"* "):
            return "tagged", [line]
        text = line[2:]
        parts: list[object] = []
        while True:
            match = _LITERAL_AT_END.search(text)
            if match is None:
                parts.append(text)
                return "untagged", parts
            literal = self._client.read(int(match.group(1)))
            parts.append((text, literal))
            text = self._client._get_line()

    def append(self, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None) -> tuple[int, int] | None:
        """APPEND (imaplib turns bare LF into CRLF); naive `when` is taken as UTC."""
        moment = None if when is None else (when if when.tzinfo else when.replace(tzinfo=UTC))
        rendered = flag_list(flags) if flags else None
        with self._call():
            typ, data = self._client.append(_encode_name(folder), rendered, moment, raw)
            _check(typ, data)
        return appenduid(data) if "UIDPLUS" in self.capabilities else None

    def search_header(self, folder: str, name: str, value: str) -> list[int]:
        """UID SEARCH HEADER name value in folder (a literal with CHARSET UTF-8 for non-ASCII values)."""
        check_header_name(name)
        with self._call(), self._in_folder(folder, readonly=True):
            try:
                typ, data = self._client.uid("SEARCH", "HEADER", name, quote(value))
            except ValueError:
                self._client.literal = value.encode("utf-8")  # type: ignore[assignment]  # imaplib sends bytes
                typ, data = self._client.uid("SEARCH", "CHARSET", "UTF-8", "HEADER", name)
            _check(typ, data)
            return parse_search(data)

    def close(self) -> None:
        """LOGOUT, then make sure the socket is gone."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
        _drop(self._client)

    @property
    def _condstore(self) -> bool:
        """Whether the server speaks CONDSTORE (so HIGHESTMODSEQ means something)."""
        return "CONDSTORE" in self.capabilities

    def _require_selected(self) -> None:
        """Fail clearly when no folder is selected."""
        if self._selected is None:
            raise ImapError(ImapErrorKind.PROTOCOL, NO_FOLDER_SELECTED)

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Guard a public method: refuse after close() or a lost connection, translate errors."""
        if self._closed:
            raise ImapError(ImapErrorKind.PROTOCOL, SESSION_CLOSED)
        if self._lost is not None:
            raise ImapError(ImapErrorKind.CONNECT, f"{CONNECTION_LOST}: {self._lost}")
        try:
            with _translated(self._secrets, phase="session"):
                yield
        except ImapError as exc:
            if exc.kind in _FATAL_KINDS:
                self._lost = exc.message
            raise

    @contextmanager
    def _in_folder(self, folder: str, readonly: bool) -> Iterator[None]:
        """Have folder selected for the block, then go back to the previously selected folder."""
        previous = self._selected
        usable = previous is not None and previous[0] == folder and (readonly or not previous[1])
        try:
            if not usable:
                self.select(folder, readonly=readonly)
            yield
        finally:
            if previous is not None and not usable and self._lost is None:
                self.select(*previous)


def _messages_from(data: Sequence[object], wanted: set[int]) -> dict[int, FetchedMessage]:
    """Merge FETCH responses by UID (servers may split one message's items) and build messages."""
    merged: dict[int, dict[str, Value]] = {}
    for response in parse_responses(data):
        items = fetch_items(response)
        uid_atom = items.get("UID") if items is not None else None
        if items is None or not isinstance(uid_atom, str):
            continue  # unsolicited FETCH without UID (e.g. another client's flag change)
        uid = int(uid_atom)
        if uid in wanted:
            merged.setdefault(uid, {}).update(items)
    messages: dict[int, FetchedMessage] = {}
    for uid, items in merged.items():
        body = items.get("BODY[]")
        if body is None and "BODY[]" not in items:
            continue
        raw = body if isinstance(body, bytes) else b""
        flags = items.get("FLAGS")
        date_value = items.get("INTERNALDATE")
        messages[uid] = FetchedMessage(
            uid=uid,
            flags=frozenset(f for f in (flags if isinstance(flags, list) else []) if isinstance(f, str)) - SESSION_FLAGS,
            internaldate=parse_internaldate(date_value) if isinstance(date_value, (str, bytes)) else None,
            size=_int(items["RFC822.SIZE"]) if "RFC822.SIZE" in items else len(raw),
            raw=raw,
            gm_msgid=_int(items["X-GM-MSGID"]) if "X-GM-MSGID" in items else None,
            gm_thrid=_int(items["X-GM-THRID"]) if "X-GM-THRID" in items else None,
        )
    return messages


def _special_use(attributes: Sequence[str]) -> frozenset[str]:
    """Keep the special-use attributes (canonical spelling), mapping old XLIST names."""
    canonical = {flag.upper(): flag for flag in SPECIAL_USE_FLAGS}
    found = set()
    for attribute in attributes:
        upper = attribute.upper()
        if upper in canonical:
            found.add(canonical[upper])
        elif upper in _LEGACY_SPECIAL_USE:
            found.add(_LEGACY_SPECIAL_USE[upper])
    return frozenset(found)


def _encode_name(folder: str) -> str:
    """Folder name as a quoted modified-UTF-7 IMAP string (pure ASCII)."""
    encoded = utf7_encode(folder).decode("ascii")
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decode_name(value: Value) -> str:
    """Folder name from a LIST response (atom, quoted or literal), decoded from modified UTF-7."""
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise ImapError(ImapErrorKind.PROTOCOL, f"bad folder name in LIST: {value!r}")
    return utf7_decode(value)


def _int(value: object) -> int:
    """Parse an IMAP number (str or bytes atom)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ImapError(ImapErrorKind.PROTOCOL, f"expected a number, got {value!r}")


def _check(typ: str, data: Sequence[object]) -> None:
    """Raise a protocol ImapError for a NO/BAD tagged response."""
    if typ != "OK":
        text = _server_text(data) or f"server answered {typ}"
        raise ImapError(ImapErrorKind.PROTOCOL, text, response_code(text))


def _server_text(data: object) -> str:
    """The last text line of a response, decoded."""
    if isinstance(data, (list, tuple)):
        for item in reversed(data):
            if isinstance(item, bytes):
                return item.decode("utf-8", "replace")
            if isinstance(item, str):
                return item
    return ""


def _secrets(settings: ImapSettings) -> frozenset[str]:
    """Strings that must never appear in an error message (password, token, their base64 forms).

    Secrets shorter than MIN_SCRUB_LENGTH are left alone: replacing "p" would mangle every message.
    """
    values = {v for v in (settings.password, settings.oauth_token) if v and len(v) >= MIN_SCRUB_LENGTH}
    if settings.oauth_token:
        blob = f"user={settings.username}\x01auth=Bearer {settings.oauth_token}\x01\x01".encode()
        values.add(base64.b64encode(blob).decode())
    for value in list(values):
        values.add(base64.b64encode(value.encode()).decode())
    return frozenset(values)


def _scrub(text: str, secrets: frozenset[str]) -> str:
    """Replace every secret in text with ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _message_of(exc: BaseException) -> str:
    """The human text of an exception, decoding imaplib's bytes arguments."""
    if isinstance(exc, UnexpectedCommandStatusError):
        return _server_text(exc.command_result[1]) or str(exc)
    if exc.args and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    return str(exc) or type(exc).__name__


@contextmanager
def _translated(secrets: frozenset[str], phase: str) -> Iterator[None]:
    """Turn socket/ssl/imaplib/imap-tools exceptions into ImapError for the given phase."""
    try:
        yield
    except ImapError as exc:
        if secrets:
            raise ImapError(exc.kind, _scrub(exc.message, secrets), exc.code) from None
        raise
    except Exception as exc:
        kind = _kind_of(exc, phase)
        if kind is None:
            raise
        message = _scrub(_message_of(exc), secrets)
        from_server = isinstance(exc, (imaplib.IMAP4.error, UnexpectedCommandStatusError))
        raise ImapError(kind, message, response_code(message) if from_server else None) from None


def _kind_of(exc: Exception, phase: str) -> ImapErrorKind | None:
    """Classify an exception; None for programming errors that should propagate as they are."""
    if isinstance(exc, socket.gaierror):
        return ImapErrorKind.DNS
    if isinstance(exc, TimeoutError):
        return ImapErrorKind.TIMEOUT
    if isinstance(exc, (ssl.SSLError, MailboxStarttlsError)):
        return ImapErrorKind.TLS
    if isinstance(exc, (imaplib.IMAP4.readonly, ParseError)):
        return ImapErrorKind.PROTOCOL
    if isinstance(exc, imaplib.IMAP4.abort):
        return ImapErrorKind.CONNECT
    if isinstance(exc, (imaplib.IMAP4.error, UnexpectedCommandStatusError)):
        message = _message_of(exc)
        if phase == "auth" or isinstance(exc, MailboxLoginError):
            return ImapErrorKind.PROTOCOL if response_code(message) in _TRANSIENT_LOGIN_CODES else ImapErrorKind.AUTH
        if phase == "connect":
            return ImapErrorKind.TLS if "STARTTLS" in message.upper() else ImapErrorKind.CONNECT
        return ImapErrorKind.PROTOCOL
    if isinstance(exc, (OSError, EOFError)):
        return ImapErrorKind.CONNECT
    return None


def _drop(client: imaplib.IMAP4) -> None:
    """Close the client's socket without talking to the server."""
    try:
        client.shutdown()
    except (OSError, AttributeError):
        pass
