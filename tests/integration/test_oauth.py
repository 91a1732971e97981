"""Gmail/Outlook over OAuth 2.0 against stand-ins that speak the real protocols (issue: OAuth).

A local authorization server (tests/harness/oauth_server.py: authorize, token with PKCE and
rotating refresh tokens, introspection), Dovecot checking XOAUTH2 with ``passdb oauth2`` against
that server's introspection endpoint, aiosmtpd checking XOAUTH2 tokens with the same server,
PostgreSQL and RabbitMQ with in-process workers. The client code is the real one, pointed at the
stand-in by MAILPIPE_GOOGLE_AUTH_URL / MAILPIPE_GOOGLE_TOKEN_URL.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from dramatiq import Worker
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, EmailAccount, FolderState, Notification, utcnow
from models.db import get_engine
from models.oauth import OAuthGrant
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import count, make_org, tick
from tests.harness.mail import make_message
from tests.harness.oauth_server import OAuthServer
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def oauth(live: dict[str, Any], test_certs: tuple[Path, Path], smtp_server: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    server = OAuthServer().start()
    dovecot = Dovecot(*test_certs, oauth_introspection_url=f"{server.base}/introspect")
    user = f"u{uuid.uuid4().hex[:10]}@example.test"
    app_password = f"app-{uuid.uuid4().hex[:12]}"
    dovecot.add_user(user, app_password)  # the app-password path stays open (PLAIN/LOGIN only)
    dovecot.start()
    smtp_server.users[user] = app_password
    smtp_server.token_check = server.valid
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_ID", server.client_id)
    monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_SECRET", server.client_secret)
    monkeypatch.setenv("MAILPIPE_GOOGLE_AUTH_URL", f"{server.base}/authorize")
    monkeypatch.setenv("MAILPIPE_GOOGLE_TOKEN_URL", f"{server.base}/token")
    monkeypatch.setenv("MAILPIPE_OAUTH_REDIRECT_BASE", "http://testserver")
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    reset_process_state()
    from web.app import create_app

    org_id, key = make_org()
    try:
        with TestClient(create_app()) as client:
            yield {"server": server, "dovecot": dovecot, "user": user, "app_password": app_password, "smtp": smtp_server,
                   "client": client, "h": {"Authorization": f"Bearer {key}"}, "org_id": org_id, **live}
    finally:
        dovecot.close()
        server.stop()


def connect(o: dict[str, Any]) -> dict[str, Any]:
    """The whole browser round trip: our authorize URL → the provider's consent → our callback."""
    d, smtp = o["dovecot"], o["smtp"]
    r = o["client"].get("/api/v1/oauth/google/authorize", headers=o["h"], params={
        "user_id": "u1", "email": o["user"], "imap_host": d.host, "imap_port": d.tls_port, "imap_security": "ssl",
        "smtp_host": smtp.host, "smtp_port": smtp.port, "smtp_security": "starttls"})
    assert r.status_code == 200, r.text
    consent = httpx.get(r.json()["url"], follow_redirects=False)
    assert consent.status_code == 302, consent.text
    back = urlsplit(consent.headers["location"])
    assert back.path == "/api/v1/oauth/google/callback"
    r = o["client"].get(f"{back.path}?{back.query}")  # public: no API key, only the signed state
    assert r.status_code == 200, r.text
    return dict(r.json())


def inbound(account_id: str) -> int:
    return count(Email, Email.account_id == account_id, Email.direction == "inbound")


def synced(o: dict[str, Any], account_id: str, n: int) -> None:
    def done() -> bool:
        a = o["client"].get(f"/api/v1/accounts/{account_id}", headers=o["h"]).json()
        return inbound(account_id) == n and a["sync"]["state"] == "idle"

    wait_until(done, 60, 0.2, f"{n} messages synced")


def send(o: dict[str, Any], account_id: str, subject: str = "Proposal") -> str:
    r = o["client"].post("/api/v1/emails/send", headers=o["h"], json={
        "account_id": account_id, "to": ["ada@engine.example"], "subject": subject, "body_text": "Hello Ada"})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def idle(broker: Any) -> None:
    """Wait until RabbitMQ has handed out every fetch and send message (and a moment for the last to run)."""
    import time

    wait_until(lambda: all(broker.get_queue_message_counts(q)[0] == 0 for q in ("fetch", "send")), 30, 0.2, "queues drained")
    time.sleep(1.0)  # the last message handed out finishes; only an absence is being checked


def status(o: dict[str, Any], email_id: str) -> dict[str, Any]:
    return dict(o["client"].get(f"/api/v1/emails/{email_id}", headers=o["h"]).json())


def set_expiry(account_id: str, seconds: float) -> None:
    with Session(get_engine()) as s:
        s.execute(update(OAuthGrant).where(OAuthGrant.account_id == account_id).values(expires_at=utcnow() + timedelta(seconds=seconds)))
        s.commit()


def test_authorize_callback_sync_and_send_over_xoauth2_with_no_token_in_logs(
        oauth: dict[str, Any], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Must-show 1, 2 and 5: the full flow creates the account, syncs seeded mail over XOAUTH2 (Dovecot
    asks the token server), sends over XOAUTH2 (aiosmtpd asks it too); no token, code, verifier or
    client secret appears in any log line of the whole flow."""
    import logging

    caplog.set_level(logging.DEBUG)
    browser = threading.get_ident()  # this thread plays the user's browser: its own HTTP client logs are not ours
    caplog.handler.addFilter(lambda r: not (r.name.startswith(("httpx", "httpcore")) and r.thread == browser))
    o = oauth
    o["dovecot"].seed(o["user"], "INBOX", [make_message(i, to=o["user"], message_id=f"<o{i}@t>") for i in range(3)])
    result = connect(o)
    assert result["ok"] is True and result["provider"] == "gmail" and result["reconnected"] is False, result
    acct = result["account_id"]
    synced(o, acct, 3)
    with Session(get_engine()) as s:
        a = s.get(EmailAccount, acct)
        assert a is not None and a.imap_password_enc is None and a.smtp_password_enc is None, "tokens only"
        grant = s.get(OAuthGrant, acct)
        assert grant is not None and grant.provider == "google" and grant.tokens_enc is not None
        assert not any(t in grant.tokens_enc for t in o["server"].issued), "stored encrypted"
    eid = send(o, acct)
    wait_until(lambda: status(o, eid)["status"] == "sent", 60, 0.2, "sent")
    assert ("XOAUTH2", o["user"]) in o["smtp"].logins
    assert o["server"].refresh_calls == 0

    # The token expires mid-run: the next sync and send refresh it (once) and keep working.
    set_expiry(acct, 30)
    o["server"].expire_access_tokens(o["user"])
    o["dovecot"].seed(o["user"], "INBOX", make_message(9, to=o["user"], message_id="<o9@t>"))
    assert o["client"].post(f"/api/v1/accounts/{acct}/sync", headers=o["h"]).status_code == 202
    synced(o, acct, 4)
    eid = send(o, acct, "Second")
    wait_until(lambda: status(o, eid)["status"] == "sent", 60, 0.2, "sent after the refresh")
    assert o["server"].refresh_calls == 1

    secrets = o["server"].secrets_seen()
    forms = set(secrets)
    for token in o["server"].issued:
        blob = f"user={o['user']}\x01auth=Bearer {token}\x01\x01".encode()
        forms |= {base64.b64encode(blob).decode(), base64.b64encode(token.encode()).decode()}
    out = capfd.readouterr()
    logs = out.out + out.err + caplog.text
    assert "oauth_connected" in logs and "oauth_refreshed" in logs, "the flow was logged at all"
    leaked = [f[:12] + "..." for f in forms if f in logs]
    assert leaked == [], f"secrets in logs: {leaked}"


def test_a_refused_token_is_refreshed_once_and_retried(oauth: dict[str, Any]) -> None:
    """An authentication failure with a token the servers no longer take (expired early) → one
    refresh and one retry, for IMAP and for SMTP, although the stored expiry says it is fine."""
    o = oauth
    acct = connect(o)["account_id"]
    synced(o, acct, 0)
    o["server"].expire_access_tokens(o["user"])  # the servers refuse it; our expiry is an hour away
    o["dovecot"].seed(o["user"], "INBOX", make_message(1, to=o["user"]))
    assert o["client"].post(f"/api/v1/accounts/{acct}/sync", headers=o["h"]).status_code == 202
    synced(o, acct, 1)
    assert o["server"].refresh_calls == 1
    o["server"].expire_access_tokens(o["user"])
    eid = send(o, acct)
    wait_until(lambda: status(o, eid)["status"] == "sent", 60, 0.2, "sent after one refresh")
    assert o["server"].refresh_calls == 2


def test_eight_worker_threads_refresh_an_expiring_token_once(oauth: dict[str, Any]) -> None:
    """Must-show 3: 8 worker threads sync and send for one account at the moment its token nears
    expiry (a slow token endpoint widens the race): the token server sees exactly one refresh."""
    from pipeline.flows.sync import fetch_now

    o = oauth
    acct = connect(o)["account_id"]
    synced(o, acct, 0)
    o["worker"].stop(timeout=10_000)
    o["server"].token_delay = 0.5
    set_expiry(acct, 60)  # under the five-minute margin: every user of the token wants a new one
    o["dovecot"].seed(o["user"], "INBOX", [make_message(i, to=o["user"]) for i in range(5)])
    ids = [send(o, acct, f"Note {i}") for i in range(7)]
    fetch_now(acct)
    worker = Worker(o["broker"], worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: all(status(o, e)["status"] == "sent" for e in ids), 90, 0.25, "7 sent")
        synced(o, acct, 5)
    finally:
        worker.stop(timeout=10_000)
    assert o["server"].refresh_calls == 1
    with Session(get_engine()) as s:
        grant = s.get(OAuthGrant, acct)
        assert grant is not None and grant.refresh_count == 1 and grant.expires_at > utcnow() + timedelta(minutes=50)


def test_row_lock_alone_serialises_refreshes_across_connections(oauth: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the in-process lock (as if each thread were another process), PostgreSQL's row lock on
    the grant still lets exactly one of 8 concurrent callers refresh; all get the new token."""
    from pipeline.flows import tokens

    o = oauth
    acct = connect(o)["account_id"]
    monkeypatch.setattr(tokens, "_local_lock", lambda account_id: threading.Lock())  # a new lock per call
    o["server"].token_delay = 0.3
    set_expiry(acct, 10)
    barrier = threading.Barrier(8)
    got: list[str] = []

    def caller() -> None:
        barrier.wait()
        got.append(tokens.access_token(acct))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert o["server"].refresh_calls == 1 and len(got) == 8 and len(set(got)) == 1


def test_revoked_grant_needs_reconnect_and_reconnecting_resumes_from_the_cursors(oauth: dict[str, Any]) -> None:
    """Must-show 4: the user revokes access → reconnect_required with a readable reason, one
    notification, held mail, and no further token calls however often sync and send try; connecting
    again resumes from the stored cursors (only new mail is fetched) and the held mail goes out."""
    o = oauth
    o["dovecot"].seed(o["user"], "INBOX", [make_message(i, to=o["user"]) for i in range(3)])
    acct = connect(o)["account_id"]
    synced(o, acct, 3)
    with Session(get_engine()) as s:
        cursor = s.execute(select(FolderState.uidvalidity, FolderState.last_uid).where(
            FolderState.account_id == acct, FolderState.name == "INBOX")).one()
        before = s.get(EmailAccount, acct).messages_synced  # type: ignore[union-attr]

    o["server"].revoke(o["user"])
    set_expiry(acct, -1)
    assert o["client"].post(f"/api/v1/accounts/{acct}/sync", headers=o["h"]).status_code == 202
    wait_until(lambda: o["client"].get(f"/api/v1/accounts/{acct}", headers=o["h"]).json()["sync"]["state"] == "reconnect_required",
               30, 0.2, "reconnect_required")
    a = o["client"].get(f"/api/v1/accounts/{acct}", headers=o["h"]).json()
    assert "revoked" in a["sync"]["last_error"] and "Connect the mailbox again" in a["sync"]["last_error"]
    assert a["sync"]["reconnect_needed"] is True
    calls = o["server"].token_calls
    held = send(o, acct)
    wait_until(lambda: (status(o, held).get("error") or {}).get("code") == "reconnect_required", 30, 0.2, "the send held")
    for _ in range(3):  # sweeps, manual syncs and the held send: none may call the token server
        o["client"].post(f"/api/v1/accounts/{acct}/sync", headers=o["h"])
        tick()
    idle(o["broker"])
    assert o["server"].token_calls == calls, "no further token calls until the user reconnects"
    notes = o["client"].get("/api/v1/notifications", params={"user_id": "u1"}, headers=o["h"]).json()["items"]
    assert [n["title"] for n in notes if n["type"] == "account.reconnect_required"] == [f"Reconnect {o['user']}"]
    assert count(Notification, Notification.kind == "account.reconnect_required") == 1
    assert status(o, held)["status"] == "queued"

    o["dovecot"].seed(o["user"], "INBOX", [make_message(10 + i, to=o["user"]) for i in range(2)])
    result = connect(o)
    assert result["account_id"] == acct and result["reconnected"] is True and result["ok"] is True
    synced(o, acct, 5)
    wait_until(lambda: status(o, held)["status"] == "sent", 60, 0.2, "the held mail sent")
    with Session(get_engine()) as s:
        after = s.get(EmailAccount, acct).messages_synced  # type: ignore[union-attr]
        now = s.execute(select(FolderState.uidvalidity, FolderState.last_uid).where(
            FolderState.account_id == acct, FolderState.name == "INBOX")).one()
    assert after - before == 2, "only the two new messages were downloaded"
    assert now.uidvalidity == cursor.uidvalidity and now.last_uid == cursor.last_uid + 2


def test_app_password_gmail_accounts_keep_the_password_path(oauth: dict[str, Any]) -> None:
    """A Gmail account added with an app password (no OAuth) logs in with PLAIN and syncs."""
    o = oauth
    o["dovecot"].seed(o["user"], "INBOX", make_message(1, to=o["user"]))
    d, smtp = o["dovecot"], o["smtp"]
    r = o["client"].post("/api/v1/accounts", headers=o["h"], json={
        "user_id": "u1", "provider": "gmail", "email": o["user"],
        "imap": {"host": d.host, "port": d.tls_port, "security": "ssl", "password": o["app_password"]},
        "smtp": {"host": smtp.host, "port": smtp.port, "security": "starttls", "password": o["app_password"]}})
    assert r.status_code == 201, r.text
    synced(o, r.json()["id"], 1)
    assert o["server"].token_calls == 0
