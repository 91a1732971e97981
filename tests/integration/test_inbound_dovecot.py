"""Inbound sync against Dovecot, PostgreSQL and RabbitMQ (issue: inbound, must-show 1-3, 5, 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, EmailAccount, EmailLocation, Notification
from models.db import get_engine
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, account, count, email_by_mid, links_of, make_account, make_org, seed_crm, tick
from tests.harness.mail import make_message
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def _done(n: int) -> int | None:
    got = count(Email, Email.pipeline_state.in_(("done", "quarantined")))  # type: ignore[attr-defined]
    return got if got >= n else None


def _due_now() -> None:
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()


def _sync(expected_total: int, timeout: float = 120) -> None:
    """One tick whose fetch completes, then wait for the pipeline to finish ``expected_total`` emails."""
    from models import utcnow

    wait_until(lambda: all(a.fetch_owner is None for a in _accounts()), 30, what="no fetch running")
    started = utcnow()
    _due_now()
    ticked = tick()
    try:
        wait_until(lambda: all(a.last_synced_at is not None and a.last_synced_at >= started and a.fetch_owner is None
                               for a in _accounts()), timeout, what="the fetch this tick enqueued")
    except AssertionError as exc:
        state = [(ticked, a.sync_state, a.next_fetch_at, a.deferred_until, a.fetch_lease_until, a.fetch_owner) for a in _accounts()]
        raise AssertionError(f"{exc}: {state}") from None
    wait_until(lambda: _done(expected_total), timeout, what=f"{expected_total} emails through the pipeline")


def _accounts() -> list[EmailAccount]:
    with Session(get_engine()) as s:
        return list(s.execute(select(EmailAccount)).scalars())


def _mixed_messages(n: int) -> list[bytes]:
    """n messages cycling through the linking rules; every 10th has an attachment."""
    senders = [f"Ada <{CRM['contact'][1]}>", CRM["contact_personal"][1], CRM["lead"][1], CRM["account"][1],
               CRM["collision"][2], "Someone New <new.person@unknown.example>"]
    out = []
    for i in range(n):
        atts = [(f"doc-{i}.pdf", "application/pdf", f"PDF {i} ".encode() * 50)] if i % 10 == 0 else None
        out.append(make_message(i, from_=senders[i % len(senders)], message_id=f"<bulk{i}@t>", attachments=atts))
    return out


@pytest.fixture
def api(live: dict[str, Any]) -> Iterator[tuple[TestClient, str, str]]:
    from web.app import create_app

    org_id, key = make_org()
    seed_crm(org_id)
    with TestClient(create_app()) as client:
        yield client, org_id, key


class TestFirstSync:
    def test_200_messages_via_api(self, api: tuple[TestClient, str, str], dovecot: Dovecot, dovecot_user: tuple[str, str],
                                  smtp_server: Any) -> None:
        """200 seeded messages, account created through the API, one tick: all stored once, linked by
        the rules, attachments readable through the API, and no flag changed on the server."""
        client, org_id, key = api
        user, password = dovecot_user
        dovecot.seed(user, "INBOX", _mixed_messages(200), flags=["\\Flagged"])
        dovecot.seed(user, "INBOX", make_message(999, from_=CRM["contact"][1], message_id="<seen@t>"), flags=["\\Seen"])
        before = dovecot.flags(user, "INBOX")
        smtp_server.users[user] = password
        body = {"user_id": "u1", "provider": "imap", "email": user,
                "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
                "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}}
        h = {"Authorization": f"Bearer {key}"}
        r = client.post("/api/v1/accounts", json=body, headers=h)
        assert r.status_code == 201, r.text
        acct_id = r.json()["id"]
        assert password not in r.text
        _sync(201)
        assert count(Email) == 201 and count(EmailLocation) == 201
        assert dovecot.flags(user, "INBOX") == before
        assert links_of("bulk0@t") == {("contact", "c-ada"), ("account", "a-engine")}
        assert links_of("bulk1@t") == {("contact", "c-bob")}
        assert links_of("bulk2@t") == {("lead", "l-lee")}
        assert links_of("bulk3@t") == {("account", "a-acme")}
        assert links_of("bulk4@t") == {("contact", "c-sam"), ("lead", "l-sam")} and email_by_mid("bulk4@t").needs_review
        assert links_of("bulk5@t") == set()
        got = client.get(f"/api/v1/accounts/{acct_id}", headers=h).json()
        assert got["sync"]["state"] == "idle" and got["sync"]["messages_synced"] == 201
        assert got["sync"]["backfill"]["done"] == got["sync"]["backfill"]["total"] == 201
        unlinked = client.get("/api/v1/emails?linked=false&limit=200", headers=h).json()["items"]
        assert len(unlinked) == 200 // 6 + (1 if 200 % 6 > 5 else 0)
        e = client.get(f"/api/v1/emails/{email_by_mid('bulk10@t').id}", headers=h).json()
        assert e["attachments"][0]["filename"] == "doc-10.pdf"
        path = e["attachments"][0]["url"].split("127.0.0.1:8000", 1)[1]
        download = client.get(path, headers=h)
        assert download.status_code == 200 and download.content == b"PDF 10 " * 50
        assert download.headers["content-type"] == "application/pdf"

    def test_second_tick_new_mail_and_two_locations(self, live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> None:
        """A second tick fetches nothing; 5 new → 5 more; one Message-ID in INBOX and Sent is one email, two locations."""
        user, password = dovecot_user
        org_id, _ = make_org()
        seed_crm(org_id)
        dovecot.seed(user, "INBOX", [make_message(i, message_id=f"<a{i}@t>") for i in range(20)])
        make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
        _sync(20)
        notes = count(Notification)
        _sync(20)
        assert count(Email) == 20 and count(Notification) == notes
        dovecot.seed(user, "INBOX", [make_message(100 + i, message_id=f"<b{i}@t>") for i in range(5)])
        _sync(25)
        assert count(Email) == 25
        twin = make_message(7, from_=user, to=CRM["lead"][1], message_id="<twin@t>")
        dovecot.seed(user, "INBOX", twin)
        dovecot.seed(user, "Sent", twin)
        _sync(26)
        e = email_by_mid("twin@t")
        assert count(Email) == 26 and count(EmailLocation, EmailLocation.email_id == e.id) == 2
        assert links_of("twin@t") == {("lead", "l-lee")}

    def test_uidvalidity_change(self, live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> None:
        """doveadm forces a new UIDVALIDITY: no duplicates and no new notifications."""
        user, password = dovecot_user
        org_id, _ = make_org()
        seed_crm(org_id)
        dovecot.seed(user, "INBOX", [make_message(i, from_=CRM["contact"][1], message_id=f"<v{i}@t>") for i in range(30)])
        make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
        _sync(30)
        notes = count(Notification)
        assert notes == 30
        old = dovecot.status(user, "INBOX")["uidvalidity"]
        dovecot.set_uidvalidity(user, "INBOX", old + 1000)
        _sync(30)
        assert count(Email) == 30 and count(Notification) == notes
        assert count(EmailLocation, EmailLocation.uidvalidity == old + 1000) == 30
        assert count(EmailLocation, EmailLocation.uidvalidity == old) == 0


class TestFailures:
    def test_wrong_password(self, live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> None:
        """Wrong password: the account shows state error with an auth reason (and no password)."""
        user, _ = dovecot_user
        org_id, _ = make_org()
        acct_id = make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password="wrong-pass-123")
        tick()
        a = wait_until(lambda: (x := account(acct_id)).last_error_code and x, 30, what="auth error recorded")
        assert a.sync_state == "error" and a.last_error_code == "auth"
        assert "reconnect needed" in (a.last_error or "") and "wrong-pass-123" not in (a.last_error or "")

    def test_dovecot_outage_retries_then_recovers(self, live: dict[str, Any], fresh_dovecot: Dovecot, tmp_path: Path) -> None:
        """Dovecot stopped in the middle of a sync: the fetch is retried, the account shows the
        connection error, and when Dovecot is back the sync finishes with every message exactly once."""
        from tests.harness.fixtures import ALICE_EMAIL, ALICE_PASSWORD

        n = 3000
        org_id, _ = make_org()
        fresh_dovecot.seed(ALICE_EMAIL, "INBOX", [make_message(i, message_id=f"<o{i}@t>") for i in range(n)])
        acct_id = make_account(org_id, host=fresh_dovecot.host, port=fresh_dovecot.tls_port, email=ALICE_EMAIL, password=ALICE_PASSWORD)
        tick()
        wait_until(lambda: count(Email) >= 100, 60, 0.02, what="the sync under way")
        fresh_dovecot.stop()
        stopped_at = count(Email)
        a = wait_until(lambda: (x := account(acct_id)).consecutive_failures >= 3 and x.fetch_owner is None and x, 90,
                       what="three failed attempts")
        assert stopped_at < n, "the sync finished before Dovecot stopped; nothing was tested"
        assert a.sync_state == "error" and a.last_error_code in ("connect", "timeout") and count(Email) < n
        fresh_dovecot.start()
        _sync(n, timeout=180)
        a = account(acct_id)
        assert a.sync_state == "idle" and a.last_error is None and a.consecutive_failures == 0
        assert count(Email) == n and count(EmailLocation) == n

    def test_malformed_folder(self, live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> None:
        """Bad charsets, broken boundaries, missing headers, 8-bit garbage, a 20 MB attachment and deep
        nesting: each is stored or quarantined with a reason and the worker keeps going."""
        user, password = dovecot_user
        org_id, _ = make_org()
        nested = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
        for depth in range(60):
            nested = (f"Content-Type: multipart/mixed; boundary=b{depth}\r\n\r\n--b{depth}\r\n".encode() + nested
                      + f"\r\n--b{depth}--\r\n".encode())
        big = make_message(1, message_id="<big@t>", attachments=[("big.bin", "application/octet-stream", bytes(range(256)) * (20 * 4096))])
        bad = [
            b"From: x@y.example\r\nSubject: bogus charset\r\nMessage-ID: <cs@t>\r\n"
            b"Content-Type: text/plain; charset=x-nonsense\r\n\r\n\xe9t\xe9\r\n",
            b"From: x@y.example\r\nMessage-ID: <bnd@t>\r\nContent-Type: multipart/mixed; boundary=nope\r\n\r\n--other\r\nhello\r\n",
            b"Subject: no from no date no id\r\n\r\nbody only\r\n",
            b"From: \xff\xfe\xfd@\x80\x81\r\nSubject: \xc3\x28\xa0\xa1\r\nMessage-ID: <8bit@t>\r\n\r\n\x80\x81\x82 raw 8-bit\r\n",
            b"From: deep@y.example\r\nMessage-ID: <deep@t>\r\nMIME-Version: 1.0\r\n" + nested,
            b"\x00\x01\x02 not a message \xff",
            big,
            make_message(3, message_id="<" + "x" * 2000 + "@t>", from_="N" * 900 + " <" + "y" * 400 + "@t.example>",
                         attachments=[("z" * 600 + ".txt", "text/plain", b"long name")]),
            make_message(2, message_id="<fine@t>"),
        ]
        dovecot.seed(user, "INBOX", bad)
        make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
        _sync(len(bad), timeout=180)
        with Session(get_engine()) as s:
            rows = list(s.execute(select(Email)).scalars())
        assert len(rows) == len(bad)
        assert all(r.pipeline_state in ("done", "quarantined") for r in rows)
        assert all(r.parse_error for r in rows if r.pipeline_state == "quarantined")
        assert email_by_mid("fine@t").pipeline_state == "done"
        assert email_by_mid("big@t").attachment_count == 1
        assert any(r.defects for r in rows)
