"""Shared inboxes, delegation, conversations, assignment and outreach against Dovecot (IMAP), aiosmtpd
(SMTP), PostgreSQL and RabbitMQ (issue 18, must-show 1-5).

Mail arrives the way an MTA delivers it (``doveadm save`` into INBOX) and is fetched by the real
sync; replies go out through aiosmtpd and come back into the conversation through the ingest chain.
Every read is made as a user (``X-Mailpipe-User``) unless it says "org".
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, FlagChange, Outbox
from models.db import get_engine
from pipeline.flows.sync import fetch_now
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, make_org, seed_crm
from tests.harness.mail import make_message
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

ADA = CRM["contact"][1]  # contact c-ada
LEE = CRM["lead"][1]  # another customer
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class Team:
    """The API client, the org key and the mailboxes of one test."""

    def __init__(self, client: TestClient, key: str, dovecot: Dovecot, smtp: Any) -> None:
        self.client, self.key, self.dovecot, self.smtp = client, key, dovecot, smtp
        self.logins: dict[str, str] = {}

    def h(self, user: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.key}"}
        if user is not None:
            h["X-Mailpipe-User"] = user
        return h

    def get(self, path: str, user: str | None) -> Any:
        return self.client.get(path, headers=self.h(user))

    def mailbox(self, owner: str, **access: Any) -> str:
        """A mailbox on Dovecot (IMAP) and aiosmtpd (SMTP) owned by ``owner``; returns its account id."""
        import uuid

        email, password = f"box{uuid.uuid4().hex[:10]}@example.test", f"pw-{uuid.uuid4().hex[:10]}"
        self.dovecot.add_user(email, password)
        self.smtp.users[email] = password
        body = {"user_id": owner, "provider": "imap", "email": email,
                "imap": {"host": self.dovecot.host, "port": self.dovecot.tls_port, "security": "ssl", "password": password},
                "smtp": {"host": self.smtp.host, "port": self.smtp.port, "security": "starttls", "password": password}, **access}
        r = self.client.post("/api/v1/accounts", json=body, headers=self.h())
        assert r.status_code == 201, r.text
        self.logins[r.json()["id"]] = email
        return str(r.json()["id"])

    def deliver(self, account_id: str, raw: bytes, message_id: str) -> Email:
        """Deliver into the mailbox's INBOX, sync, and wait until the email is through the pipeline."""
        self.dovecot.deliver(self.logins[account_id], raw)
        return self.arrived(account_id, message_id)

    def arrived(self, account_id: str, message_id: str, timeout: float = 60) -> Email:
        def done() -> Email | None:
            with Session(get_engine()) as s:
                e = s.execute(select(Email).where(Email.account_id == account_id, Email.message_id == message_id)).scalar_one_or_none()
            if e is not None and e.pipeline_state == "done":
                return e
            fetch_now(account_id)  # a manual sync (no-op while one is running)
            return None

        return wait_until(done, timeout, 0.3, f"{message_id} fetched and through the pipeline")

    def conversations(self, user: str | None, **params: Any) -> list[dict[str, Any]]:
        r = self.client.get("/api/v1/conversations", params=params, headers=self.h(user))
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@pytest.fixture
def team(live: dict[str, Any], dovecot: Dovecot, smtp_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_POLL_SECONDS", "600")  # syncs in these tests are the explicit ones
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("MAILPIPE_MAIL_ALLOWED_NETS", "127.0.0.0/8")
    reset_process_state()
    org_id, key = make_org()
    seed_crm(org_id)
    with TestClient(create_app()) as client:
        t = Team(client, key, dovecot, smtp_server)
        for uid, name in (("u1", "Una One"), ("u2", "Udo Two"), ("u3", "Uma Three"), ("ops", "Ops Lead")):
            r = client.put(f"/api/v1/users/{uid}", json={"name": name, "email": f"{uid}@team.example"}, headers=t.h())
            assert r.status_code == 200, r.text
        yield t


def _at(minutes_ago: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes_ago)


def _thread_index(root: bytes, *children: bytes) -> str:
    """An Outlook Thread-Index: 22 bytes of conversation root, 5 more per reply."""
    return base64.b64encode(root + b"".join(children)).decode()


class TestSharedMailbox:
    def test_members_see_it_and_others_get_404_everywhere(self, team: Team) -> None:
        """Must-show 1: a shared support mailbox with members u1 and u2; u3 gets 404 on its conversations,
        emails, attachments, timeline entries and search hits."""
        support = team.mailbox("ops", shared=True, members=["u1", "u2"])
        got = team.get(f"/api/v1/accounts/{support}", "u1").json()
        assert got["shared"] is True and got["members"] == ["u1", "u2"]
        raw = make_message(1, from_=f"Ada <{ADA}>", to=team.logins[support], subject="Invoice 4711 is wrong",
                           body="Our invoice 4711 lists the wrong plan.", message_id="<inv1@engine.example>",
                           attachments=[("invoice.png", "image/png", PNG)], date=_at(5))
        email = team.deliver(support, raw, "inv1@engine.example")
        detail = team.get(f"/api/v1/emails/{email.id}", "u1").json()
        attachment = detail["attachments"][0]["id"]
        assert detail["links"]["contact_ids"] == ["c-ada"]

        for member in ("u1", "u2"):
            convs = team.conversations(member)
            assert [c["id"] for c in convs] == [email.thread_id], member
            conv = team.get(f"/api/v1/conversations/{email.thread_id}", member).json()
            assert conv["account_id"] == support and [m["id"] for m in conv["messages"]] == [email.id]
            assert conv["participants"] == [ADA] and conv["awaiting_reply"] is True and conv["status"] == "open"
            assert team.get(f"/api/v1/emails/{email.id}/attachments/{attachment}", member).content == PNG
            timeline = team.get("/api/v1/crm/contacts/c-ada/timeline", member).json()["items"]
            assert [i["email_id"] for i in timeline] == [email.id]
            hits = team.get("/api/v1/emails?q=invoice 4711", member).json()["items"]
            assert [i["id"] for i in hits] == [email.id]

        # u3: neither owner, member nor delegate
        assert team.conversations("u3") == []
        assert team.conversations("u3", q="invoice") == []
        for path in (f"/api/v1/conversations/{email.thread_id}", f"/api/v1/emails/{email.id}",
                     f"/api/v1/emails/{email.id}/attachments/{attachment}", f"/api/v1/emails/{email.id}/tracking",
                     f"/api/v1/accounts/{support}"):
            r = team.get(path, "u3")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert team.get("/api/v1/crm/contacts/c-ada/timeline", "u3").json()["items"] == []
        assert team.get("/api/v1/emails?q=invoice 4711", "u3").json()["items"] == []
        assert team.get(f"/api/v1/emails?account_id={support}", "u3").json()["items"] == []
        assert support not in [a["id"] for a in team.get("/api/v1/accounts", "u3").json()["items"]]
        h3 = team.h("u3")
        assert team.client.patch(f"/api/v1/conversations/{email.thread_id}", json={"status": "resolved"}, headers=h3).status_code == 404
        assert team.client.patch(f"/api/v1/emails/{email.id}", json={"seen": True}, headers=h3).status_code == 404
        assert team.client.patch(f"/api/v1/emails/{email.id}", json={"flagged": True}, headers=team.h("u2")).status_code == 200
        with Session(get_engine()) as s:  # recorded as the member who flagged it
            assert s.execute(select(FlagChange.user_id).where(FlagChange.email_id == email.id)).scalar_one() == "u2"
        assert team.client.post(f"/api/v1/emails/{email.id}/reply", json={"account_id": support, "body_text": "hi"},
                                headers=h3).status_code == 404
        # without the header the key acts for the whole organization, as before
        assert [c["id"] for c in team.conversations(None)] == [email.thread_id]

        # membership changes take effect at once: u2 leaves, the mailbox stops being shared
        r = team.client.patch(f"/api/v1/accounts/{support}", json={"members": ["u1"]}, headers=team.h("ops"))
        assert r.status_code == 200 and r.json()["members"] == ["u1"]
        assert team.get(f"/api/v1/conversations/{email.thread_id}", "u2").status_code == 404
        assert team.client.patch(f"/api/v1/accounts/{support}", json={"shared": False}, headers=team.h()).status_code == 200
        assert team.get(f"/api/v1/emails/{email.id}", "u1").status_code == 404
        assert team.get(f"/api/v1/emails/{email.id}", "ops").status_code == 200


class TestOutlookThreading:
    def test_outlook_reply_joins_by_thread_index_and_subject_other_customer_does_not(self, team: Team) -> None:
        """Must-show 2: an Outlook reply without References/In-Reply-To, with `RE:` and a Thread-Index,
        lands in its conversation; another customer's reply with the same subject does not."""
        box = team.mailbox("u1")
        first = team.deliver(box, make_message(1, from_=f"Ada <{ADA}>", to=team.logins[box], subject="Pricing for 50 seats",
                                               message_id="<p1@engine.example>", date=_at(60)), "p1@engine.example")
        root = os.urandom(22)
        outlook = make_message(2, from_=f"Ada <{ADA}>", to=team.logins[box], subject="RE: Pricing for 50 seats",
                               message_id="<AM0PR01MB0001@eurprd01.prod.outlook.com>", date=_at(30),
                               headers={"Thread-Index": _thread_index(root, os.urandom(5)), "Thread-Topic": "Pricing for 50 seats"})
        reply = team.deliver(box, outlook, "AM0PR01MB0001@eurprd01.prod.outlook.com")
        assert reply.in_reply_to is None and reply.references == []
        assert reply.thread_id == first.thread_id

        # the next Outlook message of that conversation: same Thread-Index root, other subject wording
        later = make_message(3, from_=f"Ada <{ADA}>", to=team.logins[box], subject="AW: [EXT] Pricing for 50 seats (updated)",
                             message_id="<AM0PR01MB0002@eurprd01.prod.outlook.com>", date=_at(20),
                             headers={"Thread-Index": _thread_index(root, os.urandom(5), os.urandom(5))})
        assert team.deliver(box, later, "AM0PR01MB0002@eurprd01.prod.outlook.com").thread_id == first.thread_id

        other = make_message(4, from_=f"Lee <{LEE}>", to=team.logins[box], subject="RE: Pricing for 50 seats",
                             message_id="<AM0PR02MB0003@eurprd02.prod.outlook.com>", date=_at(10),
                             headers={"Thread-Index": _thread_index(os.urandom(22), os.urandom(5))})
        stranger = team.deliver(box, other, "AM0PR02MB0003@eurprd02.prod.outlook.com")
        assert stranger.thread_id != first.thread_id

        convs = {c["id"]: c for c in team.conversations("u1")}
        assert set(convs) == {first.thread_id, stranger.thread_id}
        assert convs[first.thread_id]["message_count"] == 3 and convs[first.thread_id]["participants"] == [ADA]
        assert convs[first.thread_id]["subject"] == "Pricing for 50 seats"
        assert convs[stranger.thread_id]["message_count"] == 1 and convs[stranger.thread_id]["participants"] == [LEE]
        detail = team.get(f"/api/v1/conversations/{first.thread_id}", "u1").json()
        assert [m["message_id"] for m in detail["messages"]] == [  # oldest first
            "p1@engine.example", "AM0PR01MB0001@eurprd01.prod.outlook.com", "AM0PR01MB0002@eurprd01.prod.outlook.com"]


class TestDelegation:
    def test_delegate_sees_the_private_mailbox_and_loses_it_when_removed(self, team: Team) -> None:
        """Must-show 4: delegating u1's private mailbox to u2 opens it to u2 and no one else; removing
        the delegate closes it again."""
        private = team.mailbox("u1")
        mail = team.deliver(private, make_message(1, from_=f"Ada <{ADA}>", to=team.logins[private], subject="Contract draft",
                                                  message_id="<c1@engine.example>", date=_at(3)), "c1@engine.example")

        def sees(user: str) -> bool:
            statuses = {team.get(p, user).status_code for p in (
                f"/api/v1/accounts/{private}", f"/api/v1/emails/{mail.id}", f"/api/v1/conversations/{mail.thread_id}")}
            listed = mail.thread_id in [c["id"] for c in team.conversations(user)]
            assert statuses in ({200}, {404}) and listed == (statuses == {200}), (user, statuses, listed)
            return listed

        assert [u for u in ("u1", "u2", "u3", "ops") if sees(u)] == ["u1"]
        # only the owner (or the org) delegates; u2 cannot grant itself access
        assert team.client.patch(f"/api/v1/accounts/{private}", json={"delegates": ["u2"]}, headers=team.h("u2")).status_code == 404
        r = team.client.patch(f"/api/v1/accounts/{private}", json={"delegates": ["u2"]}, headers=team.h("u1"))
        assert r.status_code == 200 and r.json()["delegates"] == ["u2"] and r.json()["shared"] is False
        assert [u for u in ("u1", "u2", "u3", "ops") if sees(u)] == ["u1", "u2"]
        assert team.client.patch(f"/api/v1/accounts/{private}", json={"delegates": ["u3"]}, headers=team.h("u2")).status_code == 403
        r = team.client.patch(f"/api/v1/accounts/{private}", json={"delegates": []}, headers=team.h("u1"))
        assert r.status_code == 200 and r.json()["delegates"] == []
        assert [u for u in ("u1", "u2", "u3", "ops") if sees(u)] == ["u1"]


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {i["id"] for i in items}


class TestAssignReplyReopen:
    def test_assign_notifies_reply_clears_awaiting_resolve_then_customer_reopens(self, team: Team) -> None:
        """Must-show 3: assigning to u2 notifies u2 (in-app and websocket); the assignee_id, unassigned and
        awaiting_reply filters right before and after u2 replies from the shared mailbox through aiosmtpd;
        resolved, then a new customer message reopens it."""
        support = team.mailbox("ops", shared=True, members=["u1", "u2"])
        first = team.deliver(support, make_message(1, from_=f"Ada <{ADA}>", to=team.logins[support], subject="Login broken",
                                                   message_id="<lb1@engine.example>", date=_at(10)), "lb1@engine.example")
        other = team.deliver(support, make_message(2, from_=f"Lee <{LEE}>", to=team.logins[support], subject="Feature request",
                                                   message_id="<fr1@prospect.example>", date=_at(9)), "fr1@prospect.example")
        conv = first.thread_id
        assert conv and other.thread_id and conv != other.thread_id
        assert _ids(team.conversations("u1", unassigned="true")) == {conv, other.thread_id}
        assert _ids(team.conversations("u1", awaiting_reply="true")) == {conv, other.thread_id}

        token = team.client.post("/api/v1/notifications/token", json={}, headers=team.h("u2")).json()["token"]
        # a user's token is theirs: asking for another user's is a 404
        assert team.client.post("/api/v1/notifications/token", json={"user_id": "u1"}, headers=team.h("u2")).status_code == 404
        with team.client.websocket_connect(f"/api/v1/notifications/ws?token={token}") as ws:
            assert ws.receive_json() == {"type": "hello", "user_id": "u2"}
            r = team.client.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u2"}, headers=team.h("u1"))
            assert r.status_code == 200, r.text
            assert r.json()["assignee_id"] == "u2" and r.json()["assigned_by"] == "u1"
            pushed = ws.receive_json()
        assert pushed["type"] == "conversation.assigned" and pushed["user_id"] == "u2"
        assert pushed["conversation_id"] == conv and pushed["assigned_by"] == "u1" and pushed["email_id"] == first.id
        notes = team.get("/api/v1/notifications?unread=true", "u2").json()
        assert [n["type"] for n in notes["items"]] == ["conversation.assigned"] and notes["items"][0]["data"]["conversation_id"] == conv
        assert team.get("/api/v1/notifications?user_id=u2", "u1").status_code == 404  # not u1's to read
        # an assignee must see the mailbox
        bad = team.client.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": "u3"}, headers=team.h("u1"))
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "assignee_cannot_see"

        # right before u2 replies
        assert _ids(team.conversations("u1", assignee_id="u2")) == {conv}
        assert _ids(team.conversations("u1", unassigned="true")) == {other.thread_id}
        assert _ids(team.conversations("u1", awaiting_reply="true")) == {conv, other.thread_id}

        before = len(team.smtp.messages)
        r = team.client.post(f"/api/v1/emails/{first.id}/reply", json={"account_id": support, "body_text": "Fixed, please retry."},
                             headers=team.h("u2"))
        assert r.status_code == 202, r.text
        reply_id = r.json()["id"]
        sent = wait_until(lambda: (e := team.get(f"/api/v1/emails/{reply_id}", "u2").json())["pipeline_state"] == "done" and e,
                          60, 0.2, "the reply sent and through the pipeline")
        assert sent["status"] == "sent" and sent["thread_id"] == conv
        assert len(team.smtp.messages) == before + 1 and ADA in team.smtp.messages[-1][1]
        assert b"From: Udo Two <" in team.smtp.messages[-1][2]  # signed by the member who wrote it
        with Session(get_engine()) as s:
            assert s.get(Outbox, reply_id).user_id == "u2"  # recorded as the user who replied  # type: ignore[union-attr]

        # right after
        assert _ids(team.conversations("u1", assignee_id="u2")) == {conv}
        assert _ids(team.conversations("u1", unassigned="true")) == {other.thread_id}
        assert _ids(team.conversations("u1", awaiting_reply="true")) == {other.thread_id}
        assert _ids(team.conversations("u1", awaiting_reply="false")) == {conv}
        after = team.get(f"/api/v1/conversations/{conv}", "u1").json()
        assert after["last_direction"] == "outbound" and after["awaiting_reply_since"] is None and after["message_count"] == 2
        assert [m["id"] for m in after["messages"]] == [first.id, reply_id]

        r = team.client.patch(f"/api/v1/conversations/{conv}", json={"status": "resolved"}, headers=team.h("u2"))
        assert r.json()["status"] == "resolved" and r.json()["status_changed_by"] == "u2"
        assert _ids(team.conversations("u2", status="resolved")) == {conv}
        assert _ids(team.conversations("u2", status="open")) == {other.thread_id}

        again = make_message(3, from_=f"Ada <{ADA}>", to=team.logins[support], subject="Re: Login broken",
                             message_id="<lb2@engine.example>", in_reply_to=f"<{sent['message_id']}>", body="Still broken!")
        assert team.deliver(support, again, "lb2@engine.example").thread_id == conv
        reopened = team.get(f"/api/v1/conversations/{conv}", "u2").json()
        assert reopened["status"] == "open" and reopened["awaiting_reply"] is True and reopened["message_count"] == 3
        assert reopened["assignee_id"] == "u2"
        assert _ids(team.conversations("u2", status="open", awaiting_reply="true", assignee_id="u2")) == {conv}
        r = team.client.patch(f"/api/v1/conversations/{conv}", json={"assignee_id": None}, headers=team.h("u1"))
        assert r.json()["assignee_id"] is None
        assert _ids(team.conversations("u1", unassigned="true")) == {conv, other.thread_id}


class TestOutreach:
    def test_outreach_names_the_teammate_and_a_send_warns_about_it(self, team: Team) -> None:
        """Must-show 5: outreach lists u1's mail to a contact when u2 asks (who and when; not the content
        of a mailbox u2 cannot see), and a send from u2 to that contact returns recent_outreach naming u1."""
        private = team.mailbox("u1")
        support = team.mailbox("ops", shared=True, members=["u1", "u2"])
        r = team.client.post("/api/v1/emails/send", json={"account_id": private, "to": [ADA], "subject": "Renewal offer",
                                                          "body_text": "Hi Ada, here is our renewal offer."}, headers=team.h("u1"))
        assert r.status_code == 202 and r.json()["recent_outreach"] == []
        first = r.json()["id"]
        wait_until(lambda: team.get(f"/api/v1/emails/{first}", "u1").json()["pipeline_state"] == "done", 60, 0.2, "u1's mail sent")

        seen_by_u2 = team.get("/api/v1/crm/contacts/c-ada/outreach?days=14", "u2").json()["items"]
        assert len(seen_by_u2) == 1
        item = seen_by_u2[0]
        assert item["user_id"] == "u1" and item["direction"] == "outbound" and item["at"]
        assert item["visible"] is False and item["subject"] is None and item["email_id"] is None  # u1's private mailbox
        mine = team.get("/api/v1/crm/contacts/c-ada/outreach", "u1").json()["items"]
        assert [(i["user_id"], i["email_id"], i["subject"]) for i in mine] == [("u1", first, "Renewal offer")]
        assert team.get("/api/v1/crm/contacts/nobody/outreach", "u2").status_code == 404

        r = team.client.post("/api/v1/emails/send", json={"account_id": support, "to": [ADA.upper()], "subject": "Support follow-up",
                                                          "body_text": "Hi Ada, following up."}, headers=team.h("u2"))
        assert r.status_code == 202, r.text
        outreach = r.json()["recent_outreach"]
        assert [(i["user_id"], i["direction"], i["visible"]) for i in outreach] == [("u1", "outbound", False)]
        # u2 may not send from u1's private mailbox: it does not exist for u2
        r = team.client.post("/api/v1/emails/send", json={"account_id": private, "to": [ADA], "subject": "x", "body_text": "x"},
                             headers=team.h("u2"))
        assert r.status_code == 404


class TestConcurrentThreading:
    def test_two_batches_claiming_the_same_key_end_in_one_conversation(self, use_pg: str) -> None:
        """Two parse batches thread a message and its reply at the same time on PostgreSQL: the second
        waits on the first's key, finds it claimed and merges into its conversation."""
        from models import Conversation
        from pipeline.flows.conversations import Incoming, thread_emails
        from tests.harness.flow import make_account

        org_id, _ = make_org("race")
        account = make_account(org_id, email="race@example.test")
        now = datetime.now(UTC)
        with Session(get_engine()) as s:
            for eid, mid, refs in (("e1", "root@race", []), ("e2", "reply@race", ["root@race"])):
                s.add(Email(id=f"{eid}{os.urandom(11).hex()}", org_id=org_id, account_id=account, dedupe_key=mid, message_id=mid,
                            references=refs, subject=f"Race {eid}", from_email="cust@race.example", received_at=now,
                            status="received", pipeline_state="fetched"))
            s.commit()
            rows = {e.message_id: e for e in s.execute(select(Email).where(Email.account_id == account)).scalars()}
        first_written, results = threading.Event(), {}

        def batch(mid: str, refs: list[str], hold: float) -> None:
            with Session(get_engine(), expire_on_commit=False) as s:
                e = s.get(Email, rows[mid].id)
                assert e is not None
                s.expunge(e)
                results[mid] = thread_emails(s, [Incoming(e, None, refs, None)], {account: "race@example.test"})[e.id]
                first_written.set()
                time.sleep(hold)  # the other batch now blocks on the key this one wrote
                s.commit()

        t1 = threading.Thread(target=batch, args=("root@race", [], 1.0))
        t1.start()
        assert first_written.wait(10)
        first_written.clear()
        t2 = threading.Thread(target=batch, args=("reply@race", ["root@race"], 0.0))
        t2.start()
        t1.join(20)
        t2.join(20)
        with Session(get_engine()) as s:
            threads = set(s.execute(select(Email.thread_id).where(Email.account_id == account)).scalars())
            convs = list(s.execute(select(Conversation).where(Conversation.account_id == account)).scalars())
        live = [c for c in convs if c.merged_into is None]
        assert len(threads) == 1 and [c.id for c in live] == list(threads) and live[0].message_count == 2
        assert [c.merged_into for c in convs if c.merged_into] == [live[0].id]  # the second batch's own conversation, merged
