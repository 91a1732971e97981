"""Connections a tenant can aim (issue 14, must-show 2 and 3), against real sockets and servers.

A recording TCP listener (tests/harness/listener.py) on 127.0.0.1 and ::1 stands for "the
operator's network": it answers with a banner and records every connection and byte. The app runs
on PostgreSQL and RabbitMQ with an in-process worker (the `live` fixture); Dovecot, aiosmtpd and
the OAuth stand-in play the tenant's real servers. MAILPIPE_MAIL_ALLOWED_NETS is unset (the
production default) wherever a refusal is shown.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import EmailAccount
from models.db import get_engine
from ops.settings import reset_settings
from pipeline.clients.imap import ImapError, ImapErrorKind, ImapSettings, connect
from pipeline.stages.netpolicy import host_literal
from tests.harness.dovecot import Dovecot
from tests.harness.flow import make_org
from tests.harness.listener import RecordingListener
from tests.harness.oauth_server import OAuthServer
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

FORMS = ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0.0.0.0", "::1", "::ffff:127.0.0.1"]
BANNER = "secret-banner-7f3a"
PASSWORD = "stored-Pa55-" + uuid.uuid4().hex[:8]


@pytest.fixture
def guard(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The app with no allowed networks, an IMAP-like and an SMTP-like recording listener."""
    monkeypatch.delenv("MAILPIPE_MAIL_ALLOWED_NETS")
    monkeypatch.setenv("MAILPIPE_ACCOUNT_TESTS_PER_MINUTE", "1000")  # the rate limit has its own test
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_ID", "gid")
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_SECRET", "gsecret-value")
    reset_settings()
    from web.app import create_app

    org_id, key = make_org()
    imap_l = RecordingListener(f"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] {BANNER} internal.corp ready\r\n".encode()).start()
    smtp_l = RecordingListener(f"220 {BANNER} relay.internal.corp ESMTP\r\n".encode()).start()
    try:
        with TestClient(create_app()) as client:
            yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "org_id": org_id, "imap": imap_l, "smtp": smtp_l,
                   **live}
    finally:
        imap_l.close()
        smtp_l.close()


def allow(monkeypatch: pytest.MonkeyPatch, nets: str | None) -> None:
    if nets is None:
        monkeypatch.delenv("MAILPIPE_MAIL_ALLOWED_NETS", raising=False)
    else:
        monkeypatch.setenv("MAILPIPE_MAIL_ALLOWED_NETS", nets)
    reset_settings()


def body(g: dict[str, Any], host: str, *, security: str = "ssl", **extra: Any) -> dict[str, Any]:
    """An account body whose IMAP and SMTP both point at host (the listeners' ports)."""
    return {"user_id": "u1", "provider": "imap", "email": "mallory@example.test",
            "imap": {"host": host, "port": g["imap"].port, "security": security, "password": "pw-imap"},
            "smtp": {"host": host, "port": g["smtp"].port, "security": security, "password": "pw-smtp"}, **extra}


def refused(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    e = r.json()["error"]
    assert e["code"] == "host_not_allowed", e
    assert e["details"]["errors"][0]["field"] == field and "MAILPIPE_MAIL_ALLOWED_NETS" in e["message"]


def untouched(g: dict[str, Any]) -> None:
    assert g["imap"].connections == [] and g["smtp"].connections == [], "the listener saw a connection"


def test_each_address_form_is_refused_everywhere_without_a_connection(guard: dict[str, Any]) -> None:
    """Must-show 2, refusal: every spelling of this machine is 422 host_not_allowed on /accounts/test,
    create (tested or skip_test), PATCH and both OAuth authorize overrides; the listener (on 127.0.0.1
    and ::1) never sees a connection."""
    g, c, h = guard, guard["client"], guard["h"]
    assert g["imap"].has_ipv6, "the ::1 form needs an IPv6 loopback to prove anything"
    existing = c.post("/api/v1/accounts", headers=h, json={**body(g, "mail.unresolvable.invalid"), "skip_test": True})
    assert existing.status_code == 201, existing.text
    acct = existing.json()["id"]
    for form in FORMS:
        for security in ("ssl", "none"):
            refused(c.post("/api/v1/accounts/test", headers=h, json=body(g, form, security=security)), "imap.host")
        refused(c.post("/api/v1/accounts", headers=h, json=body(g, form)), "imap.host")
        refused(c.post("/api/v1/accounts", headers=h, json={**body(g, form), "skip_test": True}), "imap.host")
        smtp_only = body(g, "mail.unresolvable.invalid")
        smtp_only["smtp"]["host"] = form
        refused(c.post("/api/v1/accounts/test", headers=h, json=smtp_only), "smtp.host")
        patch = {"imap": {"host": form, "port": g["imap"].port, "security": "none", "password": "pw-imap"}}
        refused(c.patch(f"/api/v1/accounts/{acct}", headers=h, json=patch), "imap.host")
        for param in ("imap_host", "smtp_host"):
            r = c.get("/api/v1/oauth/google/authorize", headers=h,
                      params={"user_id": "u1", "email": "jane@gmail.test", param: form, param.replace("host", "port"): g["imap"].port})
            assert r.status_code == 422 and r.json()["error"]["code"] == "host_not_allowed", r.text
            assert r.json()["error"]["details"]["errors"][0]["field"] == param
    untouched(g)


def test_each_address_form_connects_once_allowed(guard: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Must-show 2, allowed: with MAILPIPE_MAIL_ALLOWED_NETS=127.0.0.0/8,::1/128 each form reaches the
    listener (IMAP and SMTP, ::1 over IPv6); the failure is classified in our words, no banner echoed."""
    allow(monkeypatch, "127.0.0.0/8,::1/128")
    g, c, h = guard, guard["client"], guard["h"]
    for n, form in enumerate(FORMS, start=1):
        r = c.post("/api/v1/accounts/test", headers=h, json=body(g, form, security="none"))
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["ok"] is False and res["imap"]["error_code"] in ("connect", "protocol", "auth"), res
        assert BANNER not in r.text and "internal.corp" not in r.text
        assert len(g["imap"].connections) == n and len(g["smtp"].connections) == n, form
    v6 = [conn for conn in g["imap"].connections if conn.family == socket.AF_INET6]
    assert len(v6) == 1 and v6[0].peer == "::1"


@pytest.fixture
def mailbox(guard: dict[str, Any], dovecot: Dovecot, smtp_server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A real, working account (Dovecot + aiosmtpd on 127.0.0.1, allowed as the operator's own)."""
    allow(monkeypatch, "127.0.0.0/8,::1/128")  # the listener is reachable too: only the rules stop the secret
    user = f"u{uuid.uuid4().hex[:10]}@example.test"
    dovecot.add_user(user, PASSWORD)
    smtp_server.users[user] = PASSWORD
    r = guard["client"].post("/api/v1/accounts", headers=guard["h"], json={
        "user_id": "u1", "provider": "imap", "email": user,
        "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": PASSWORD},
        "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": PASSWORD}})
    assert r.status_code == 201, r.text
    return {**guard, "account_id": r.json()["id"], "user": user, "dovecot": dovecot}


def secret_free(g: dict[str, Any]) -> None:
    """Nothing at all reached the listeners: no connection, so no LOGIN/AUTHENTICATE/AUTH and no password."""
    untouched(g)
    seen = g["imap"].received + g["smtp"].received
    assert b"LOGIN" not in seen and b"AUTH" not in seen and PASSWORD.encode() not in seen


@pytest.mark.parametrize("patch", [
    {"imap": {"host": "127.0.0.1", "port": "listener", "security": "none"}},
    {"imap": {"host": "localhost", "port": "listener", "security": "none"}, "skip_test": True},
    {"imap": {"host": "::1", "port": "listener"}},
    {"smtp": {"host": "localhost", "port": "listener", "security": "none"}},
    {"imap": {"security": "none", "port": "listener"}},
    {"imap": {"username": "attacker@example.test"}},
])
def test_patch_to_a_new_endpoint_without_the_password_sends_nothing(mailbox: dict[str, Any], patch: dict[str, Any]) -> None:
    """Must-show 3: PATCHing a mailbox to another host (port, security, username) without its password
    is 422 password_required; the listener, reachable and allowed, sees no connection and no secret;
    the account keeps its settings."""
    g = mailbox
    patch = {k: {**v, "port": g[k].port} if isinstance(v, dict) and "port" in v else v for k, v in patch.items()}
    r = g["client"].patch(f"/api/v1/accounts/{g['account_id']}", headers=g["h"], json=patch)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "password_required"
    assert PASSWORD not in r.text
    secret_free(g)
    with Session(get_engine()) as s:
        a = s.get(EmailAccount, g["account_id"])
        assert a is not None and a.imap_host == g["dovecot"].host and a.imap_port == g["dovecot"].tls_port


def test_crlf_and_control_characters_are_422_without_a_connection(guard: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Must-show 3: CR/LF (and other control characters) in usernames, passwords and hosts are 422
    naming the field, even with the listener allowed and reachable; nothing connects."""
    allow(monkeypatch, "127.0.0.0/8")
    g, c, h = guard, guard["client"], guard["h"]
    cases = [("imap", "password", "pw\r\nA2 LOGOUT"), ("imap", "username", "mallory\r\nA2 LIST \"\" *"),
             ("smtp", "password", "pw\nRSET"), ("smtp", "username", "mallory\x00x"), ("imap", "username", "m\x01auth=Bearer x"),
             ("imap", "host", "127.0.0.1\r\nA1 LOGIN x y"), ("smtp", "host", "127.0.0.1\n")]
    for proto, name, value in cases:
        b = body(g, "127.0.0.1", security="none")
        b[proto][name] = value
        for path in ("/api/v1/accounts/test", "/api/v1/accounts"):
            r = c.post(path, headers=h, json=b)
            assert r.status_code == 422, (name, value, r.text)
            if "\x00" not in value:  # NUL is refused for the whole body before field validation
                assert f"{proto}.{name}" in [e["field"] for e in r.json()["error"]["details"]["errors"]], r.text
    r = c.get("/api/v1/oauth/google/authorize", headers=h, params={"user_id": "u1", "email": "jane@gmail.test",
                                                                  "imap_host": "imap.gmail.com\r\nX"})
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["field"] == "imap_host"
    untouched(g)


def test_a_host_stored_before_the_guard_is_refused_at_fetch_and_send_time(mailbox: dict[str, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is in the clients, not only the API: a mailbox whose stored hosts point at loopback
    (saved before the guard existed) is refused when it fetches and sends, with a clear error, and
    nothing reaches the listener."""
    g = mailbox
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    allow(monkeypatch, None)
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).where(EmailAccount.id == g["account_id"]).values(
            imap_host="127.0.0.1", imap_port=g["imap"].port, imap_security="none",
            smtp_host="localhost", smtp_port=g["smtp"].port, smtp_security="none", next_fetch_at=None,
            fetch_lease_until=None))
        s.commit()
    assert g["client"].post(f"/api/v1/accounts/{g['account_id']}/sync", headers=g["h"]).status_code == 202

    def account() -> dict[str, Any]:
        return dict(g["client"].get(f"/api/v1/accounts/{g['account_id']}", headers=g["h"]).json())

    wait_until(lambda: "MAILPIPE_MAIL_ALLOWED_NETS" in (account()["sync"]["last_error"] or ""), 30, 0.2, "fetch refused")
    assert "loopback" in account()["sync"]["last_error"]
    r = g["client"].post("/api/v1/emails/send", headers=g["h"], json={
        "account_id": g["account_id"], "to": ["ada@engine.example"], "subject": "hi", "body_text": "hello"})
    assert r.status_code == 202, r.text
    eid = r.json()["id"]

    def email() -> dict[str, Any]:
        return dict(g["client"].get(f"/api/v1/emails/{eid}", headers=g["h"]).json())

    wait_until(lambda: email()["status"] == "failed", 60, 0.2, "send refused")
    assert "MAILPIPE_MAIL_ALLOWED_NETS" in email()["error"]["message"]
    secret_free(g)


@pytest.fixture
def oauth_stand_in(guard: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[OAuthServer]:
    server = OAuthServer().start()
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_ID", server.client_id)
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_SECRET", server.client_secret)
    monkeypatch.setenv("MAILPIPE_GOOGLE_AUTH_URL", f"{server.base}/authorize")
    monkeypatch.setenv("MAILPIPE_GOOGLE_TOKEN_URL", f"{server.base}/token")
    monkeypatch.setenv("MAILPIPE_OAUTH_REDIRECT_BASE", "http://testserver")
    reset_settings()
    try:
        yield server
    finally:
        server.stop()


def test_oauth_override_never_carries_the_token_to_a_tenants_host(guard: dict[str, Any], oauth_stand_in: OAuthServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Must-show 3, the OAuth scenario: authorize with imap_host/smtp_host=<listener>&*_security=none.
    Outside the allowed nets: 422 at authorize. A flow started while the host was allowed and completed
    after it no longer is (nets tightened, or DNS moved it): the callback's test and every fetch are
    refused by the clients; the listener sees no AUTHENTICATE, no token, and no refresh is triggered."""
    g, c, h = guard, guard["client"], guard["h"]
    user = f"u{uuid.uuid4().hex[:8]}@example.test"
    params = {"user_id": "u1", "email": user, "imap_host": "127.0.0.1", "imap_port": g["imap"].port, "imap_security": "none",
              "smtp_host": "localhost", "smtp_port": g["smtp"].port, "smtp_security": "none"}
    r = c.get("/api/v1/oauth/google/authorize", headers=h, params=params)
    assert r.status_code == 422 and r.json()["error"]["code"] == "host_not_allowed"
    allow(monkeypatch, "127.0.0.0/8")  # an operator's own test server: allowed, plaintext included
    r = c.get("/api/v1/oauth/google/authorize", headers=h, params=params)
    assert r.status_code == 200, r.text
    allow(monkeypatch, None)  # ...until it is not (or the name now points elsewhere)
    consent = httpx.get(r.json()["url"], follow_redirects=False)
    back = urlsplit(consent.headers["location"])
    done = c.get(f"{back.path}?{back.query}")
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["ok"] is False and result["test"]["imap"]["error_code"] == "connect"
    assert "MAILPIPE_MAIL_ALLOWED_NETS" in result["test"]["imap"]["message"]

    def last_error() -> str:
        return str(c.get(f"/api/v1/accounts/{result['account_id']}", headers=h).json()["sync"]["last_error"] or "")

    assert c.post(f"/api/v1/accounts/{result['account_id']}/sync", headers=h).status_code == 202
    wait_until(lambda: "MAILPIPE_MAIL_ALLOWED_NETS" in last_error(), 30, 0.2, "the fetch is refused by the client")
    untouched(g)
    assert all(token.encode() not in g["imap"].received + g["smtp"].received for token in oauth_stand_in.issued)
    assert oauth_stand_in.refresh_calls == 0


class TestImapClientOnDovecot:
    """The real IMAP client: LOGIN with a literal, control characters refused, TLS for the name given."""

    @pytest.fixture(autouse=True)
    def _loopback_allowed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        allow(monkeypatch, "127.0.0.0/8")

    def settings(self, dovecot: Dovecot, tls: ssl.SSLContext, **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {"host": dovecot.host, "port": dovecot.port, "security": "starttls", "username": "",
                                  "password": "", "ssl_context": tls, "timeout": 5.0, **overrides}
        return ImapSettings(**values)

    @pytest.mark.parametrize("security", ["starttls", "ssl", "none"])
    def test_a_password_with_imap_specials_logs_in_as_a_literal(self, dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext,
                                                               security: str) -> None:
        """Quotes, backslashes, braces, parentheses, %, *, ] and spaces: logged in, and the session works."""
        user, password = f"lit{uuid.uuid4().hex[:8]}@example.test", 'q"uo\\te {12}\t(x) %*] ~ "A2 LOGOUT"'.replace("\t", " ")
        dovecot.add_user(user, password)
        port = dovecot.tls_port if security == "ssl" else dovecot.port
        session = connect(self.settings(dovecot, tls_context_for_tests, username=user, password=password, security=security,
                                        port=port))
        try:
            assert session.status("INBOX").messages == 0 and "INBOX" in {f.name for f in session.list_folders()}
        finally:
            session.close()
        with pytest.raises(ImapError) as caught:
            connect(self.settings(dovecot, tls_context_for_tests, username=user, password=password + "x"))
        assert caught.value.kind is ImapErrorKind.AUTH

    def test_login_goes_on_the_wire_as_a_literal(self) -> None:
        """What the server receives: LOGIN "user" {n}, then (after its go-ahead) exactly n bytes."""
        password = 'p"w {3}\\ x'
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            lines: list[bytes] = []

            def serve() -> None:
                conn, _ = server.accept()
                with conn, conn.makefile("rb") as f:
                    conn.sendall(b"* OK ready\r\n")
                    line = f.readline()
                    while b" CAPABILITY" in line:  # imaplib asks first
                        conn.sendall(b"* CAPABILITY IMAP4rev1\r\n" + line.split(b" ", 1)[0] + b" OK done\r\n")
                        line = f.readline()
                    lines.append(line)
                    size = int(re.search(rb"\{(\d+)\}\r\n$", lines[0]).group(1))  # type: ignore[union-attr]
                    conn.sendall(b"+ go ahead\r\n")
                    lines.append(f.read(size + 2))
                    tag = lines[0].split(b" ", 1)[0]
                    conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            with pytest.raises(ImapError) as caught:
                connect(ImapSettings("127.0.0.1", server.getsockname()[1], "none", 'mal"lory@example.test', password=password,
                                     timeout=5.0))
            t.join(5)
        assert caught.value.kind is ImapErrorKind.AUTH
        assert re.fullmatch(rb'\w+ LOGIN "mal\\"lory@example.test" \{10\}\r\n', lines[0]), lines
        assert lines[1] == password.encode() + b"\r\n"

    def test_control_characters_never_reach_the_server(self, dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext) -> None:
        """A CR/LF/NUL in a credential (say, stored before validation) is refused before connecting."""
        with RecordingListener(b"* OK ready\r\n") as listener:
            for creds in ({"password": "pw\r\nA2 LOGOUT"}, {"username": "u\nx"}, {"password": None, "oauth_token": "t\x01x"}):
                values = {"username": "u@example.test", "password": "pw", **creds}
                with pytest.raises(ImapError) as caught:
                    connect(ImapSettings("127.0.0.1", listener.port, "none", timeout=2.0, **values))  # type: ignore[arg-type]
                assert caught.value.kind is ImapErrorKind.AUTH and "control character" in caught.value.message
            assert listener.connections == []

    def test_tls_is_verified_for_the_name_given_while_the_socket_goes_to_the_checked_address(
            self, dovecot: Dovecot, tls_context_for_tests: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch) -> None:
        """`localhost` (on the certificate) logs in over TLS with one lookup; a name that resolves to the
        same address but is not on the certificate fails with tls: the check is against the name."""
        user, password = f"tls{uuid.uuid4().hex[:8]}@example.test", "tls-pass-123"
        dovecot.add_user(user, password)
        real = socket.getaddrinfo
        lookups: list[str] = []

        def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(host, str) and host_literal(host) is None:
                lookups.append(host)
            return real("127.0.0.1" if host == "mail.pinned.test" else host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        session = connect(self.settings(dovecot, tls_context_for_tests, host="localhost", port=dovecot.tls_port, security="ssl",
                                        username=user, password=password))
        session.close()
        assert lookups == ["localhost"]
        with pytest.raises(ImapError) as caught:
            connect(self.settings(dovecot, tls_context_for_tests, host="mail.pinned.test", port=dovecot.tls_port, security="ssl",
                                  username=user, password=password))
        assert caught.value.kind is ImapErrorKind.TLS and "mail.pinned.test" in caught.value.message
        assert lookups == ["localhost", "mail.pinned.test"]


def test_rate_limit_on_connection_tests_is_per_organization(guard: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """/accounts/test beyond MAILPIPE_ACCOUNT_TESTS_PER_MINUTE: 429 with Retry-After, before any connection."""
    monkeypatch.setenv("MAILPIPE_ACCOUNT_TESTS_PER_MINUTE", "3")
    allow(monkeypatch, "127.0.0.0/8")
    g, c, h = guard, guard["client"], guard["h"]
    codes = [c.post("/api/v1/accounts/test", headers=h, json=body(g, "127.0.0.1", security="none")).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = c.post("/api/v1/accounts/test", headers=h, json=body(g, "127.0.0.1", security="none"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and r.json()["error"]["code"] == "rate_limited"
    assert len(g["imap"].connections) == 3

