"""A loopback SMTP submission server on aiosmtpd: STARTTLS or implicit TLS, AUTH, scripted failures.

Accepted mail is recorded in ``messages`` as (mail_from, rcpt_tos, raw bytes). ``fail_with`` makes
the server answer a chosen code at the MAIL, RCPT or DATA stage, for retry and bounce tests.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.harness.certs import make_self_signed
from tests.harness.ports import free_port

__all__ = ["ScriptedFailure", "SmtpServer"]

STAGES = ("mail", "rcpt", "data")
XOAUTH2_ERROR = {"status": "400", "schemes": "Bearer", "scope": "https://mail.google.com/"}


@dataclass
class ScriptedFailure:
    """Answer code/text at stage, for the next `remaining` commands (None: until cleared)."""

    code: int
    text: str
    stage: str
    remaining: int | None


class _Handler:
    """aiosmtpd handler: records accepted mail, applies scripted failures, checks XOAUTH2 tokens."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        """Accept the sender unless a failure is scripted for MAIL."""
        failure = self._server._take_failure("mail")
        if failure is not None:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept a recipient unless a failure is scripted for RCPT."""
        hook = self._server.on_rcpt
        if hook is not None:  # test hook: runs before the recipient is answered
            hook(address)
        failure = self._server._take_failure("rcpt")
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message unless a failure is scripted for DATA."""
        failure = self._server._take_failure("data")
        if failure is not None:
            return failure
        raw = envelope.original_content or b""
        self._server._record(envelope.mail_from or "", list(envelope.rcpt_tos), raw, tls=session.ssl is not None)
        hook = self._server.on_message
        if hook is not None:  # test hook: runs after the message is stored, before the 250 goes out
            hook(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        return "250 Message accepted for delivery"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """XOAUTH2 like Gmail: on a bad token send the JSON error challenge, then 535."""
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = answer
        user, token = _parse_xoauth2(blob)
        check = self._server.token_check
        if user is not None and token is not None and (check(user, token) if check is not None else self._server.tokens.get(user) == token):
            self._server._note_login("XOAUTH2", user)
            return AuthResult(success=True, auth_data=user)
        await server.challenge_auth(json.dumps(XOAUTH2_ERROR))
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    """Controller that keeps aiosmtpd's AUTH-without-TLS warning quiet (implicit TLS *is* TLS)."""

    def __init__(self, *args: Any, on_session: Callable[[SMTP], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_session = on_session

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            proto = cast(SMTP, super().factory())  # type: ignore[no-untyped-call]
        if self.on_session is not None:
            self.on_session(proto)
        return proto


class SmtpServer:
    """aiosmtpd Controller on a free loopback port with TLS and mandatory AUTH."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        *,
        cert_path: str | os.PathLike[str] | None = None,
        key_path: str | os.PathLike[str] | None = None,
        implicit_tls: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.users: dict[str, str] = dict(users or {})
        self.tokens: dict[str, str] = dict(tokens or {})
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.tls: list[bool] = []  # per accepted message: whether the session was encrypted
        self.on_message: Callable[[str, list[str], bytes], None] | None = None
        self.on_rcpt: Callable[[str], None] | None = None
        self.token_check: Callable[[str, str], bool] | None = None  # XOAUTH2: ask a token server instead of ``tokens``
        self.logins: list[tuple[str, str]] = []
        self.implicit_tls = implicit_tls
        self._host = host
        self._port = 0
        self._lock = threading.Lock()
        self._failure: ScriptedFailure | None = None
        self._controller: Controller | None = None
        self.sessions: list[SMTP] = []  # every connection accepted (the protocol objects), oldest first
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if cert_path is None or key_path is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="mailpipe-smtp-")
            cert_path, key_path = make_self_signed(self._scratch.name)
        self._cert = Path(cert_path)
        self._key = Path(key_path)

    @property
    def host(self) -> str:
        """Listening address."""
        return self._host

    @property
    def port(self) -> int:
        """Listening port (0 until started)."""
        return self._port

    @property
    def cert_path(self) -> Path:
        """The server certificate."""
        return self._cert

    def start(self) -> None:
        """Bind a free port and start serving in aiosmtpd's thread."""
        if self._controller is not None:
            return
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self._cert, self._key)
        common: dict[str, Any] = {
            "hostname": self._host,
            "server_hostname": "localhost",
            "auth_required": True,
            "authenticator": self._authenticate,
        }
        if self.implicit_tls:
            # aiosmtpd#281: with implicit TLS it does not know the session is encrypted, so AUTH
            # is only advertised when auth_require_tls is off.
            extra: dict[str, Any] = {"ssl_context": tls, "auth_require_tls": False}
        else:
            extra = {"tls_context": tls, "require_starttls": True, "auth_require_tls": True}
        for _attempt in range(3):
            self._port = free_port(self._host)
            controller = _Controller(_Handler(self), port=self._port, on_session=self._note_session, **common, **extra)
            try:
                controller.start()
            except (OSError, RuntimeError):
                continue
            self._controller = controller
            return
        raise RuntimeError("could not start the SMTP test server")

    def stop(self) -> None:
        """Stop serving."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def close(self) -> None:
        """Stop serving and delete generated certificates."""
        self.stop()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _note_session(self, proto: SMTP) -> None:
        with self._lock:
            self.sessions.append(proto)

    def drop_connections(self) -> int:
        """Close every open client connection from the server side (as a server's idle timeout does); returns how many."""
        controller = self._controller
        if controller is None:
            return 0
        with self._lock:
            open_ = [p for p in self.sessions if p.transport is not None and not p.transport.is_closing()]
        done = threading.Event()

        def close_all() -> None:
            for p in open_:
                if p.transport is not None:
                    p.transport.close()
            done.set()

        controller.loop.call_soon_threadsafe(close_all)
        done.wait(5)
        return len(open_)

    def fail_with(self, code: int, text: str, stage: str = "rcpt", times: int | None = None) -> None:
        """Answer `code text` at stage ("mail", "rcpt" or "data"), `times` times or until cleared."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        with self._lock:
            self._failure = ScriptedFailure(code, text, stage, times)

    def clear_failure(self) -> None:
        """Go back to accepting everything."""
        with self._lock:
            self._failure = None

    def _take_failure(self, stage: str) -> str | None:
        """Return the scripted reply for stage, counting it down, or None."""
        with self._lock:
            failure = self._failure
            if failure is None or failure.stage != stage:
                return None
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failure = None
            return f"{failure.code} {failure.text}"

    def _record(self, mail_from: str, rcpt_tos: list[str], raw: bytes, *, tls: bool = False) -> None:
        """Store one accepted message."""
        with self._lock:
            self.messages.append((mail_from, rcpt_tos, raw))
            self.tls.append(tls)

    def _note_login(self, mechanism: str, user: str) -> None:
        """Store one successful login."""
        with self._lock:
            self.logins.append((mechanism, user))

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """Check PLAIN/LOGIN credentials; handled=False on failure so aiosmtpd answers 535."""
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if user in self.users and self.users[user] == password:
                self._note_login(mechanism, user)
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


def _parse_xoauth2(blob: bytes) -> tuple[str | None, str | None]:
    """Split an XOAUTH2 initial response into (user, bearer token)."""
    user = token = None
    for part in blob.decode("utf-8", "replace").split("\x01"):
        if part.startswith("user="):
            user = part[len("user="):]
        elif part.lower().startswith("auth=bearer "):
            token = part[len("auth=bearer "):]
    return user, token
