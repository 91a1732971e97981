"""Conversations with fake servers on SQLite: the threading keys and subject rules (pure), bridging
merges and out-of-order arrival (through the ingest chain), the list's filters, paging and input
checks, and the X-Mailpipe-User header's rules."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from pipeline.flows.sync import fetch_now
from pipeline.stages.conversation_keys import (
    Candidate,
    message_keys,
    normalize_subject,
    participants,
    pick_by_subject,
    thread_index_root,
)
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, drain, make_org, seed_crm
from tests.harness.mail import make_message
from web.app import create_app

BODY = {"user_id": "u1", "provider": "imap", "email": "alice@example.test",
        "imap": {"host": "imap.example.test", "password": "alicepass"},
        "smtp": {"host": "smtp.example.test", "password": "alicepass"}}
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class TestKeysAndSubjects:
    @pytest.mark.parametrize(("raw", "norm"), [
        ("RE: AW: [Support] Invoice  42", "invoice 42"),
        ("Fwd: FW: sv: Vs: WG: Offer", "offer"),
        ("Re[2]: RE(3): Hello", "hello"),
        ("[EXTERNAL] [#123] Re: Quote", "quote"),
        ("Reply needed", "reply needed"),  # "Re" only as a prefix with a colon
        ("", ""),
    ])
    def test_normalize_subject(self, raw: str, norm: str) -> None:
        assert normalize_subject(raw) == norm

    def test_thread_index_root_is_the_first_22_bytes(self) -> None:
        root = bytes(range(22))
        first = base64.b64encode(root).decode()
        reply = base64.b64encode(root + b"\x01\x02\x03\x04\x05").decode()
        assert thread_index_root(first) == thread_index_root(reply) == first
        assert thread_index_root("not base64!!") is None and thread_index_root(base64.b64encode(b"short").decode()) is None

    def test_message_keys_cover_ids_thread_index_and_gmail(self) -> None:
        keys = message_keys(message_id="<a@x>", in_reply_to="<b@x>", references=["c@x", "b@x"],
                            thread_index=base64.b64encode(bytes(27)).decode(), gm_thrid=7)
        assert keys == ["m:a@x", "m:b@x", "m:c@x", f"t:{base64.b64encode(bytes(22)).decode()}", "g:7"]

    def test_participants_leave_the_mailbox_out(self) -> None:
        assert participants(["Ada@Engine.example", "box@team.example", None, "x"], ["BOX@team.example"]) == ["ada@engine.example"]

    def test_subject_match_needs_a_shared_participant_within_30_days(self) -> None:
        near = Candidate("c1", ["ada@x"], T0 - timedelta(days=3), T0 - timedelta(days=2))
        old = Candidate("c2", ["ada@x"], T0 - timedelta(days=60), T0 - timedelta(days=31))
        other = Candidate("c3", ["lee@y"], T0 - timedelta(days=1), T0 - timedelta(hours=1))
        assert pick_by_subject([near, old, other], ["ada@x"], T0) == "c1"
        assert pick_by_subject([old, other], ["ada@x"], T0) is None
        assert pick_by_subject([near], [], T0) is None


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker) -> Iterator[dict[str, Any]]:
    imap_server = FakeImapServer("alice@example.test", "alicepass")
    use_imap_connector(fake_connect(imap_server))
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    with TestClient(create_app()) as client:
        h = {"Authorization": f"Bearer {key}"}
        for uid in ("u2", "u3"):
            client.put(f"/api/v1/users/{uid}", json={"name": uid, "email": f"{uid}@team.example"}, headers=h)
        yield {"client": client, "h": h, "imap": imap_server, "broker": stub_broker, "worker": stub_worker, "org_id": org_id,
               "smtp": smtp}


def _sync(env: dict[str, Any], account_id: str | None = None) -> str:
    c, h = env["client"], env["h"]
    if account_id is None:
        r = c.post("/api/v1/accounts", json=BODY, headers=h)
        assert r.status_code == 201, r.text
        account_id = str(r.json()["id"])
    else:
        assert fetch_now(account_id)
    drain(env["broker"], env["worker"])
    return account_id


def _threads(env: dict[str, Any]) -> dict[str, str]:
    items = env["client"].get("/api/v1/emails?limit=200", headers=env["h"]).json()["items"]
    return {i["message_id"]: i["thread_id"] for i in items}


class TestThreadingThroughTheChain:
    def test_a_message_bridging_two_threads_merges_them(self, env: dict[str, Any]) -> None:
        ada, lee = f"Ada <{CRM['contact'][1]}>", f"Lee <{CRM['lead'][1]}>"
        env["imap"].seed("INBOX", make_message(1, from_=ada, subject="Alpha", message_id="<a@t>"), when=T0)
        env["imap"].seed("INBOX", make_message(2, from_=lee, subject="Beta", message_id="<b@t>"), when=T0 + timedelta(minutes=1))
        account = _sync(env)
        before = _threads(env)
        assert before["a@t"] != before["b@t"]
        r = env["client"].patch(f"/api/v1/conversations/{before['b@t']}", json={"assignee_id": "u1"}, headers=env["h"])
        assert r.status_code == 200, r.text
        bridge = make_message(3, from_=ada, subject="Re: Alpha and Beta", message_id="<c@t>",
                              headers={"References": "<a@t> <b@t>"})
        env["imap"].seed("INBOX", bridge, when=T0 + timedelta(minutes=2))
        _sync(env, account)
        after = _threads(env)
        assert after["a@t"] == after["b@t"] == after["c@t"] == before["a@t"]  # the older conversation survives
        items = env["client"].get("/api/v1/conversations", headers=env["h"]).json()["items"]
        assert [(i["id"], i["message_count"], i["assignee_id"]) for i in items] == [(before["a@t"], 3, "u1")]  # the assignee is kept
        # the merged conversation's id still answers, as the one it joined
        assert env["client"].get(f"/api/v1/conversations/{before['b@t']}", headers=env["h"]).json()["id"] == before["a@t"]

    def test_a_bridge_in_the_same_batch_joins_all_three(self, env: dict[str, Any]) -> None:
        ada, lee = f"Ada <{CRM['contact'][1]}>", f"Lee <{CRM['lead'][1]}>"
        env["imap"].seed("INBOX", make_message(1, from_=ada, subject="One", message_id="<one@t>"), when=T0)
        env["imap"].seed("INBOX", make_message(2, from_=lee, subject="Two", message_id="<two@t>"), when=T0 + timedelta(minutes=1))
        env["imap"].seed("INBOX", make_message(3, from_=ada, subject="Re: One", message_id="<three@t>",
                                               headers={"References": "<one@t> <two@t>"}), when=T0 + timedelta(minutes=2))
        _sync(env)
        t = _threads(env)
        assert t["one@t"] == t["two@t"] == t["three@t"]
        items = env["client"].get("/api/v1/conversations", headers=env["h"]).json()["items"]
        assert [(i["subject"], i["message_count"], i["participants"]) for i in items] == [
            ("One", 3, sorted([CRM["contact"][1], CRM["lead"][1]]))]

    def test_a_reply_stored_before_its_parent_shares_the_parents_conversation(self, env: dict[str, Any]) -> None:
        ada = f"Ada <{CRM['contact'][1]}>"
        env["imap"].seed("INBOX", make_message(1, from_=ada, subject="Re: Plan", message_id="<r@t>", in_reply_to="<p@t>"), when=T0)
        account = _sync(env)
        env["imap"].seed("INBOX", make_message(2, from_=ada, subject="Plan", message_id="<p@t>"), when=T0 - timedelta(hours=1))
        _sync(env, account)
        threads = _threads(env)
        assert threads["p@t"] == threads["r@t"]
        detail = env["client"].get(f"/api/v1/conversations/{threads['p@t']}", headers=env["h"]).json()
        assert [m["message_id"] for m in detail["messages"]] == ["p@t", "r@t"] and detail["message_count"] == 2

    def test_same_subject_without_shared_participant_or_after_30_days_starts_anew(self, env: dict[str, Any]) -> None:
        ada, lee = f"Ada <{CRM['contact'][1]}>", f"Lee <{CRM['lead'][1]}>"
        env["imap"].seed("INBOX", make_message(1, from_=ada, subject="Status", message_id="<s1@t>"), when=T0)
        env["imap"].seed("INBOX", make_message(2, from_=lee, subject="RE: Status", message_id="<s2@t>"), when=T0 + timedelta(hours=1))
        env["imap"].seed("INBOX", make_message(3, from_=ada, subject="RE: Status", message_id="<s3@t>"), when=T0 + timedelta(days=2))
        env["imap"].seed("INBOX", make_message(4, from_=ada, subject="Re: Status", message_id="<s4@t>"), when=T0 + timedelta(days=40))
        _sync(env)
        t = _threads(env)
        assert t["s1@t"] == t["s3@t"] and len({t["s1@t"], t["s2@t"], t["s4@t"]}) == 3


class TestListAndPatch:
    def test_filters_paging_and_input_errors(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        for i in range(5):
            env["imap"].seed("INBOX", make_message(i, from_=f"c{i}@customer.example", subject=f"Topic {i}", message_id=f"<t{i}@t>"),
                             when=T0 + timedelta(minutes=i))
        _sync(env)
        seen: list[str] = []
        cursor = ""
        while True:
            page = c.get(f"/api/v1/conversations?limit=2&cursor={cursor}", headers=h).json()
            seen += [i["subject"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [f"Topic {i}" for i in (4, 3, 2, 1, 0)]
        assert [i["subject"] for i in c.get("/api/v1/conversations?q=C3@CUSTOMER", headers=h).json()["items"]] == ["Topic 3"]
        assert [i["subject"] for i in c.get("/api/v1/conversations?q=topic 1", headers=h).json()["items"]] == ["Topic 1"]
        contact = c.get(f"/api/v1/conversations?contact_id={CRM['contact'][0]}", headers=h).json()["items"]
        assert contact == []
        conv = c.get("/api/v1/conversations?limit=1", headers=h).json()["items"][0]["id"]
        for bad, code in (({"status": "closed"}, "validation_error"), ({"assignee_id": "nobody"}, "assignee_cannot_see"),
                          ({"assignee_id": ""}, "validation_error"), ({"color": "red"}, "validation_error")):
            r = c.patch(f"/api/v1/conversations/{conv}", json=bad, headers=h)
            assert r.status_code == 422 and r.json()["error"]["code"] == code, (bad, r.text)
        r = c.patch(f"/api/v1/conversations/{conv}", json={"status": "pending"}, headers=h)
        assert r.json()["status"] == "pending" and r.json()["status_changed_by"] is None  # the org key, no user
        assert [i["id"] for i in c.get("/api/v1/conversations?status=pending", headers=h).json()["items"]] == [conv]
        assert c.get("/api/v1/conversations?unassigned=maybe", headers=h).status_code == 422
        assert c.get("/api/v1/conversations?cursor=bogus!", headers=h).status_code == 422
        assert c.get("/api/v1/conversations/nope", headers=h).status_code == 404

    def test_acting_user_header_rules(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        account = _sync(env)
        for bad in ("", "two words", "x" * 65, "tab\there"):
            r = c.get("/api/v1/conversations", headers={**h, "X-Mailpipe-User": bad})
            assert r.status_code == 422 and "X-Mailpipe-User" in r.json()["error"]["message"], bad
        u2 = {**h, "X-Mailpipe-User": "u2"}
        # a user connects their own mailboxes only, and sees no one else's
        assert c.post("/api/v1/accounts", json={**BODY, "email": "other@example.test"}, headers=u2).status_code == 403
        assert c.get(f"/api/v1/accounts/{account}", headers=u2).status_code == 404
        assert c.get("/api/v1/accounts", headers=u2).json()["items"] == []
        assert c.get("/api/v1/notifications?user_id=u1", headers=u2).status_code == 404
        assert c.get("/api/v1/notifications", headers=u2).json()["items"] == []
        r = c.patch(f"/api/v1/accounts/{account}", json={"members": ["ghost"]}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["details"]["unknown"] == ["ghost"]
        r = c.patch(f"/api/v1/accounts/{account}", json={"shared": True, "members": ["u2"], "delegates": ["u3"]}, headers=h)
        assert r.json()["shared"] is True and r.json()["members"] == ["u2"] and r.json()["delegates"] == ["u3"]
        assert c.get(f"/api/v1/accounts/{account}", headers=u2).status_code == 200
        # a member may read and work the mailbox but not change who sees it
        assert c.patch(f"/api/v1/accounts/{account}", json={"members": []}, headers=u2).status_code == 403
        assert c.delete(f"/api/v1/accounts/{account}", headers=u2).status_code == 403
        assert c.delete("/api/v1/users/u2", headers=h).status_code == 204  # a deleted user loses what they were given
        assert c.get(f"/api/v1/accounts/{account}", headers=h).json()["members"] == []
        assert c.get(f"/api/v1/accounts/{account}", headers=u2).status_code == 404


class TestLegacyBackfill:
    def test_mail_threaded_before_conversations_is_put_into_them_by_the_sweep(self, env: dict[str, Any]) -> None:
        from sqlalchemy import select, update
        from sqlmodel import Session

        from models import Conversation, Email
        from models.db import get_engine
        from tests.harness.flow import tick

        ada = f"Ada <{CRM['contact'][1]}>"
        env["imap"].seed("INBOX", make_message(1, from_=ada, subject="Old", message_id="<o1@t>"), when=T0)
        env["imap"].seed("INBOX", make_message(2, from_=ada, subject="Re: Old", message_id="<o2@t>", in_reply_to="<o1@t>"),
                         when=T0 + timedelta(hours=1))
        _sync(env)
        with Session(get_engine()) as s:  # as the earlier version left them: "mid:<root>" and no conversation
            s.execute(update(Email).values(thread_id="mid:o1@t"))
            s.execute(Conversation.__table__.delete())  # type: ignore[attr-defined]
            s.commit()
        assert env["client"].get("/api/v1/conversations", headers=env["h"]).json()["items"] == []
        assert tick()["conversation_backfill"] == 2
        assert tick()["conversation_backfill"] == 0
        items = env["client"].get("/api/v1/conversations", headers=env["h"]).json()["items"]
        assert [(i["subject"], i["message_count"]) for i in items] == [("Old", 2)]
        with Session(get_engine()) as s:
            assert set(s.execute(select(Email.thread_id)).scalars()) == {items[0]["id"]}


class TestAssignmentByEmail:
    def test_an_assignee_who_asked_gets_the_assignment_by_email_once(self, env: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_NOTIFY_SMTP_URL", "smtp://notify.example.test:2525?from=notifications@mailpipe.example&security=none")
        reset_settings()
        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", make_message(1, from_=f"Ada <{CRM['contact'][1]}>", subject="Broken export", message_id="<x1@t>"))
        account = _sync(env)
        c.patch(f"/api/v1/accounts/{account}", json={"delegates": ["u2", "u3"]}, headers=h)
        c.put("/api/v1/users/u2", json={"name": "Udo", "email": "udo@team.example", "notify_by_email": True}, headers=h)
        conv = c.get("/api/v1/conversations", headers=h).json()["items"][0]["id"]
        before = len(env["smtp"].sends)
        as_u1 = {**h, "X-Mailpipe-User": "u1"}
        assert c.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u2"}, headers=as_u1).status_code == 200
        assert c.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u2"}, headers=h).status_code == 200  # unchanged: no news
        assert c.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u3"}, headers=h).status_code == 200  # u3 did not ask
        drain(env["broker"], env["worker"])
        mails = env["smtp"].sends[before:]
        assert [(sender, rcpts) for _, sender, rcpts, _ in mails] == [("notifications@mailpipe.example", ("udo@team.example",))]
        assert b"Conversation assigned to you by u1" in mails[0][3]
        notes = c.get("/api/v1/notifications", headers={**h, "X-Mailpipe-User": "u3"}).json()["items"]
        assert [n["type"] for n in notes] == ["conversation.assigned"]


class TestWebhookEventsAndErase:
    """Assignment, a status change and a reopening record their webhook events in their own
    transactions; erasing the customer's mail takes the conversation with it."""

    def test_events_recorded_and_erase_removes_the_conversation(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        from sqlmodel import Session, select

        from models import Conversation, WebhookEndpoint, WebhookEvent
        from models.db import get_engine
        from ops.keys import seal
        from pipeline.flows import events_outbox, webhooks
        from pipeline.stages.webhooks import new_secret

        monkeypatch.setattr(events_outbox, "_kick", lambda session: None)  # record only: this test reads the outbox
        monkeypatch.setattr(webhooks, "_enqueue_delivery", lambda endpoint_id, delay_ms=None: None)
        c, h = env["client"], env["h"]
        with Session(get_engine()) as s:
            s.add(WebhookEndpoint(org_id=env["org_id"], url="https://crm.example/hook",
                                  events=["conversation.assigned", "conversation.status_changed"],
                                  secret=seal("webhook_endpoints", "secret", new_secret(b"s" * 32))))
            s.commit()
        env["imap"].seed("INBOX", make_message(1, from_="Zed <zed@customer.example>", subject="Help", message_id="<z1@t>"),
                         when=datetime.now(UTC) - timedelta(minutes=5))
        account = _sync(env)
        conv = c.get("/api/v1/conversations", headers=h).json()["items"][0]["id"]
        as_u1 = {**h, "X-Mailpipe-User": "u1"}
        assert c.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u1"}, headers=as_u1).status_code == 200
        assert c.patch(f"/api/v1/conversations/{conv}", json={"status": "resolved"}, headers=h).status_code == 200
        env["imap"].seed("INBOX", make_message(2, from_="Zed <zed@customer.example>", subject="Re: Help", message_id="<z2@t>",
                                               headers={"In-Reply-To": "<z1@t>"}))
        _sync(env, account)
        with Session(get_engine()) as s:
            rows = s.execute(select(WebhookEvent).order_by(WebhookEvent.created_at, WebhookEvent.id)).scalars()  # type: ignore[arg-type]
            events = [(e.type, e.data) for e in rows]
        assert [(t, d["conversation_id"]) for t, d in events] == [("conversation.assigned", conv), ("conversation.status_changed", conv),
                                                                 ("conversation.status_changed", conv)]
        assert events[0][1]["assignee_id"] == "u1" and events[0][1]["assigned_by"] == "u1"
        assert (events[1][1]["status"], events[1][1]["previous_status"], events[1][1]["reason"]) == ("resolved", "open", "patch")
        assert (events[2][1]["status"], events[2][1]["previous_status"], events[2][1]["reason"]) == ("open", "resolved", "new_message")

        r = c.post("/api/v1/privacy/erase", json={"email": "zed@customer.example"}, headers=h)
        assert r.status_code == 202
        for _ in range(20):
            drain(env["broker"], env["worker"])
            if c.get(f"/api/v1/privacy/jobs/{r.json()['job_id']}", headers=h).json()["state"] == "done":
                break
        assert c.get("/api/v1/conversations", headers=h).json()["items"] == []
        assert c.get(f"/api/v1/conversations/{conv}", headers=h).status_code == 404
        with Session(get_engine()) as s:
            assert s.execute(select(Conversation)).first() is None
