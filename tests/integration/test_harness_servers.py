"""The loopback test servers themselves: Dovecot (IMAP + doveadm helpers) and the aiosmtpd server."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.harness.dovecot import Dovecot
from tests.harness.fixtures import ALICE_EMAIL, ALICE_PASSWORD, ALICE_TOKEN
from tests.harness.ports import port_open
from tests.harness.smtp import SmtpServer

pytestmark = pytest.mark.integration

RAW = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\nMessage-ID: <h1@example.test>\r\n\r\nHi!\r\n"


def _imap_status(client: imaplib.IMAP4, folder: str) -> bytes:
    typ, data = client.status(folder, "(MESSAGES UIDNEXT UIDVALIDITY)")
    assert typ == "OK"
    assert isinstance(data[0], bytes)
    return data[0]


# -- Dovecot ---------------------------------------------------------------------------------


def test_login_over_plain_starttls_and_implicit_tls(dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext) -> None:
    plain = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    assert plain.login(ALICE_EMAIL, ALICE_PASSWORD)[0] == "OK"
    plain.logout()

    starttls = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    assert starttls.starttls(tls_context_for_tests)[0] == "OK"
    assert starttls.login(ALICE_EMAIL, ALICE_PASSWORD)[0] == "OK"
    starttls.logout()

    implicit = imaplib.IMAP4_SSL(dovecot.host, dovecot.tls_port, ssl_context=tls_context_for_tests, timeout=5)
    assert implicit.login(ALICE_EMAIL, ALICE_PASSWORD)[0] == "OK"
    typ, folders = implicit.list()
    assert typ == "OK"
    assert any(b"\\Sent" in line and line.endswith(b" Sent") for line in folders if isinstance(line, bytes))
    implicit.logout()


def test_xoauth2_accepts_the_token_as_password(dovecot: Dovecot) -> None:
    dovecot.add_user("tok@example.test", "tok-secret-1")
    client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    assert client.authenticate("XOAUTH2", lambda _: b"user=tok@example.test\x01auth=Bearer tok-secret-1\x01\x01")[0] == "OK"
    client.logout()


def test_users_added_after_start_can_log_in_at_once(dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.add_user(f"late{n}@example.test", f"late-pass-{n}")
        client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
        assert client.login(f"late{n}@example.test", f"late-pass-{n}")[0] == "OK"
        client.logout()


def test_wrong_password_fails_fast(dovecot: Dovecot) -> None:
    for _attempt in range(2):
        client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(ALICE_EMAIL, "wrong")
        assert time.monotonic() - started < 1.5  # no growing anvil penalty
        client.shutdown()


def test_seed_and_read_flags_status_and_dates(dovecot: Dovecot) -> None:
    user = "seed@example.test"
    dovecot.add_user(user, "seed-pass")
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    plain = dovecot.seed(user, "INBOX", RAW)
    flagged = dovecot.seed(user, "INBOX", [RAW, RAW], flags=["\\Seen", "\\Flagged", "$Work"], when=when)
    assert plain == [1]
    assert flagged == [2, 3]
    assert dovecot.flags(user, "INBOX") == {
        1: frozenset(),
        2: frozenset({"\\Seen", "\\Flagged", "$Work"}),
        3: frozenset({"\\Seen", "\\Flagged", "$Work"}),
    }
    status = dovecot.status(user, "INBOX")
    assert (status["messages"], status["uidnext"]) == (3, 4)
    assert status["uidvalidity"] > 0 and status["highestmodseq"] > 0

    client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    client.login(user, "seed-pass")
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", "2", "(INTERNALDATE BODY.PEEK[])")
    assert typ == "OK"
    assert isinstance(data[0], tuple)
    assert b'"06-May-2024 07:08:09 +0000"' in data[0][0]
    assert data[0][1] == RAW
    client.logout()


def test_doveadm_helpers_change_what_imap_clients_see(dovecot: Dovecot) -> None:
    user = "ops@example.test"
    dovecot.add_user(user, "ops-pass")
    dovecot.seed(user, "INBOX", [RAW, RAW, RAW])
    dovecot.set_uidvalidity(user, "INBOX", 4242)
    dovecot.expunge(user, "INBOX", 2)
    dovecot.add_flags(user, "INBOX", [1, 3], ["\\Answered"])
    dovecot.create_folder(user, "Archive", special_use="\\Archive")
    dovecot.create_folder(user, "Clients/Acme")

    client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    client.login(user, "ops-pass")
    assert _imap_status(client, "INBOX") == b"INBOX (MESSAGES 2 UIDNEXT 4 UIDVALIDITY 4242)"
    _typ, folders = client.list()
    lines = [line for line in folders if isinstance(line, bytes)]
    assert any(b"\\Archive" in line and line.endswith(b" Archive") for line in lines)
    assert any(line.endswith(b" Clients/Acme") for line in lines)
    client.logout()
    assert dovecot.flags(user, "INBOX") == {1: frozenset({"\\Answered"}), 3: frozenset({"\\Answered"})}


def test_bulk_seeding_two_thousand_messages_takes_seconds(dovecot: Dovecot) -> None:
    user = "bulk@example.test"
    dovecot.add_user(user, "bulk-pass")
    messages = [RAW.replace(b"<h1@", f"<bulk-{n}@".encode()) for n in range(2000)]
    started = time.monotonic()
    uids = dovecot.seed(user, "INBOX", messages)
    elapsed = time.monotonic() - started
    assert uids == list(range(1, 2001))
    assert elapsed < 10, f"seeding 2000 messages took {elapsed:.1f}s"

    client = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    client.login(user, "bulk-pass")
    client.select("INBOX", readonly=True)
    _typ, data = client.uid("FETCH", "1777", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert isinstance(data[0], tuple) and b"<bulk-1776@example.test>" in data[0][1]
    client.logout()


def test_stop_and_start_keep_the_mail_and_the_ports(fresh_dovecot: Dovecot) -> None:
    fresh_dovecot.seed(ALICE_EMAIL, "INBOX", RAW)
    port, tls_port = fresh_dovecot.port, fresh_dovecot.tls_port
    fresh_dovecot.stop()
    assert not port_open(fresh_dovecot.host, port)
    with pytest.raises(RuntimeError):
        fresh_dovecot.status(ALICE_EMAIL, "INBOX")
    fresh_dovecot.start()
    assert (fresh_dovecot.port, fresh_dovecot.tls_port) == (port, tls_port)
    client = imaplib.IMAP4(fresh_dovecot.host, port, timeout=5)
    client.login(ALICE_EMAIL, ALICE_PASSWORD)
    assert _imap_status(client, "INBOX").startswith(b"INBOX (MESSAGES 1 UIDNEXT 2 ")
    client.logout()


def test_instances_are_independent(test_certs: tuple[Path, Path]) -> None:
    with Dovecot(*test_certs) as one, Dovecot(*test_certs) as two:
        one.add_user(ALICE_EMAIL, "one-pass")
        two.add_user(ALICE_EMAIL, "two-pass")
        one.seed(ALICE_EMAIL, "INBOX", [RAW, RAW])
        assert len({one.port, one.tls_port, two.port, two.tls_port}) == 4
        assert one.status(ALICE_EMAIL, "INBOX")["messages"] == 2
        assert two.status(ALICE_EMAIL, "INBOX")["messages"] == 0
        client = imaplib.IMAP4(two.host, two.port, timeout=5)
        with pytest.raises(imaplib.IMAP4.error):
            client.login(ALICE_EMAIL, "one-pass")
        client.shutdown()


# -- SMTP ------------------------------------------------------------------------------------


def _send(server: SmtpServer, context: ssl.SSLContext, **auth: Any) -> object:
    """Submit RAW over STARTTLS (or implicit TLS) and return aiosmtplib's result."""
    options: dict[str, Any] = {"use_tls": True} if server.implicit_tls else {"start_tls": True}
    options.update(auth)
    return asyncio.run(
        aiosmtplib.send(
            RAW,
            sender=ALICE_EMAIL,
            recipients=["b@example.test", "c@example.test"],
            hostname=server.host,
            port=server.port,
            tls_context=context,
            timeout=5,
            **options,
        )
    )


def test_smtp_starttls_auth_accepts_and_records(smtp_server: SmtpServer, tls_context_for_tests: ssl.SSLContext) -> None:
    _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
    assert len(smtp_server.messages) == 1
    mail_from, rcpt_tos, raw = smtp_server.messages[0]
    assert (mail_from, rcpt_tos) == (ALICE_EMAIL, ["b@example.test", "c@example.test"])
    assert raw == RAW
    assert smtp_server.logins == [("PLAIN", ALICE_EMAIL)]


def test_smtp_wrong_password_is_535(smtp_server: SmtpServer, tls_context_for_tests: ssl.SSLContext) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password="wrong")
    assert caught.value.code == 535
    assert smtp_server.messages == []


def test_smtp_requires_starttls_before_anything(smtp_server: SmtpServer) -> None:
    async def plain_mail_from() -> int:
        client = aiosmtplib.SMTP(hostname=smtp_server.host, port=smtp_server.port, start_tls=False, timeout=5)
        await client.connect()
        response = await client.execute_command(b"MAIL", b"FROM:<a@example.test>")
        await client.quit()
        return response.code

    assert asyncio.run(plain_mail_from()) == 530


def test_smtp_xoauth2_token(smtp_server: SmtpServer, tls_context_for_tests: ssl.SSLContext) -> None:
    async def token() -> str:
        return ALICE_TOKEN

    async def bad_token() -> str:
        return "not-the-token"

    _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, oauth_token_generator=token)
    assert smtp_server.logins == [("XOAUTH2", ALICE_EMAIL)]
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, oauth_token_generator=bad_token)
    assert caught.value.code == 535
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize(
    "stage,code,error",
    [
        ("rcpt", 451, aiosmtplib.SMTPRecipientsRefused),
        ("rcpt", 550, aiosmtplib.SMTPRecipientsRefused),
        ("mail", 451, aiosmtplib.SMTPSenderRefused),
        ("data", 451, aiosmtplib.SMTPDataError),
    ],
)
def test_smtp_fail_with_makes_the_client_see_the_code(
    smtp_server: SmtpServer, tls_context_for_tests: ssl.SSLContext, stage: str, code: int, error: type[Exception]
) -> None:
    smtp_server.fail_with(code, "4.3.0 Try again later" if code == 451 else "5.1.1 No such user", stage=stage)
    with pytest.raises(error) as caught:
        _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
    codes = [e.code for e in caught.value.recipients] if isinstance(caught.value, aiosmtplib.SMTPRecipientsRefused) else [caught.value.code]  # type: ignore[attr-defined]
    assert code in codes
    assert smtp_server.messages == []
    smtp_server.clear_failure()
    _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
    assert len(smtp_server.messages) == 1


def test_smtp_failure_for_a_number_of_times_then_success(
    smtp_server: SmtpServer, tls_context_for_tests: ssl.SSLContext
) -> None:
    smtp_server.fail_with(451, "4.7.1 Greylisted", stage="mail", times=1)
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
    _send(smtp_server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
    assert len(smtp_server.messages) == 1


def test_smtp_implicit_tls_variant(test_certs: tuple[Path, Path], tls_context_for_tests: ssl.SSLContext) -> None:
    with SmtpServer({ALICE_EMAIL: ALICE_PASSWORD}, cert_path=test_certs[0], key_path=test_certs[1], implicit_tls=True) as server:
        _send(server, tls_context_for_tests, username=ALICE_EMAIL, password=ALICE_PASSWORD)
        assert [(m[0], m[2].count(b"Hi!")) for m in server.messages] == [(ALICE_EMAIL, 1)]
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            _send(server, tls_context_for_tests, username=ALICE_EMAIL, password="wrong")
