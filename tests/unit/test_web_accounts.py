"""web.routes.accounts (+ emails, org, notifications): the account lifecycle over HTTP with fake servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, EmailAccount
from models.db import get_engine
from pipeline.clients.smtp import SmtpErrorKind
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from pipeline.stages.providers import apply_preset
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, count, drain, make_org, seed_crm
from tests.harness.mail import make_message
from web.app import create_app

BODY = {"user_id": "u1", "provider": "imap", "email": "alice@example.test",
        "imap": {"host": "imap.example.test", "password": "alicepass"},
        "smtp": {"host": "smtp.example.test", "password": "alicepass"}}


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker) -> Iterator[dict[str, Any]]:
    imap_server = FakeImapServer("alice@example.test", "alicepass")
    smtp = FakeSmtpTransport()
    use_imap_connector(fake_connect(imap_server))
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "imap": imap_server, "smtp": smtp,
               "broker": stub_broker, "worker": stub_worker, "org_id": org_id}


class TestPresets:
    def test_gmail_preset_fills_hosts(self) -> None:
        """A provider preset supplies host, port and security that were not given."""
        assert apply_preset("gmail", "imap", {}) == {"host": "imap.gmail.com", "port": 993, "security": "ssl"}
        assert apply_preset("imap", "smtp", {"host": "h", "security": "ssl"}) == {"host": "h", "port": 465, "security": "ssl"}


class TestConnectionTest:
    def test_ok_and_classified_failures(self, env: dict[str, Any]) -> None:
        """The test endpoint reports each side; a bad IMAP password is `auth`, SMTP failures carry their kind."""
        c, h = env["client"], env["h"]
        r = c.post("/api/v1/accounts/test", json=BODY, headers=h)
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["imap"]["ok"] is True
        bad = {**BODY, "imap": {**BODY["imap"], "password": "nope-secret"}}
        env["smtp"].fail_probe(SmtpErrorKind.TLS, "certificate verify failed")
        res = c.post("/api/v1/accounts/test", json=bad, headers=h).json()
        assert res["ok"] is False and res["imap"]["error_code"] == "auth" and res["smtp"]["error_code"] == "tls"
        assert "nope-secret" not in str(res)

    def test_missing_host_for_generic_imap(self, env: dict[str, Any]) -> None:
        """A generic IMAP account without hosts is a 422 naming the fields."""
        r = env["client"].post("/api/v1/accounts/test", json={**BODY, "imap": {"password": "x"}}, headers=env["h"])
        assert r.status_code == 422 and "imap.host" in r.json()["error"]["message"]


class TestLifecycle:
    def test_create_get_sync_patch_delete(self, env: dict[str, Any]) -> None:
        """Create (tested), read without secrets, sync (202), disable, re-enable, delete with erase."""
        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, from_=CRM["contact"][1], message_id="<x1@t>")])
        r = c.post("/api/v1/accounts", json=BODY, headers=h)
        assert r.status_code == 201 and "alicepass" not in r.text
        acct = r.json()
        assert acct["imap"] == {"host": "imap.example.test", "port": 993, "security": "ssl", "username": "alice@example.test"}
        drain(env["broker"], env["worker"])
        got = c.get(f"/api/v1/accounts/{acct['id']}", headers=h).json()
        assert got["sync"]["state"] == "idle" and got["sync"]["messages_synced"] == 1
        assert c.post("/api/v1/accounts", json=BODY, headers=h).status_code == 409
        assert c.post(f"/api/v1/accounts/{acct['id']}/sync", headers=h).status_code == 202
        drain(env["broker"], env["worker"])
        assert c.patch(f"/api/v1/accounts/{acct['id']}", json={"disabled": True}, headers=h).json()["sync"]["state"] == "disabled"
        assert c.post(f"/api/v1/accounts/{acct['id']}/sync", headers=h).status_code == 409
        patched = c.patch(f"/api/v1/accounts/{acct['id']}", json={"poll_seconds": 120, "disabled": False}, headers=h)
        assert patched.json()["poll_seconds"] == 120
        assert [a["id"] for a in c.get("/api/v1/accounts?user_id=u1", headers=h).json()["items"]] == [acct["id"]]
        assert c.delete(f"/api/v1/accounts/{acct['id']}?erase=true", headers=h).status_code == 204
        assert c.get(f"/api/v1/accounts/{acct['id']}", headers=h).status_code == 404
        assert count(Email) == 0
        # The mailbox may be connected again once the old account is deleted; a live duplicate may not.
        again = c.post("/api/v1/accounts", json=BODY, headers=h)
        assert again.status_code == 201 and again.json()["id"] != acct["id"]
        from sqlalchemy.exc import IntegrityError

        with Session(get_engine()) as s, pytest.raises(IntegrityError):
            s.add(EmailAccount(org_id=env["org_id"], user_id="u1", email="alice@example.test", email_norm="alice@example.test"))
            s.commit()

    def test_failed_test_is_422_with_details(self, env: dict[str, Any]) -> None:
        """Creation runs the test first; a failure is 422 with the test result and saves nothing."""
        bad = {**BODY, "imap": {**BODY["imap"], "password": "wrong"}}
        r = env["client"].post("/api/v1/accounts", json=bad, headers=env["h"])
        assert r.status_code == 422 and r.json()["error"]["details"]["imap"]["error_code"] == "auth"
        assert count(EmailAccount) == 0

    def test_patch_credentials_retests_and_clears_error(self, env: dict[str, Any]) -> None:
        """New credentials are tested; once they work the account leaves the error state."""
        c, h = env["client"], env["h"]
        acct = c.post("/api/v1/accounts", json=BODY, headers=h).json()
        with Session(get_engine()) as s:
            a = s.get(EmailAccount, acct["id"])
            assert a is not None
            a.sync_state, a.last_error, a.last_error_code = "error", "auth: reconnect needed: x", "auth"
            s.add(a)
            s.commit()
        r = c.patch(f"/api/v1/accounts/{acct['id']}", json={"imap": {"password": "wrong"}}, headers=h)
        assert r.status_code == 422
        r = c.patch(f"/api/v1/accounts/{acct['id']}", json={"imap": {"password": "alicepass"}}, headers=h)
        assert r.status_code == 200 and r.json()["sync"]["state"] == "idle" and r.json()["sync"]["last_error"] is None


class TestEmailsApi:
    def test_manual_link_unlink_and_filters(self, env: dict[str, Any]) -> None:
        """The unlinked inbox lists unknown senders; a manual link moves the email out of it."""
        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, from_="who@unknown.example", message_id="<u1@t>"),
                                   make_message(2, from_=CRM["lead"][1], message_id="<u2@t>")])
        c.post("/api/v1/accounts", json=BODY, headers=h)
        drain(env["broker"], env["worker"])
        unlinked = c.get("/api/v1/emails?linked=false", headers=h).json()["items"]
        assert [e["message_id"] for e in unlinked] == ["u1@t"]
        eid = unlinked[0]["id"]
        assert c.post(f"/api/v1/emails/{eid}/links", json={"entity_type": "contact", "entity_id": "nope"}, headers=h).status_code == 404
        r = c.post(f"/api/v1/emails/{eid}/links", json={"entity_type": "contact", "entity_id": "c-ada"}, headers=h)
        assert r.status_code == 200 and r.json()["links"]["contact_ids"] == ["c-ada"]
        assert c.get("/api/v1/emails?linked=false", headers=h).json()["items"] == []
        assert [e["id"] for e in c.get("/api/v1/emails?contact_id=c-ada", headers=h).json()["items"]] == [eid]
        assert c.delete(f"/api/v1/emails/{eid}/links/contact/c-ada", headers=h).status_code == 204
        assert [e["id"] for e in c.get("/api/v1/emails?linked=false", headers=h).json()["items"]] == [eid]
        assert c.get("/api/v1/emails?linked=maybe", headers=h).status_code == 422
        page = c.get("/api/v1/emails?limit=1", headers=h).json()
        assert len(page["items"]) == 1 and page["next_cursor"]
        rest = c.get(f"/api/v1/emails?limit=1&cursor={page['next_cursor']}", headers=h).json()
        assert len(rest["items"]) == 1 and rest["items"][0]["id"] != page["items"][0]["id"]

    def test_notifications_and_org_settings(self, env: dict[str, Any]) -> None:
        """Linked inbound mail notifies the owner; marking read drops the unread count; org settings round-trip."""
        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, from_=CRM["contact"][1], message_id="<n1@t>")])
        c.post("/api/v1/accounts", json=BODY, headers=h)
        drain(env["broker"], env["worker"])
        notes = c.get("/api/v1/notifications?user_id=u1&unread=true", headers=h).json()
        assert notes["unread_count"] == 1 and notes["items"][0]["type"] == "email.received"
        assert c.post(f"/api/v1/notifications/{notes['items'][0]['id']}/read", headers=h).json()["read"] is True
        assert c.get("/api/v1/notifications?user_id=u1&unread=true", headers=h).json()["unread_count"] == 0
        r = c.patch("/api/v1/org", json={"auto_create_leads": True, "own_domains": ["Acme.IO", "@example.test"]}, headers=h)
        assert r.json()["own_domains"] == ["acme.io", "example.test"] and r.json()["auto_create_leads"] is True
        assert c.patch("/api/v1/org", json={"own_domains": ["not a domain"]}, headers=h).status_code == 422


class TestThreadingAndGmail:
    def test_replies_share_a_thread(self, env: dict[str, Any]) -> None:
        """A reply (In-Reply-To/References) lands in its parent's thread."""
        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, message_id="<root@t>"),
                                   make_message(2, message_id="<reply@t>", in_reply_to="<root@t>"),
                                   make_message(3, message_id="<other@t>")])
        c.post("/api/v1/accounts", json=BODY, headers=h)
        drain(env["broker"], env["worker"])
        items = {e["message_id"]: e["thread_id"] for e in c.get("/api/v1/emails", headers=h).json()["items"]}
        assert items["root@t"] == items["reply@t"] != items["other@t"]

    def test_gmail_all_mail_dedupes_and_threads_by_gm_ids(self, db: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """On Gmail only All Mail is synced; X-GM-MSGID dedupes and X-GM-THRID threads."""
        from tests.harness.flow import make_account, tick

        srv = FakeImapServer("alice@example.test", "alicepass", gmail=True)
        use_imap_connector(fake_connect(srv))
        all_mail = next(f.name for f in srv.folders.values() if "\\All" in f.special_use)
        srv.seed(all_mail, make_message(1, message_id="<g1@t>"), gm_msgid=1_300_000_000_000_000_111, gm_thrid=900)
        srv.seed(all_mail, make_message(2, message_id="<g2@t>"), gm_msgid=1_300_000_000_000_000_222, gm_thrid=900)
        srv.seed("INBOX", make_message(1, message_id="<g1@t>"), gm_msgid=1_300_000_000_000_000_111, gm_thrid=900)
        org_id, _ = make_org()
        make_account(org_id)
        tick()
        drain(stub_broker, stub_worker)
        with Session(get_engine()) as s:
            from sqlalchemy import select

            from models import ConversationKey

            rows = list(s.execute(select(Email)).scalars())
            by_thrid = s.execute(select(ConversationKey.conversation_id).where(ConversationKey.key == "g:900")).scalar_one()
        assert sorted(r.dedupe_key for r in rows) == ["gm:1300000000000000111", "gm:1300000000000000222"]
        # thread_id is the conversation's id (API.md); X-GM-THRID is one of the keys it was joined by
        assert {r.thread_id for r in rows} == {by_thrid}


class TestDurableRelink:
    def test_lost_relink_message_is_recovered_by_the_sweep(self, env: dict[str, Any]) -> None:
        """The retro-link intent is stored with the record: if its message is lost, the next tick does it."""
        from tests.harness.flow import tick

        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, from_="late@newco.example", message_id="<late@t>")])
        c.post("/api/v1/accounts", json=BODY, headers=h)
        drain(env["broker"], env["worker"])
        env["worker"].pause()
        assert c.put("/api/v1/crm/contacts/c-late", json={"last_name": "Late", "email": "late@newco.example"}, headers=h).status_code == 200
        env["broker"].flush_all()  # the fast-path message is lost (web died, broker hiccup)
        env["worker"].resume()
        eid = c.get("/api/v1/emails?linked=false", headers=h).json()["items"][0]["id"]
        assert tick()["relink_requests"] == 1
        drain(env["broker"], env["worker"])
        assert c.get(f"/api/v1/emails/{eid}", headers=h).json()["links"]["contact_ids"] == ["c-late"]
