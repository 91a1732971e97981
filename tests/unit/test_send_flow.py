"""Sending end to end on the fake SMTP transport, the fake IMAP server and the StubBroker.

The same scenarios run against aiosmtpd, Dovecot, PostgreSQL and RabbitMQ in
tests/integration/test_send_dovecot.py; these are the fast twins.
"""

from __future__ import annotations

import base64
import email
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Delivery, Email, EmailAccount, EmailLink, EmailLocation, Outbox, Suppression, TrackedLink, utcnow
from models.db import get_engine
from pipeline.clients.smtp import SmtpErrorKind
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from pipeline.flows.send_due import sweep_send_due
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, count, drain, make_account, make_org, seed_crm, tick
from web.app import create_app

HTML = ('<html><body><p>Hi Ada,</p><p><a href="https://engine.example/deck?a=1&amp;b=2">deck</a> '
        '<a href="mailto:ada@engine.example">mail</a> <a href="#top">top</a></p></body></html>')


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.05")
    from ops.settings import reset_settings

    reset_settings()
    imap_server = FakeImapServer("alice@example.test", "alicepass")
    smtp = FakeSmtpTransport()
    use_imap_connector(fake_connect(imap_server))
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "imap": imap_server, "smtp": smtp,
               "broker": stub_broker, "worker": stub_worker, "org_id": org_id, "account_id": account_id}


def send(env: dict[str, Any], **body: Any) -> Any:
    payload = {"account_id": env["account_id"], "to": [CRM["contact"][1]], "subject": "Proposal", "body_html": HTML, **body}
    return env["client"].post("/api/v1/emails/send", json=payload, headers=env["h"])


def settle(env: dict[str, Any]) -> None:
    drain(env["broker"], env["worker"])


def until_sent(env: dict[str, Any], email_id: str, rounds: int = 40) -> None:
    """Tick and drain until the email is sent (retries wait in the delay queue or for the sweep)."""
    for _ in range(rounds):
        settle(env)
        tick()
        if get(env, email_id)["status"] == "sent":
            return


def get(env: dict[str, Any], email_id: str) -> dict[str, Any]:
    r = env["client"].get(f"/api/v1/emails/{email_id}", headers=env["h"])
    assert r.status_code == 200, r.text
    return r.json()


class TestSend:
    def test_tracked_copies_sent_copy_links_and_timeline(self, env: dict[str, Any]) -> None:
        """One copy per recipient with its own pixel; Sent copy untracked with \\Seen; linked and on the timeline."""
        r = send(env, to=[CRM["contact"][1], "Bob <bob@else.example>"], cc=[CRM["lead"][1]], bcc=["boss@acme.example"])
        assert r.status_code == 202 and r.json()["status"] == "queued"
        eid = r.json()["id"]
        settle(env)
        sends = env["smtp"].sends
        assert sorted(rcpt for _, _, rcpts, _ in sends for rcpt in rcpts) == sorted(
            [CRM["contact"][1], "bob@else.example", CRM["lead"][1], "boss@acme.example"])
        pixels = set()
        for _, _, _, raw in sends:
            msg = email.message_from_bytes(raw, policy=policy.default)
            assert msg["Bcc"] is None and msg["X-Mailpipe-Email-Id"] == eid
            html = msg.get_body(("html",)).get_content()
            assert "mailto:ada@engine.example" in html and 'href="#top"' in html and "engine.example/deck" not in html
            text = msg.get_body(("plain",)).get_content()
            assert "https://engine.example/deck?a=1&b=2" in text and "/track/" not in text
            pixels.update(p for p in html.split('"') if "/track/open/" in p)
        assert len(pixels) == 4
        data = get(env, eid)
        assert data["status"] == "sent" and data["direction"] == "outbound" and data["bcc_emails"] == ["boss@acme.example"]
        assert data["send"]["sent_copy"]["state"] == "done"
        sent = env["imap"].folder("Sent")
        assert len(sent.messages) == 1
        (stored,) = sent.messages.values()
        assert "\\Seen" in stored.flags and b"/track/" not in stored.raw
        with Session(get_engine()) as s:
            links = list(s.execute(select(TrackedLink).where(TrackedLink.email_id == eid)).scalars())
            assert [lk.url for lk in links] == ["https://engine.example/deck?a=1&b=2"]
            assert s.execute(select(EmailLocation).where(EmailLocation.email_id == eid)).scalar_one().folder == "Sent"
            linked = {(lk.entity_type, lk.entity_id) for lk in s.execute(select(EmailLink).where(EmailLink.email_id == eid)).scalars()}
        assert ("contact", CRM["contact"][0]) in linked and ("lead", CRM["lead"][0]) in linked
        timeline = env["client"].get(f"/api/v1/crm/contacts/{CRM['contact'][0]}/timeline", headers=env["h"]).json()["items"]
        assert [i["email_id"] for i in timeline] == [eid] and timeline[0]["direction"] == "outbound"
        # The next sync sees the Sent copy as a second location of the same email, not a new one.
        tick()
        settle(env)
        assert count(Email) == 1

    def test_sent_copy_waits_out_an_imap_outage(self, env: dict[str, Any]) -> None:
        """IMAP down when the mail went out: the Sent copy is retried later, not lost."""
        from tests.harness.wait import wait_until

        env["imap"].stop()
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        first = wait_until(lambda: get(env, eid)["send"]["sent_copy"]["error"], 10, what="the first APPEND failure")
        data = get(env, eid)
        assert data["status"] == "sent" and data["send"]["sent_copy"]["state"] == "appending" and first.startswith("connect")
        env["imap"].start()  # back before the retry (1 s later)
        settle(env)
        assert get(env, eid)["send"]["sent_copy"]["state"] == "done" and len(env["imap"].folder("Sent").messages) == 1

    def test_untracked_is_one_transaction(self, env: dict[str, Any]) -> None:
        """Tracking off: one SMTP transaction for everyone, links untouched, no pixel."""
        eid = send(env, to=["a@x.example", "b@x.example"], track_opens=False, track_clicks=False).json()["id"]
        settle(env)
        (only,) = env["smtp"].sends
        assert only[2] == ("a@x.example", "b@x.example") and b"/track/" not in only[3]
        assert get(env, eid)["status"] == "sent"

    def test_user_opt_out_means_no_tracking(self, env: dict[str, Any]) -> None:
        """A user who opted out sends mail with no pixel and no rewritten links."""
        r = env["client"].put("/api/v1/users/u1", headers=env["h"],
                              json={"name": "Alice Seller", "email": "alice@example.test", "tracking_opt_out": True})
        assert r.status_code == 200 and r.json()["tracking_opt_out"] is True
        send(env)
        settle(env)
        (only,) = env["smtp"].sends
        assert b"/track/" not in only[3] and b"engine.example/deck" in only[3]

    def test_attachment_and_marketing_headers(self, env: dict[str, Any]) -> None:
        """A base64 attachment arrives intact; marketing mail carries a per-recipient one-click unsubscribe."""
        pdf = b"%PDF-1.4\n" + bytes(range(256)) * 10
        r = send(env, category="marketing", attachments=[{"filename": "q3.pdf", "content_type": "application/pdf",
                                                           "content_base64": base64.b64encode(pdf).decode()}])
        eid = r.json()["id"]
        settle(env)
        (only,) = env["smtp"].sends
        msg = email.message_from_bytes(only[3], policy=policy.default)
        (att,) = list(msg.iter_attachments())
        assert att.get_filename() == "q3.pdf" and att.get_content() == pdf
        assert msg["List-Unsubscribe-Post"] is None or msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f"/unsubscribe/{eid}/" in msg["List-Unsubscribe"]
        assert get(env, eid)["attachments"][0]["filename"] == "q3.pdf"


class TestValidation:
    def test_header_injection_and_bad_addresses_are_422(self, env: dict[str, Any]) -> None:
        """CR/LF in a header value or a bad address is refused before anything is stored."""
        r = send(env, subject="Hi\r\nBcc: victim@evil.example")
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        assert send(env, to=["not an address"]).status_code == 422
        assert send(env, to=[]).status_code == 422
        assert send(env, account_id="nope").status_code == 404
        assert count(Email) == 0

    def test_idempotency_key(self, env: dict[str, Any]) -> None:
        """The same key twice → the same id and one delivery; another body with that key → 409."""
        a = send(env, idempotency_key="k-1")
        b = send(env, idempotency_key="k-1")
        assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"] and b.json()["created"] is False
        settle(env)
        assert len(env["smtp"].sends) == 1
        assert send(env, idempotency_key="k-1", subject="other").status_code == 409


class TestFailures:
    def test_4xx_retries_then_sent(self, env: dict[str, Any]) -> None:
        """451 twice then 250 → sent once after three attempts."""
        env["smtp"].fail_with(451, "4.3.0 try later", stage="data", times=2)
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        until_sent(env, eid)
        data = get(env, eid)
        assert data["status"] == "sent" and data["send"]["attempts"] == 3 and len(env["smtp"].sends) == 1

    def test_5xx_fails_at_once(self, env: dict[str, Any]) -> None:
        """550 → failed after one attempt with the server's code and words."""
        env["smtp"].fail_with(550, "5.1.1 no such user", stage="rcpt")
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        settle(env)
        data = get(env, eid)
        assert data["status"] == "failed" and data["error"]["smtp_code"] == 550 and "no such user" in data["error"]["message"]
        assert data["send"]["attempts"] == 1

    def test_crash_after_data_is_not_resent(self, env: dict[str, Any]) -> None:
        """A delivery left in `data` (worker died after DATA) is reconciled as sent, never resent."""
        eid = send(env, track_opens=False, track_clicks=False, send_at=(utcnow() + timedelta(hours=1)).isoformat()).json()["id"]
        with Session(get_engine()) as s:
            s.execute(update(Delivery).where(Delivery.email_id == eid).values(state="data", attempts=1,
                                                                              updated_at=utcnow() - timedelta(hours=1)))
            s.execute(update(Outbox).where(Outbox.email_id == eid).values(state="sending", cap_reserved=True, send_at=None))
            s.commit()
        tick()
        settle(env)
        data = get(env, eid)
        assert env["smtp"].sends == [] and data["status"] == "sent" and data["error"]["code"] == "delivery_unconfirmed"

    def test_a_recent_data_delivery_waits_out_the_grace(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """A `data` delivery younger than the grace may belong to a live run still awaiting the reply:
        a redelivered message steps back, then reconciles once the grace has passed."""
        monkeypatch.setenv("MAILPIPE_SEND_DATA_GRACE_SECONDS", "0.5")
        from ops.settings import reset_settings

        reset_settings()
        eid = send(env, track_opens=False, track_clicks=False, send_at=(utcnow() + timedelta(hours=1)).isoformat()).json()["id"]
        with Session(get_engine()) as s:
            s.execute(update(Delivery).where(Delivery.email_id == eid).values(state="data", attempts=1, updated_at=utcnow()))
            s.execute(update(Outbox).where(Outbox.email_id == eid).values(state="sending", cap_reserved=True, send_at=None))
            s.commit()
        tick()
        with Session(get_engine()) as s:
            assert s.execute(select(Delivery.state).where(Delivery.email_id == eid)).scalar_one() == "data"
        settle(env)
        data = get(env, eid)
        assert env["smtp"].sends == [] and data["status"] == "sent" and data["send"]["deliveries"][0]["state"] == "unconfirmed"

    def test_crash_before_data_is_sent(self, env: dict[str, Any]) -> None:
        """A delivery left in `sending` (DATA never issued) is sent on the next run."""
        eid = send(env, track_opens=False, track_clicks=False, send_at=(utcnow() + timedelta(hours=1)).isoformat()).json()["id"]
        with Session(get_engine()) as s:
            s.execute(update(Delivery).where(Delivery.email_id == eid).values(state="sending", attempts=1))
            s.execute(update(Outbox).where(Outbox.email_id == eid).values(state="sending", cap_reserved=True, send_at=None))
            s.commit()
        tick()
        settle(env)
        assert len(env["smtp"].sends) == 1 and get(env, eid)["status"] == "sent"

    def test_recipients_refused_inside_an_accepted_transaction(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """One transaction, b deferred (450) and c refused (550): a gets it now, b in its own retry, c is reported."""
        monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "1")
        from ops.settings import reset_settings

        reset_settings()
        env["smtp"].refuse("b@x.example", 450, "4.2.1 mailbox busy")
        env["smtp"].refuse("c@x.example", 550, "5.1.1 no such user")
        eid = send(env, to=["a@x.example", "b@x.example", "c@x.example"], track_opens=False, track_clicks=False).json()["id"]
        from tests.harness.wait import wait_until

        wait_until(lambda: count(Delivery, Delivery.email_id == eid) == 2, 10, what="the first attempt")  # the retry waits 1 s
        assert [r for _, _, rcpts, _ in env["smtp"].sends for r in rcpts] == ["a@x.example"]
        env["smtp"].accept("b@x.example")
        until_sent(env, eid)
        data = get(env, eid)
        assert [r for _, _, rcpts, _ in env["smtp"].sends for r in rcpts] == ["a@x.example", "b@x.example"]
        assert data["status"] == "sent" and data["error"]["code"] == "partial_failure"
        assert data["error"]["failed_recipients"] == ["c@x.example"]

    def test_an_unreadable_secret_fails_the_email_instead_of_retrying_forever(self, env: dict[str, Any]) -> None:
        """A password sealed under a key that is gone cannot get better by retrying: failed, with the reason."""
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(smtp_password_enc="v1.gone.AAAA"))
            s.commit()
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        settle(env)
        data = get(env, eid)
        assert data["status"] == "failed" and data["error"]["code"] == "internal_error" and env["smtp"].sends == []
        assert "alicepass" not in str(data)

    def test_connection_error_retries(self, env: dict[str, Any]) -> None:
        """A refused connection is retried, then the mail goes out."""
        env["smtp"].raise_error(SmtpErrorKind.CONNECT, "connection refused", times=1)
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        until_sent(env, eid)
        assert get(env, eid)["status"] == "sent" and len(env["smtp"].sends) == 1


class TestScheduleAndCaps:
    def test_scheduled_fires_when_due_and_cancel(self, env: dict[str, Any]) -> None:
        """send_at in the future → scheduled; due (time injected) → sent; a cancelled one never goes."""
        later = utcnow() + timedelta(hours=2)
        a = send(env, send_at=later.isoformat(), track_opens=False, track_clicks=False).json()
        b = send(env, send_at=later.isoformat(), to=["b@x.example"], track_opens=False, track_clicks=False).json()
        assert a["status"] == b["status"] == "scheduled"
        assert env["client"].post(f"/api/v1/emails/{b['id']}/cancel", headers=env["h"]).json()["status"] == "cancelled"
        tick()
        settle(env)
        assert env["smtp"].sends == []
        with Session(get_engine()) as s:
            sweep_send_due(s, later + timedelta(seconds=1))
            s.commit()
        settle(env)
        assert len(env["smtp"].sends) == 1 and get(env, a["id"])["status"] == "sent"
        assert get(env, b["id"])["status"] == "cancelled"
        assert env["client"].post(f"/api/v1/emails/{a['id']}/cancel", headers=env["h"]).status_code == 409

    def test_daily_cap_defers(self, env: dict[str, Any]) -> None:
        """Over the account's cap, the email stays queued with deferred_until at the window's end."""
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(send_cap_per_day=2))
            s.commit()
        ids = [send(env, to=[f"r{i}@x.example"], track_opens=False, track_clicks=False).json()["id"] for i in range(3)]
        settle(env)
        states = {i: get(env, i) for i in ids}
        assert sorted(d["status"] for d in states.values()) == ["queued", "sent", "sent"]  # whichever came third waits
        (waiting,) = [i for i, d in states.items() if d["status"] == "queued"]
        assert states[waiting]["send"]["deferred_until"] is not None and len(env["smtp"].sends) == 2
        with Session(get_engine()) as s:  # a day later (moved back rather than waited for), the window opens
            s.execute(update(EmailAccount).values(send_window_start=utcnow() - timedelta(hours=25)))
            s.execute(update(Outbox).where(Outbox.email_id == waiting).values(deferred_until=None, next_attempt_at=None))
            s.commit()
        tick()
        settle(env)
        assert get(env, waiting)["status"] == "sent" and len(env["smtp"].sends) == 3


class TestReplyForward:
    def test_reply_threads_and_forward_carries_attachments(self, env: dict[str, Any]) -> None:
        """A reply has In-Reply-To/References and the quote; a forward includes the original's attachment."""
        pdf = b"%PDF-1.4 original"
        first = send(env, track_opens=False, track_clicks=False, attachments=[
            {"filename": "a.pdf", "content_type": "application/pdf", "content_base64": base64.b64encode(pdf).decode()}]).json()["id"]
        settle(env)
        parent = get(env, first)
        r = env["client"].post(f"/api/v1/emails/{first}/reply", headers=env["h"],
                               json={"account_id": env["account_id"], "body_html": "<p>Following up</p>",
                                     "track_opens": False, "track_clicks": False})
        assert r.status_code == 202, r.text
        f = env["client"].post(f"/api/v1/emails/{first}/forward", headers=env["h"],
                               json={"account_id": env["account_id"], "to": ["fwd@x.example"], "note_html": "<p>FYI</p>",
                                     "track_opens": False, "track_clicks": False})
        assert f.status_code == 202, f.text
        settle(env)
        reply_msg = email.message_from_bytes(env["smtp"].sends[1][3], policy=policy.default)
        assert reply_msg["In-Reply-To"] == f"<{parent['message_id']}>" and reply_msg["Subject"] == "Re: Proposal"
        assert "wrote:" in reply_msg.get_body(("plain",)).get_content()
        fwd = email.message_from_bytes(env["smtp"].sends[2][3], policy=policy.default)
        assert fwd["Subject"] == "Fwd: Proposal" and [a.get_content() for a in fwd.iter_attachments()] == [pdf]
        assert get(env, r.json()["id"])["thread_id"] == parent["thread_id"]


class TestUnsubscribeAndErase:
    def test_one_click_unsubscribe_suppresses_later_marketing(self, env: dict[str, Any]) -> None:
        """The List-Unsubscribe URL: GET only asks, POST (one-click) unsubscribes; forged → 404; later marketing skips them."""
        c = env["client"]
        eid = send(env, category="marketing", track_opens=False, track_clicks=False).json()["id"]
        settle(env)
        msg = email.message_from_bytes(env["smtp"].sends[0][3], policy=policy.default)
        url = msg["List-Unsubscribe"].strip("<>").split(">")[0]
        path = url[url.index("/unsubscribe/"):]
        assert c.get(path).status_code == 200 and count(Suppression) == 0
        assert c.post(path[:-4] + "0000", data={"List-Unsubscribe": "One-Click"}).status_code == 404
        r = c.post(path, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200 and count(Suppression) == 1
        again = send(env, category="marketing", track_opens=False, track_clicks=False).json()["id"]
        settle(env)
        assert len(env["smtp"].sends) == 1
        data = get(env, again)
        assert data["status"] == "failed" and data["error"]["code"] == "all_suppressed"
        sales = send(env, track_opens=False, track_clicks=False).json()["id"]  # sales mail is not marketing
        settle(env)
        assert get(env, sales)["status"] == "sent" and len(env["smtp"].sends) == 2
        assert get(env, eid)["status"] == "sent"

    def test_erase_account_removes_outbound_rows(self, env: dict[str, Any]) -> None:
        """Deleting a mailbox with erase=true also removes its outbound mail, deliveries and tracked links."""
        send(env)
        settle(env)
        assert count(Outbox) == 1 and count(TrackedLink) == 1
        r = env["client"].delete(f"/api/v1/accounts/{env['account_id']}?erase=true", headers=env["h"])
        assert r.status_code == 204, r.text
        assert count(Outbox) == 0 and count(Delivery) == 0 and count(TrackedLink) == 0 and count(Email) == 0


class TestLostMessages:
    def test_a_send_whose_message_was_lost_goes_out_on_a_later_tick(self, env: dict[str, Any]) -> None:
        """The database is the source of truth: a send whose broker message vanished is re-swept."""
        env["worker"].pause()
        eid = send(env, track_opens=False, track_clicks=False).json()["id"]
        env["broker"].flush_all()  # the in-memory broker restarted: the message is gone
        env["worker"].resume()
        settle(env)
        assert env["smtp"].sends == [] and get(env, eid)["status"] == "queued"
        tick()  # handed over moments ago: not yet re-sent
        settle(env)
        assert env["smtp"].sends == []
        with Session(get_engine()) as s:  # ... a few minutes later
            s.execute(update(Outbox).values(enqueued_at=utcnow() - timedelta(minutes=3)))
            s.commit()
        tick()
        settle(env)
        assert get(env, eid)["status"] == "sent" and len(env["smtp"].sends) == 1


class TestGmail:
    def test_gmails_own_sent_copy_is_a_location_not_a_second_email(self, db: str, stub_broker: StubBroker,
                                                                    stub_worker: Worker) -> None:
        """Gmail saves what it sent itself (no APPEND from us); syncing that copy, keyed by X-GM-MSGID,
        adds a location to our outbound email instead of creating a second one."""
        srv = FakeImapServer("alice@example.test", "alicepass", gmail=True)
        smtp = FakeSmtpTransport()
        use_imap_connector(fake_connect(srv))
        use_smtp_transport(smtp)
        org_id, key = make_org()
        seed_crm(org_id)
        with TestClient(create_app()) as c:
            h = {"Authorization": f"Bearer {key}"}
            body = {"user_id": "u1", "provider": "gmail", "email": "alice@example.test",
                    "imap": {"password": "alicepass"}, "smtp": {"password": "alicepass"}}
            acct = c.post("/api/v1/accounts", json=body, headers=h).json()
            assert acct["saves_sent_copy"] is True
            eid = c.post("/api/v1/emails/send", headers=h, json={"account_id": acct["id"], "to": [CRM["contact"][1]],
                                                                 "subject": "Hi", "body_text": "Hello"}).json()["id"]
            drain(stub_broker, stub_worker)
            ((_, _, _, raw),) = smtp.sends
            assert srv.folder("[Gmail]/Sent Mail").messages == {}  # we did not APPEND
            srv.seed("[Gmail]/All Mail", raw, flags=["\\Seen"], gm_msgid=1_400_000_000_000_000_001, gm_thrid=77)
            c.post(f"/api/v1/accounts/{acct['id']}/sync", headers=h)
            tick()
            drain(stub_broker, stub_worker)
            assert count(Email) == 1
            with Session(get_engine()) as s:
                assert s.execute(select(EmailLocation.folder).where(EmailLocation.email_id == eid)).scalar_one() == "[Gmail]/All Mail"


class TestMerge:
    def _template(self, env: dict[str, Any], subject: str, html: str) -> str:
        from models import Template

        with Session(get_engine()) as s:
            t = Template(org_id=env["org_id"], name="Follow-up", subject=subject, body_html=html)
            s.add(t)
            s.commit()
            return t.id

    def test_template_with_fallbacks_for_contacts_and_leads(self, env: dict[str, Any]) -> None:
        """{{firstName|there}}: "Hi Ada" for a contact with a first name, "Hi there" without, a lead's firstName too."""
        from models import Contact, Lead

        with Session(get_engine()) as s:
            s.add(Contact(org_id=env["org_id"], id="c-nofirst", last_name="Nobody", email="nobody@x.example",
                          email_norm="nobody@x.example"))
            lead = s.get(Lead, (env["org_id"], CRM["lead"][0]))
            assert lead is not None
            lead.firstName = "Lee"
            s.add(lead)
            s.commit()
        tid = self._template(env, "Next steps for {{company|your team}}", "<p>Hi {{firstName|there}},</p><p>{{senderName}}</p>")
        sent = []
        for merge, to in (({"contact_id": CRM["contact"][0]}, CRM["contact"][1]), ({"contact_id": "c-nofirst"}, "nobody@x.example"),
                          ({"lead_id": CRM["lead"][0]}, CRM["lead"][1])):
            r = env["client"].post("/api/v1/emails/send", headers=env["h"], json={
                "account_id": env["account_id"], "to": [to], "template_id": tid, "merge": merge,
                "track_opens": False, "track_clicks": False})
            assert r.status_code == 202, r.text
            sent.append(r.json()["id"])
        settle(env)
        by_rcpt = {rcpts[0]: email.message_from_bytes(raw, policy=policy.default) for _, _, rcpts, raw in env["smtp"].sends}
        html_of = {r: m.get_body(("html",)).get_content() for r, m in by_rcpt.items()}
        assert "Hi Ada," in html_of[CRM["contact"][1]] and "Hi there," in html_of["nobody@x.example"]
        assert "Hi Lee," in html_of[CRM["lead"][1]] and all("Alice Seller" in t for t in html_of.values())
        assert by_rcpt[CRM["contact"][1]]["Subject"] == "Next steps for Engine Co"
        assert by_rcpt["nobody@x.example"]["Subject"] == "Next steps for your team"
        assert get(env, sent[0])["template_id"] == tid

    def test_strict_send_names_missing_and_unknown_fields(self, env: dict[str, Any]) -> None:
        tid = self._template(env, "Hello", "<p>Hi {{firstName}}, about {{dealAmount}}</p>")
        r = env["client"].post("/api/v1/emails/send", headers=env["h"], json={
            "account_id": env["account_id"], "to": ["x@y.example"], "template_id": tid, "merge": {"lead_id": CRM["lead"][0]}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "merge_fields_missing"
        assert r.json()["error"]["details"]["missing"] == ["firstName", "dealAmount"]
        r = env["client"].post("/api/v1/emails/send", headers=env["h"], json={
            "account_id": env["account_id"], "to": ["x@y.example"], "body_html": "<p>Hi {{fistName|there}}</p>", "merge": {}})
        assert r.status_code == 422 and r.json()["error"]["details"]["suggestions"]["fistName"][0] == "firstName"
        r = env["client"].post("/api/v1/emails/send", headers=env["h"], json={
            "account_id": env["account_id"], "to": ["x@y.example"], "body_html": "<p>Hi {{firstName</p>", "merge": {}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "merge_syntax_error"
        assert count(Email) == 0 and env["smtp"].sends == []
