"""The real SMTP transport (aiosmtplib) against the aiosmtpd harness and a few hand-scripted servers."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.clients.smtp import AiosmtplibTransport, SmtpError, SmtpErrorKind, SmtpSettings, SmtpTransport
from pipeline.stages.smtp_reply import SmtpOutcome
from tests.harness.fixtures import ALICE_EMAIL, ALICE_PASSWORD, ALICE_TOKEN
from tests.harness.ports import free_port
from tests.harness.smtp import SmtpServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(30),
]

MakeSettings = Callable[..., SmtpSettings]
WRONG_PASSWORD = "Wrong-Passw0rd-not-alice"
RAW = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Caf\xc3\xa9 at noon.\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
)


@pytest.fixture
def transport() -> AiosmtplibTransport:
    return AiosmtplibTransport()


@pytest.fixture
def settings_for(smtp_server: SmtpServer, tls_context_for_tests: Any) -> MakeSettings:
    """Settings for the STARTTLS harness server as alice, with overrides."""

    def make(**overrides: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": smtp_server.host,
            "port": smtp_server.port,
            "security": "starttls",
            "username": ALICE_EMAIL,
            "password": ALICE_PASSWORD,
            "ssl_context": tls_context_for_tests,
            "timeout": 5.0,
            "local_hostname": "client.example.test",
        }
        values.update(overrides)
        return SmtpSettings(**values)

    return make


@pytest.fixture
def implicit_tls_server(test_certs: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """A port-465 style server (TLS from the first byte) with alice's password and token."""
    server = SmtpServer(
        users={ALICE_EMAIL: ALICE_PASSWORD},
        tokens={ALICE_EMAIL: ALICE_TOKEN},
        cert_path=test_certs[0],
        key_path=test_certs[1],
        implicit_tls=True,
    )
    server.start()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_extra_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an explicit ssl_context may trust the self-signed test certificate."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


class ScriptedServer:
    """A plaintext SMTP server on loopback answering each command line with answer(line)."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve connections one after another until the listener is closed."""
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5.0)
            with conn, conn.makefile("rb") as reader:
                conn.sendall(b"220 scripted.test ESMTP\r\n")
                for raw in reader:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    self.lines.append(line)
                    conn.sendall(self._answer(line).encode() + b"\r\n")
                    if line.upper() == "QUIT":
                        break

    def close(self) -> None:
        """Stop accepting connections."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


StartScripted = Callable[[Callable[[str], str]], ScriptedServer]


def ehlo_then_bye(extension: str) -> Callable[[str], str]:
    """Answers that advertise one EHLO extension and say goodbye to everything else."""
    return lambda line: f"250-scripted.test\r\n250 {extension}" if line.startswith("EHLO") else "221 bye"


@pytest.fixture
def scripted() -> Iterator[StartScripted]:
    """Factory for ScriptedServer instances, all closed after the test."""
    servers: list[ScriptedServer] = []

    def start(answer: Callable[[str], str]) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_real_transport_is_an_smtp_transport(transport: AiosmtplibTransport) -> None:
    """The aiosmtplib transport satisfies the SmtpTransport protocol."""
    assert isinstance(transport, SmtpTransport)


# Probing ---------------------------------------------------------------------------------------


def test_probe_starttls_with_password(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """STARTTLS then AUTH PLAIN succeeds and reports the post-TLS EHLO extensions."""
    result = transport.probe(settings_for())
    assert result.ok, result.message
    assert result.error_code is None
    assert result.message.startswith("220 ")
    assert {"AUTH", "SIZE", "8BITMIME"} <= result.capabilities
    assert "STARTTLS" not in result.capabilities  # extensions are the ones offered inside TLS
    assert smtp_server.logins == [("PLAIN", ALICE_EMAIL)]


def test_probe_wrong_password_is_auth_with_server_text(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """A wrong password reports the server's 535 reply and never the password."""
    result = transport.probe(settings_for(password=WRONG_PASSWORD))
    assert (result.ok, result.error_code) == (False, "auth")
    assert "535 5.7.8 Authentication credentials invalid" in result.message
    assert WRONG_PASSWORD not in result.message
    assert base64.b64encode(WRONG_PASSWORD.encode()).decode() not in result.message
    assert "AUTH" in result.capabilities
    assert smtp_server.logins == []


def test_probe_plaintext_to_starttls_only_server(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """Without STARTTLS the server's 530 is reported and no credentials are sent in the clear."""
    result = transport.probe(settings_for(security="none", ssl_context=None))
    assert (result.ok, result.error_code) == (False, "protocol")
    assert "530 Must issue a STARTTLS command first" in result.message
    assert "STARTTLS" in result.capabilities
    assert smtp_server.logins == []


def test_probe_without_credentials_only_secures_the_channel(
    transport: AiosmtplibTransport, settings_for: MakeSettings
) -> None:
    """With no username the probe stops after STARTTLS and EHLO."""
    result = transport.probe(settings_for(username=None, password=None))
    assert result.ok, result.message
    assert "no credentials" in result.message


def test_probe_implicit_tls(
    transport: AiosmtplibTransport, implicit_tls_server: SmtpServer, tls_context_for_tests: Any
) -> None:
    """security="ssl" speaks TLS from the first byte and logs in."""
    settings = SmtpSettings(
        implicit_tls_server.host, implicit_tls_server.port, "ssl", ALICE_EMAIL, ALICE_PASSWORD,
        ssl_context=tls_context_for_tests, timeout=5.0,
    )
    result = transport.probe(settings)
    assert result.ok, result.message
    assert "implicit TLS" in result.message
    assert implicit_tls_server.logins == [("PLAIN", ALICE_EMAIL)]


def test_probe_untrusted_certificate_starttls(transport: AiosmtplibTransport, settings_for: MakeSettings) -> None:
    """Without a context that trusts it, the self-signed certificate fails verification after STARTTLS."""
    result = transport.probe(settings_for(ssl_context=None))
    assert (result.ok, result.error_code) == (False, "tls")
    assert "CERTIFICATE_VERIFY_FAILED" in result.message


def test_probe_untrusted_certificate_implicit_tls(
    transport: AiosmtplibTransport, implicit_tls_server: SmtpServer
) -> None:
    """The same verification failure on an implicit-TLS port is a tls error too, not a connect error."""
    settings = SmtpSettings("localhost", implicit_tls_server.port, "ssl", ALICE_EMAIL, ALICE_PASSWORD, timeout=5.0)
    result = transport.probe(settings)
    assert (result.ok, result.error_code) == (False, "tls")
    assert "CERTIFICATE_VERIFY_FAILED" in result.message


def test_probe_starttls_not_offered(transport: AiosmtplibTransport, scripted: StartScripted) -> None:
    """Asking for STARTTLS from a server that does not offer it fails as tls, before any AUTH."""
    server = scripted(ehlo_then_bye("AUTH PLAIN"))
    settings = SmtpSettings("127.0.0.1", server.port, "starttls", ALICE_EMAIL, ALICE_PASSWORD, timeout=5.0)
    result = transport.probe(settings)
    assert (result.ok, result.error_code) == (False, "tls")
    assert "does not offer STARTTLS" in result.message
    assert not any(line.upper().startswith("AUTH") for line in server.lines)


def test_secrets_echoed_by_the_server_are_scrubbed(transport: AiosmtplibTransport, scripted: StartScripted) -> None:
    """A server that echoes the AUTH PLAIN blob back cannot leak the password through the message."""

    def answer(line: str) -> str:
        if line.startswith("EHLO"):
            return "250-scripted.test\r\n250 AUTH PLAIN LOGIN"
        if line.upper().startswith("AUTH"):
            return f"535 5.7.8 rejected {line}"
        return "221 bye"

    server = scripted(answer)
    password = "Echo-Me-Secret-123"
    result = transport.probe(SmtpSettings("127.0.0.1", server.port, "none", "bob@example.test", password, timeout=5.0))
    assert (result.ok, result.error_code) == (False, "auth")
    blob = base64.b64encode(f"\0bob@example.test\0{password}".encode()).decode()
    assert any(blob in line for line in server.lines)  # it really was echoed
    assert blob not in result.message and password not in result.message
    assert "535 5.7.8 rejected AUTH PLAIN ***" in result.message


def test_probe_closed_port_is_connect(transport: AiosmtplibTransport, tls_context_for_tests: Any) -> None:
    """Nothing listening means a connect error."""
    settings = SmtpSettings(
        "127.0.0.1", free_port(), "starttls", ALICE_EMAIL, ALICE_PASSWORD,
        ssl_context=tls_context_for_tests, timeout=2.0,
    )
    result = transport.probe(settings)
    assert (result.ok, result.error_code) == (False, "connect")
    assert "refused" in result.message.lower() or "connect call failed" in result.message.lower()


def test_probe_unknown_host_is_dns(transport: AiosmtplibTransport) -> None:
    """A name that cannot resolve is a dns error."""
    settings = SmtpSettings("nonexistent.invalid", 587, "starttls", ALICE_EMAIL, ALICE_PASSWORD, timeout=2.0)
    result = transport.probe(settings)
    assert (result.ok, result.error_code) == (False, "dns")
    assert "nonexistent.invalid" in result.message


def test_probe_silent_server_times_out_in_time(transport: AiosmtplibTransport) -> None:
    """A server that accepts TCP but never greets fails as timeout within the configured timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        settings = SmtpSettings("127.0.0.1", port, "starttls", ALICE_EMAIL, ALICE_PASSWORD, timeout=1.0)
        started = time.monotonic()
        result = transport.probe(settings)
        elapsed = time.monotonic() - started
    assert (result.ok, result.error_code) == (False, "timeout")
    assert 0.9 <= elapsed < 2.5


def test_probe_xoauth2_good_and_bad_token(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """XOAUTH2 logs in with the right token; a wrong one is auth with the 535 text and no token."""
    good = transport.probe(settings_for(password=None, oauth_token=ALICE_TOKEN))
    assert good.ok, good.message
    assert smtp_server.logins == [("XOAUTH2", ALICE_EMAIL)]
    bad_token = "ya29.not-the-right-token"
    bad = transport.probe(settings_for(password=None, oauth_token=bad_token))
    assert (bad.ok, bad.error_code) == (False, "auth")
    assert "535" in bad.message
    assert bad_token not in bad.message


def test_xoauth2_not_offered_is_auth(transport: AiosmtplibTransport, scripted: StartScripted) -> None:
    """A token for a server without AUTH XOAUTH2 fails as auth without sending the token."""
    server = scripted(ehlo_then_bye("AUTH PLAIN LOGIN"))
    settings = SmtpSettings("127.0.0.1", server.port, "none", "bob@example.test", oauth_token="tok-123456", timeout=5.0)
    result = transport.probe(settings)
    assert (result.ok, result.error_code) == (False, "auth")
    assert "XOAUTH2" in result.message and "PLAIN LOGIN" in result.message
    assert not any(line.upper().startswith("AUTH") for line in server.lines)


def test_probe_from_inside_a_running_event_loop(transport: AiosmtplibTransport, settings_for: MakeSettings) -> None:
    """Synchronous calls work even when the caller is itself inside an event loop."""

    async def call() -> bool:
        return transport.probe(settings_for()).ok

    assert asyncio.run(call())


# Sending ---------------------------------------------------------------------------------------


def test_send_delivers_exact_bytes_and_envelope(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """The server receives the exact message bytes (dot-stuffing undone) and the envelope given."""
    result = transport.send(settings_for(), ALICE_EMAIL, ["bob@example.test", "carol@example.test"], RAW)
    assert result.accepted == ("bob@example.test", "carol@example.test")
    assert result.refused == {}
    assert result.response == "250 Message accepted for delivery"
    assert result.verdict.outcome is SmtpOutcome.SENT
    assert smtp_server.messages == [(ALICE_EMAIL, ["bob@example.test", "carol@example.test"], RAW)]


def test_send_over_implicit_tls(
    transport: AiosmtplibTransport, implicit_tls_server: SmtpServer, tls_context_for_tests: Any
) -> None:
    """Sending works on an implicit-TLS port too."""
    settings = SmtpSettings(
        implicit_tls_server.host, implicit_tls_server.port, "ssl", ALICE_EMAIL, password=None, oauth_token=ALICE_TOKEN,
        ssl_context=tls_context_for_tests, timeout=5.0,
    )
    result = transport.send(settings, ALICE_EMAIL, ["bob@example.test"], RAW)
    assert result.verdict.outcome is SmtpOutcome.SENT
    assert implicit_tls_server.messages == [(ALICE_EMAIL, ["bob@example.test"], RAW)]


def test_send_greylisted_at_data_is_retry(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """A 451 at DATA comes back as a retry verdict for everyone, not as an exception."""
    smtp_server.fail_with(451, "4.7.1 Greylisted, try again later", stage="data", times=1)
    result = transport.send(settings_for(), ALICE_EMAIL, ["bob@example.test"], RAW)
    assert result.accepted == ()
    assert result.verdict.outcome is SmtpOutcome.RETRY
    assert result.verdict.error_code == "greylisted"
    assert result.response == "451 4.7.1 Greylisted, try again later"
    assert result.refused["bob@example.test"] == result.verdict
    assert smtp_server.messages == []


def test_send_one_recipient_refused(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """A 550 for the first of two recipients: the second gets the mail, the first is mailbox_unavailable."""
    rejection = "5.1.1 <bob@example.test>: Recipient address rejected: User unknown"
    smtp_server.fail_with(550, rejection, stage="rcpt", times=1)
    result = transport.send(settings_for(), ALICE_EMAIL, ["bob@example.test", "carol@example.test"], RAW)
    assert result.accepted == ("carol@example.test",)
    refusal = result.refused["bob@example.test"]
    assert (refusal.outcome, refusal.code, refusal.enhanced, refusal.error_code) == (
        SmtpOutcome.FAIL, 550, "5.1.1", "mailbox_unavailable",
    )
    assert result.verdict.outcome is SmtpOutcome.SENT
    assert smtp_server.messages == [(ALICE_EMAIL, ["carol@example.test"], RAW)]


def test_send_all_recipients_refused(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """When every RCPT is refused nothing is transmitted and the refusal is the verdict."""
    smtp_server.fail_with(550, "5.1.1 User unknown", stage="rcpt", times=2)
    result = transport.send(settings_for(), ALICE_EMAIL, ["bob@example.test", "carol@example.test"], RAW)
    assert result.accepted == ()
    assert set(result.refused) == {"bob@example.test", "carol@example.test"}
    assert result.verdict.error_code == "mailbox_unavailable"
    assert smtp_server.messages == []


def test_send_sender_refused(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """A refused MAIL FROM is a verdict for every recipient, not an exception."""
    smtp_server.fail_with(553, "5.7.1 Sender address rejected: not owned by user", stage="mail", times=1)
    result = transport.send(settings_for(), "mallory@example.test", ["bob@example.test"], RAW)
    assert result.accepted == ()
    assert (result.verdict.outcome, result.verdict.error_code) == (SmtpOutcome.FAIL, "relay_denied")
    assert smtp_server.messages == []


def test_send_wrong_password_raises_auth(transport: AiosmtplibTransport, settings_for: MakeSettings) -> None:
    """Connection-level failures raise SmtpError; the message keeps the server's words only."""
    with pytest.raises(SmtpError) as caught:
        transport.send(settings_for(password=WRONG_PASSWORD), ALICE_EMAIL, ["bob@example.test"], RAW)
    assert caught.value.kind is SmtpErrorKind.AUTH
    assert caught.value.code == 535
    assert WRONG_PASSWORD not in str(caught.value)
    assert caught.value.verdict.error_code == "auth_failed"


def test_send_closed_port_raises_connect(transport: AiosmtplibTransport) -> None:
    """A send to a closed port raises a connect error whose verdict says retry."""
    with pytest.raises(SmtpError) as caught:
        transport.send(SmtpSettings("127.0.0.1", free_port(), "none", None, timeout=2.0), "a@x.test", ["b@x.test"], RAW)
    assert caught.value.kind is SmtpErrorKind.CONNECT
    assert caught.value.verdict.outcome is SmtpOutcome.RETRY


def test_send_from_worker_threads(
    transport: AiosmtplibTransport, smtp_server: SmtpServer, settings_for: MakeSettings
) -> None:
    """Concurrent sends from several threads (as Dramatiq workers do) each use their own loop and all arrive."""
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            transport.send(settings_for(), ALICE_EMAIL, [f"r{i}@example.test"], RAW)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(m[1][0] for m in smtp_server.messages) == [f"r{i}@example.test" for i in range(4)]
