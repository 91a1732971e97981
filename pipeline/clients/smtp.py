"""The SMTP client interface the send and probe code uses, and its real implementation over aiosmtplib.

Callers talk to an ``SmtpTransport`` only (``tests/harness/fake_smtp.py`` is its in-memory twin). Both methods
are synchronous: each call runs its own short-lived event loop, so they are safe from Dramatiq
worker threads and from code that already runs inside an event loop. Connection-level failures
surface as ``SmtpError`` with a kind the caller can act on; refusals by the server during the mail
transaction become verdicts in ``SendResult``. Messages carry the server's words and never the
password or token.

Every connection goes through the outbound guard (``netguard``), like IMAP: the host is resolved
once and checked against ``MAILPIPE_MAIL_ALLOWED_NETS`` (or ``SmtpSettings.allowed_nets``), the
socket goes to the checked address, and TLS verifies the certificate for the host name given.
Credentials over plaintext (``security: "none"``) and ``listed_only`` settings need the address
inside those networks; credentials with control characters are refused before connecting.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import inspect
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from pipeline.clients import netguard
from pipeline.clients.errors import ConnErrorKind
from pipeline.stages.endpoint_rules import PLAINTEXT_REASON
from pipeline.stages.netpolicy import Nets
from pipeline.stages.smtp_reply import (
    SmtpOutcome,
    SmtpVerdict,
    classify_error,
    classify_reply,
    overall_verdict,
)
from pipeline.stages.wire_text import unsafe_login

__all__ = [
    "HOST_NOT_ALLOWED",
    "AiosmtplibTransport",
    "PooledSmtpTransport",
    "ProbeResult",
    "SendResult",
    "SmtpError",
    "SmtpErrorKind",
    "SmtpSettings",
    "SmtpTransport",
    "envelope_recipients",
    "send_result",
]

log = logging.getLogger(__name__)

SECURITY_MODES = ("ssl", "starttls", "none")
MIN_SCRUB_LENGTH = 4
MIN_DATA_TIMEOUT = 120.0
FALLBACK_LOCAL_HOSTNAME = "localhost"
HOST_NOT_ALLOWED = "host_not_allowed"
NO_SMTPUTF8 = SmtpVerdict(
    SmtpOutcome.FAIL, None, None, "server lacks SMTPUTF8, needed for a non-ASCII address", "permanent_failure"
)
_UNSAFE_ADDRESS_CHARS = "\r\n\x00<>"
_T = TypeVar("_T")


SmtpErrorKind = ConnErrorKind
"""The shared connection-failure kinds (see pipeline.clients.errors)."""


class SmtpError(Exception):
    """A connection-level SMTP failure; ``message`` is the server's reply when there is one."""

    def __init__(self, kind: SmtpErrorKind, message: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.code = code
        self.reason = reason  # ours, e.g. HOST_NOT_ALLOWED (code is the server's reply code)

    @property
    def verdict(self) -> SmtpVerdict:
        """The failure as a verdict (retry for dns/connect/timeout, fail for tls/auth)."""
        prefix = f"{self.code} "
        text = self.message[len(prefix):] if self.code is not None and self.message.startswith(prefix) else self.message
        return classify_error(self.kind.value, text, self.code)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to submit mail; with a username, exactly one of password / oauth_token (XOAUTH2).

    ``allowed_nets``: the networks the guard lets through beyond public addresses (None: the
    ``MAILPIPE_MAIL_ALLOWED_NETS`` setting; ``netpolicy.ANY`` for the operator's own relay).
    ``listed_only``: why this connection must stay inside them even for a public address.
    """

    host: str
    port: int
    security: str
    username: str | None
    password: str | None = None
    oauth_token: str | None = None
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = None
    local_hostname: str | None = None
    allowed_nets: Nets | None = None
    listed_only: str | None = None

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError("security must be 'ssl', 'starttls' or 'none'")
        if self.password is not None and self.oauth_token is not None:
            raise ValueError("give at most one of password or oauth_token")
        if self.username is None and (self.password is not None or self.oauth_token is not None):
            raise ValueError("a password or oauth_token needs a username")
        if self.username is not None and self.password is None and self.oauth_token is None:
            raise ValueError("a username needs a password or oauth_token")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.local_hostname is not None and not _is_command_word(self.local_hostname):
            raise ValueError("local_hostname must be one word of printable ASCII")

    def __repr__(self) -> str:
        auth = "oauth" if self.oauth_token else "password" if self.password else "none"
        return (
            f"SmtpSettings(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, auth={auth}, timeout={self.timeout})"
        )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of a connection test; error_code is an SmtpErrorKind value when not ok."""

    ok: bool
    error_code: str | None
    message: str
    capabilities: frozenset[str] = frozenset()
    reason: str | None = None  # e.g. HOST_NOT_ALLOWED: the guard refused the host, nothing was connected


@dataclass(frozen=True, slots=True)
class SendResult:
    """Who got the message, who did not (and why), the server's final reply and the overall verdict."""

    accepted: tuple[str, ...]
    refused: dict[str, SmtpVerdict]
    response: str
    verdict: SmtpVerdict


@runtime_checkable
class SmtpTransport(Protocol):
    """Submits mail to an SMTP server; one connection per call."""

    def probe(self, settings: SmtpSettings) -> ProbeResult:
        """Connect, EHLO, secure, authenticate and QUIT; never raises."""
        ...

    def send(self, settings: SmtpSettings, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
             before_data: Callable[[], None] | None = None) -> SendResult:
        """Submit raw to rcpt_to; raise SmtpError only for connection-level failures.

        ``before_data`` is called once a recipient was accepted, right before the DATA command:
        from then on the server may have the message, so the caller records that first.
        """
        ...


def send_result(recipients: Sequence[str], refused: Mapping[str, SmtpVerdict], final: SmtpVerdict | None) -> SendResult:
    """Assemble a SendResult from RCPT refusals and the final reply (None: every RCPT was refused).

    When the final reply is not a success nobody got the message, so every recipient is refused
    (keeping its own RCPT verdict when it had one).
    """
    unique = tuple(dict.fromkeys(recipients))
    if final is None:
        final = overall_verdict(refused)
    if final.outcome is SmtpOutcome.SENT:
        accepted = tuple(r for r in unique if r not in refused)
        return SendResult(accepted, {r: refused[r] for r in unique if r in refused}, final.reply, final)
    return SendResult((), {r: refused.get(r, final) for r in unique}, final.reply, final)


def envelope_recipients(mail_from: str, rcpt_to: Sequence[str]) -> list[str]:
    """rcpt_to without duplicates, in order; ValueError if empty or an address would break the command line."""
    recipients = list(dict.fromkeys(rcpt_to))
    if not recipients:
        raise ValueError("rcpt_to is empty")
    blank_ok = [(mail_from, True)] + [(r, False) for r in recipients]  # MAIL FROM:<> is the null sender
    for address, may_be_blank in blank_ok:
        if any(ch in address for ch in _UNSAFE_ADDRESS_CHARS) or not (address.strip() or may_be_blank):
            raise ValueError(f"invalid address {address!r}")
    return recipients


class AiosmtplibTransport:
    """SmtpTransport over aiosmtplib; certificates are always verified."""

    def probe(self, settings: SmtpSettings) -> ProbeResult:
        """Connect, EHLO, STARTTLS when asked (failing if not offered), AUTH when given credentials, QUIT."""
        progress = _Progress()
        try:
            message = _run(lambda: _probe(settings, progress))
        except SmtpError as exc:
            return ProbeResult(False, exc.kind.value, exc.message, progress.capabilities, exc.reason)
        except Exception as exc:  # the contract is "never raises": report, and log for us
            log.exception("unexpected error probing SMTP %s:%s", settings.host, settings.port)
            text = _scrub(f"{type(exc).__name__}: {exc}", _secrets(settings))
            return ProbeResult(False, SmtpErrorKind.PROTOCOL.value, text, progress.capabilities)
        return ProbeResult(True, None, message, progress.capabilities)

    def send(self, settings: SmtpSettings, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
             before_data: Callable[[], None] | None = None) -> SendResult:
        """Submit raw (CRLF or LF line endings; dot-stuffing is done here) to rcpt_to.

        A connection lost or timing out after the message was transmitted raises SmtpError even
        though the server may have delivered it; ``before_data`` tells the caller when that window
        opens, so it can record it and never blindly retry.
        """
        recipients = envelope_recipients(mail_from, rcpt_to)
        return _run(lambda: _send(settings, mail_from, recipients, raw, before_data))


class PooledSmtpTransport(AiosmtplibTransport):
    """SmtpTransport that keeps authenticated connections open per mailbox and reuses them.

    Sessions live on one event loop in a background thread of this process; a send checks one
    out (or opens one), runs RSET and the transaction on it and puts it back. Concurrent sends for
    the same mailbox get sessions of their own (at most ``max_idle`` are kept per mailbox).

    A reused session the server has dropped (RSET or MAIL/RCPT failing with 421, a closed socket,
    a timeout) is closed and the transaction runs once on a fresh connection, but only while
    ``before_data`` has not been called: once DATA may have begun, the failure is raised exactly
    as on a fresh connection (the send run reconciles it and never resends blindly). Sessions idle
    for ``idle_seconds`` or used ``max_uses`` times are closed instead of reused. ``before_data``
    runs in a worker thread of the loop (it writes to the database) and is awaited before DATA.
    """

    def __init__(self, idle_seconds: float = 30.0, max_uses: int = 100, max_idle: int = 4) -> None:
        self.idle_seconds = idle_seconds
        self.max_uses = max_uses
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._idle: dict[tuple[Any, ...], list[_PooledSession]] = {}  # touched on the loop's thread only
        self.opened = 0  # sessions opened (a reused send opens none), for tests and benchmarks
        self.reconnects = 0  # reused sessions found dropped and replaced

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # a forked child starts its own
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="smtp-pool", daemon=True).start()
                self._loop, self._pid, self._idle = loop, os.getpid(), {}
            return self._loop

    def send(self, settings: SmtpSettings, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
             before_data: Callable[[], None] | None = None) -> SendResult:
        recipients = envelope_recipients(mail_from, rcpt_to)
        future = asyncio.run_coroutine_threadsafe(self._send(settings, mail_from, recipients, raw, before_data),
                                                  self._running_loop())
        return future.result()

    async def _send(self, settings: SmtpSettings, mail_from: str, recipients: list[str], raw: bytes,
                    before_data: Callable[[], None] | None) -> SendResult:
        key = _session_key(settings)
        data_started = False

        async def mark_data() -> None:
            nonlocal data_started
            if before_data is not None:
                await asyncio.to_thread(before_data)
            data_started = True

        held = await self._checkout(key)
        if held is not None:
            try:
                with _translated(_secrets(settings), "send"):
                    await held.client.rset()  # between transactions; also finds a dropped connection
                result = await _transaction(held.client, settings, mail_from, recipients, raw, mark_data)
            except SmtpError:
                held.close()
                if data_started:
                    raise
                self.reconnects += 1
            except BaseException:  # e.g. the run lost its lease in before_data: this session is mid-transaction
                held.close()
                raise
            else:
                if not (result.verdict.code == 421 and not data_started):
                    self._checkin(key, held, result)
                    return result
                held.close()  # the server is closing this session: once more on a new one
                self.reconnects += 1
        client, sock = await _open(settings, _Progress())
        fresh = _PooledSession(client, sock)
        self.opened += 1
        try:
            result = await _transaction(client, settings, mail_from, recipients, raw, mark_data)
        except BaseException:
            fresh.close()
            raise
        self._checkin(key, fresh, result)
        return result

    async def _checkout(self, key: tuple[Any, ...]) -> _PooledSession | None:
        idle = self._idle.get(key) or []
        while idle:
            held = idle.pop()
            if held.uses < self.max_uses and time.monotonic() - held.last_used <= self.idle_seconds \
                    and held.client.is_connected:
                return held
            if held.client.is_connected:
                await _quit(held.client)
            else:
                self.reconnects += 1  # the server hung up while it was idle
            held.close()
        return None

    def _checkin(self, key: tuple[Any, ...], held: _PooledSession, result: SendResult) -> None:
        idle = self._idle.setdefault(key, [])
        if result.verdict.code == 421 or not held.client.is_connected or len(idle) >= self.max_idle:
            held.close()
            return
        held.uses += 1
        held.last_used = time.monotonic()
        idle.append(held)
        asyncio.get_running_loop().call_later(self.idle_seconds + 1, self._reap)

    def _reap(self) -> None:
        """Close sessions idle past ``idle_seconds`` (so a quiet process holds no connections open)."""
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = [h for h in idle if now - h.last_used <= self.idle_seconds and h.client.is_connected]
            for h in idle:
                if h not in keep:
                    h.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        """Close every idle session (no QUIT) and stop the loop's thread."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None or self._pid != os.getpid():
            return

        def close_all() -> None:
            for sessions in self._idle.values():
                for held in sessions:
                    held.close()
            self._idle = {}
            loop.stop()

        loop.call_soon_threadsafe(close_all)


@dataclass(eq=False)
class _PooledSession:
    client: aiosmtplib.SMTP
    sock: socket.socket
    uses: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        _close(self.client, self.sock)


def _session_key(settings: SmtpSettings) -> tuple[Any, ...]:
    """Sessions are shared by sends with the same server, identity and credentials (a new password opens a new one)."""
    return (settings.host, settings.port, settings.security, settings.username, settings.password, settings.oauth_token,
            id(settings.ssl_context), settings.local_hostname, settings.allowed_nets, settings.listed_only)


@dataclass
class _Progress:
    """What a session has learnt so far, kept when it fails later: the greeting and EHLO extensions."""

    greeting: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)


async def _probe(settings: SmtpSettings, progress: _Progress) -> str:
    """The probe conversation; returns a one-line summary starting with the server's greeting."""
    async with _session(settings, progress):
        channel = {"ssl": "implicit TLS", "starttls": "STARTTLS", "none": "plaintext"}[settings.security]
        auth = "authenticated" if settings.username else "no credentials given"
        return f"{progress.greeting or settings.host} ({channel}, {auth})"


async def _send(settings: SmtpSettings, mail_from: str, recipients: list[str], raw: bytes,
                before_data: Callable[[], None] | None = None) -> SendResult:
    """One connection, one mail transaction."""
    async with _session(settings, _Progress()) as client:
        return await _transaction(client, settings, mail_from, recipients, raw, before_data)


async def _transaction(client: aiosmtplib.SMTP, settings: SmtpSettings, mail_from: str, recipients: list[str], raw: bytes,
                       before_data: Callable[[], object] | None = None) -> SendResult:
    """One mail transaction on a ready session: MAIL, RCPT per recipient, DATA; refusals become verdicts."""
    secrets = _secrets(settings)
    with _translated(secrets, "send"):
        options = _mail_options(client, mail_from, recipients, raw)
        if options is None:
            return send_result(recipients, {}, NO_SMTPUTF8)
        utf8 = "SMTPUTF8" in options
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            await _reset(client)
            return send_result(recipients, {}, classify_reply(exc.code, exc.message))
        refused: dict[str, SmtpVerdict] = {}
        for address in recipients:
            try:
                await client.rcpt(address, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[address] = classify_reply(exc.code, exc.message)
                if exc.code == 421:  # the server is closing the connection
                    return send_result(recipients, refused, refused[address])
        if len(refused) == len(recipients):
            await _reset(client)
            return send_result(recipients, refused, None)
        if before_data is not None:
            pending = before_data()
            if inspect.isawaitable(pending):
                await pending
        try:
            reply = await client.data(raw, timeout=max(settings.timeout, MIN_DATA_TIMEOUT))
        except aiosmtplib.SMTPDataError as exc:
            await _reset(client)
            return send_result(recipients, refused, classify_reply(exc.code, exc.message))
        return send_result(recipients, refused, classify_reply(reply.code, reply.message))


@asynccontextmanager
async def _session(settings: SmtpSettings, progress: _Progress) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected, secured and authenticated client; QUIT (best effort) on the way out.

    progress is filled in as the conversation goes, so a failed probe can still report it.
    """
    client, sock = await _open(settings, progress)
    try:
        yield client
        with _translated(_secrets(settings), "quit"):
            await _quit(client)
    finally:
        client.close()
        sock.close()  # the transport closed it already, unless the connection never got that far


async def _open(settings: SmtpSettings, progress: _Progress) -> tuple[aiosmtplib.SMTP, socket.socket]:
    """Connect (through the guard), EHLO, STARTTLS when asked, AUTH when given credentials."""
    secrets = _secrets(settings)
    with _translated(secrets, "connect"):
        _refuse_unsafe_text(settings)
        target = _checked(settings)  # a blocking lookup, on this call's private event loop
        sock = netguard.open_socket(target, settings.port, settings.timeout)
    try:
        client = aiosmtplib.SMTP(
            hostname=target.tls_name,
            port=None,
            sock=sock,
            timeout=settings.timeout,
            use_tls=settings.security == "ssl",
            start_tls=False,
            tls_context=_tls_context(settings),
            local_hostname=settings.local_hostname or _local_hostname(),
        )
    except BaseException:
        sock.close()
        raise
    connected = False
    try:
        with _translated(secrets, "connect"):
            greeting = await client.connect()
        connected = True
        progress.greeting = f"{greeting.code} {greeting.message.splitlines()[0] if greeting.message else ''}".strip()
        with _translated(secrets, "ehlo"):
            await client.ehlo()
        progress.capabilities = _extensions(client)
        if settings.security == "starttls":
            with _translated(secrets, "tls"):
                if not client.supports_extension("starttls"):
                    raise SmtpError(SmtpErrorKind.TLS, "server does not offer STARTTLS")
                await client.starttls()
            with _translated(secrets, "ehlo"):
                await client.ehlo()
            progress.capabilities = _extensions(client)
        if settings.username is not None:
            with _translated(secrets, "auth"):
                await _authenticate(client, settings)
    except BaseException:
        _close(client, sock, connected)
        raise
    return client, sock


def _close(client: aiosmtplib.SMTP, sock: socket.socket, connected: bool = True) -> None:
    """Close a session's connection without freeing its descriptor under a transport still closing.

    Once connected, the transport owns the socket and closes it itself (aiosmtplib may already
    have started that, e.g. on a 421); closing the socket here too would let a new connection reuse
    the descriptor while the old transport still has it registered with the event loop.
    """
    transport = client.transport
    client.close()
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    if not connected:
        sock.close()


def _refuse_unsafe_text(settings: SmtpSettings) -> None:
    """Refuse a host or credential that could break the command line, before any connection."""
    unsafe = unsafe_login(settings.host, settings.username, settings.password, settings.oauth_token)
    if unsafe is not None:
        raise SmtpError(SmtpErrorKind(unsafe.kind), unsafe.message)


def _checked(settings: SmtpSettings) -> netguard.CheckedHost:
    """Resolve and check the host (socket.gaierror for DNS failures); refusals become SmtpError."""
    nets = settings.allowed_nets if settings.allowed_nets is not None else netguard.mail_nets()
    plaintext_login = settings.security == "none" and settings.username is not None
    why = settings.listed_only or (PLAINTEXT_REASON if plaintext_login else None)
    try:
        return netguard.check_host(settings.host, nets, listed_only=why)
    except netguard.HostNotAllowed as exc:
        raise SmtpError(SmtpErrorKind.CONNECT, str(exc), reason=HOST_NOT_ALLOWED) from None


async def _authenticate(client: aiosmtplib.SMTP, settings: SmtpSettings) -> None:
    """AUTH XOAUTH2 with a token, else PLAIN (or LOGIN) as the server offers."""
    assert settings.username is not None
    methods = client.server_auth_methods
    if not client.supports_extension("auth"):
        await _auth_not_offered(client)
    if settings.oauth_token is not None:
        if "xoauth2" not in methods:
            raise SmtpError(SmtpErrorKind.AUTH, f"server does not offer AUTH XOAUTH2 (offers: {_offered(methods)})")
        await client.auth_xoauth2(settings.username, settings.oauth_token)
        return
    assert settings.password is not None
    if "plain" in methods:
        await client.auth_plain(settings.username, settings.password)
    elif "login" in methods:
        await client.auth_login(settings.username, settings.password)
    else:
        raise SmtpError(SmtpErrorKind.AUTH, f"server offers neither AUTH PLAIN nor LOGIN (offers: {_offered(methods)})")


async def _auth_not_offered(client: aiosmtplib.SMTP) -> None:
    """Fail because AUTH is not advertised, quoting what the server says to a bare AUTH (no credentials sent)."""
    reply = await client.execute_command(b"AUTH", b"PLAIN")
    if reply.code == 334:
        await client.execute_command(b"*")  # cancel the exchange it started anyway
    detail = f" ({reply.code} {reply.message})" if reply.code != 334 else ""
    raise SmtpError(SmtpErrorKind.PROTOCOL, f"server does not offer AUTH{detail}", reply.code if detail else None)


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT, ignoring a server that hangs up or answers oddly (the work is already done)."""
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused transaction, ignoring failures (the connection is about to close)."""
    if not client.is_connected:
        return
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        pass


def _mail_options(client: aiosmtplib.SMTP, mail_from: str, recipients: Sequence[str], raw: bytes) -> list[str] | None:
    """MAIL FROM parameters (SIZE, BODY=8BITMIME, SMTPUTF8); None when non-ASCII addresses cannot be sent."""
    options: list[str] = []
    if client.supports_extension("size"):
        options.append(f"SIZE={len(normalize_message_line_endings(raw))}")
    if not raw.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if not all(address.isascii() for address in (mail_from, *recipients)):
        if not client.supports_extension("smtputf8"):
            return None
        options.append("SMTPUTF8")
    return options


def _extensions(client: aiosmtplib.SMTP) -> frozenset[str]:
    """EHLO extension keywords, upper-case."""
    return frozenset(name.upper() for name in client.esmtp_extensions)


def _offered(methods: Sequence[str]) -> str:
    """AUTH mechanisms for a message."""
    return " ".join(m.upper() for m in methods) or "none"


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    """settings.ssl_context, else the system trust store (or SSL_CERT_FILE); None for plaintext."""
    if settings.security == "none":
        return None
    return settings.ssl_context or ssl.create_default_context()


@lru_cache(maxsize=1)
def _local_hostname() -> str:
    """This machine's FQDN for EHLO, or "localhost" when it is unusable on a command line."""
    name = socket.getfqdn()
    return name if _is_command_word(name) else FALLBACK_LOCAL_HOSTNAME


def _is_command_word(text: str) -> bool:
    """Whether text can go on an SMTP command line as one argument (printable ASCII, no spaces)."""
    return bool(text) and all(33 <= ord(ch) < 127 for ch in text)


def _run(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on a private event loop (in a helper thread if one is running here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtp") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _secrets(settings: SmtpSettings) -> frozenset[str]:
    """Strings that must never appear in a message: password, token, and their AUTH base64 forms.

    Secrets shorter than MIN_SCRUB_LENGTH are left alone: replacing "p" would mangle every message.
    """
    values = {v for v in (settings.password, settings.oauth_token) if v and len(v) >= MIN_SCRUB_LENGTH}
    if not values:
        return frozenset()
    user = settings.username or ""
    if settings.oauth_token:
        values.add(base64.b64encode(f"user={user}\x01auth=Bearer {settings.oauth_token}\x01\x01".encode()).decode())
    if settings.password:
        values.add(base64.b64encode(f"\x00{user}\x00{settings.password}".encode()).decode())
    for value in list(values):
        values.add(base64.b64encode(value.encode()).decode())
    return frozenset(values)


def _scrub(text: str, secrets: frozenset[str]) -> str:
    """Replace every secret in text with ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@contextmanager
def _translated(secrets: frozenset[str], phase: str) -> Iterator[None]:
    """Turn aiosmtplib/socket/ssl exceptions into SmtpError for the given phase, scrubbing secrets."""
    try:
        yield
    except SmtpError as exc:
        raise SmtpError(exc.kind, _scrub(exc.message, secrets), exc.code, exc.reason) from None
    except Exception as exc:
        kind = _kind_of(exc, phase)
        if kind is None:
            raise
        code: int | None = None
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            code, text = exc.code, f"{exc.code} {exc.message}"
        else:
            text = _message_of(exc)
        raise SmtpError(kind, _scrub(text, secrets), code) from None


def _kind_of(exc: BaseException, phase: str) -> SmtpErrorKind | None:
    """Classify an exception (looking through its causes); None for programming errors."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_kind(exc.code, phase)
    for link in _causes(exc):
        if isinstance(link, socket.gaierror):
            return SmtpErrorKind.DNS
        if isinstance(link, ssl.SSLError):
            return SmtpErrorKind.TLS
    if isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return SmtpErrorKind.TIMEOUT
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError, EOFError)):
        return SmtpErrorKind.TLS if phase == "tls" else SmtpErrorKind.CONNECT
    if isinstance(exc, aiosmtplib.SMTPException):
        return SmtpErrorKind.TLS if phase == "tls" else SmtpErrorKind.PROTOCOL
    return None


def _reply_kind(code: int, phase: str) -> SmtpErrorKind:
    """The kind of an unexpected server reply in a phase (a 5xx to AUTH means bad credentials)."""
    if phase == "connect":
        return SmtpErrorKind.CONNECT
    if phase == "tls":
        return SmtpErrorKind.TLS
    if phase == "auth" and 500 <= code < 600:
        return SmtpErrorKind.AUTH
    return SmtpErrorKind.PROTOCOL


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and its __cause__/__context__ chain (cycle-safe)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _message_of(exc: BaseException) -> str:
    """The human text of an exception."""
    if isinstance(exc, aiosmtplib.SMTPException) and exc.message:
        return exc.message
    return str(exc) or type(exc).__name__
