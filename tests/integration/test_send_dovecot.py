"""Outbound mail against aiosmtpd (STARTTLS + AUTH), Dovecot, PostgreSQL and RabbitMQ (issue: outbound,
must-show 1-3, 5-7; the SIGKILL scenarios are in test_send_crash.py)."""

from __future__ import annotations

import base64
import email
import re
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, EmailLink, EmailLocation, TrackedLink, utcnow
from models.db import get_engine
from ops.keys import get_keyring
from pipeline.clients import imap
from pipeline.flows.connections import tls_context
from pipeline.stages.tracking_ids import verify_link_hash, verify_recipient_hash
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, count, make_org, seed_crm, tick
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
HTML = """<!doctype html><html><head><title>Proposal</title></head><body>
<p>Hi Ada &amp; team,</p>
<p><a href="http://engine.example/plain">plain http</a>,
<a href="https://engine.example/deck?utm=1&amp;x=2">the deck</a>,
<a href="mailto:ada@engine.example">mail me</a>, <a href="tel:+15551234">call</a>,
<a href="#pricing">pricing below</a>.</p>
<h2 id="pricing">Pricing</h2><p>Regards</p>
</body></html>"""


@pytest.fixture
def out(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str], smtp_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An organization with the CRM seeded and one mailbox: IMAP on Dovecot, SMTP on aiosmtpd."""
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    reset_process_state()
    org_id, key = make_org()
    seed_crm(org_id)
    user, password = dovecot_user
    smtp_server.users[user] = password
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as client:
        def account(provider: str = "imap") -> str:
            body = {"user_id": "u1", "provider": provider, "email": user,
                    "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
                    "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}}
            r = client.post("/api/v1/accounts", json=body, headers=h)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        yield {"client": client, "h": h, "user": user, "password": password, "smtp": smtp_server, "dovecot": dovecot,
               "account": account, "org_id": org_id}


def _send(o: dict[str, Any], account_id: str, **body: Any) -> Any:
    payload = {"account_id": account_id, "to": [CRM["contact"][1]], "subject": "Proposal", "body_html": HTML, **body}
    return o["client"].post("/api/v1/emails/send", json=payload, headers=o["h"])


def _email(o: dict[str, Any], email_id: str) -> dict[str, Any]:
    r = o["client"].get(f"/api/v1/emails/{email_id}", headers=o["h"])
    assert r.status_code == 200, r.text
    return dict(r.json())


def _until_status(o: dict[str, Any], email_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        data = _email(o, email_id)
        return data if data["status"] in statuses else None

    return dict(wait_until(ready, timeout, interval=0.1, what=f"email {email_id} to reach {statuses}"))


def _imap(o: dict[str, Any]) -> imap.ImapSession:
    return imap.connect(imap.ImapSettings(host=o["dovecot"].host, port=o["dovecot"].tls_port, security="ssl",
                                          username=o["user"], password=o["password"], ssl_context=tls_context()))


def _sent_folder(o: dict[str, Any]) -> list[imap.FetchedMessage]:
    session = _imap(o)
    try:
        session.select("Sent")
        return list(session.fetch_peek(session.search_uids()))
    finally:
        session.close()


class TestTrackedSend:
    def test_mime_pixels_links_tls_sent_copy_and_no_duplicate(self, out: dict[str, Any]) -> None:
        """Must-show 1 and 2: two To, one Cc, a PDF; per-recipient pixels, only http(s) rewritten and
        resolvable, text part, attachment intact, TLS; the Sent copy has \\Seen and the next sync makes
        no second email."""
        o = out
        acct = o["account"]()
        to = [f"Ada Lovelace <{CRM['contact'][1]}>", "bob@else.example"]
        cc = [CRM["lead"][1]]
        r = _send(o, acct, to=to, cc=cc, attachments=[{"filename": "proposal.pdf", "content_type": "application/pdf",
                                                       "content_base64": base64.b64encode(PDF).decode()}])
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        eid = r.json()["id"]
        data = _until_status(o, eid, ("sent", "failed"))
        assert data["status"] == "sent", data
        smtp = o["smtp"]
        assert len(smtp.messages) == 3 and all(smtp.tls), "one TLS transaction per recipient"
        keyring = get_keyring()
        with Session(get_engine()) as s:
            stored = {lk.link_hash: lk.url for lk in s.execute(select(TrackedLink).where(TrackedLink.email_id == eid)).scalars()}
        assert sorted(stored.values()) == ["http://engine.example/plain", "https://engine.example/deck?utm=1&x=2"]
        for mail_from, rcpts, raw in smtp.messages:
            assert mail_from == o["user"] and len(rcpts) == 1
            msg = email.message_from_bytes(raw, policy=policy.default)
            assert not msg.defects and msg.get_content_type() == "multipart/mixed"
            assert msg["To"].count("@") == 2 and msg["Cc"] == CRM["lead"][1] and msg["X-Mailpipe-Email-Id"] == eid
            html = msg.get_body(("html",)).get_content()
            text = msg.get_body(("plain",)).get_content()
            assert "the deck (https://engine.example/deck?utm=1&x=2)" in text and "/track/" not in text
            pixels = re.findall(r'<img src="[^"]*/track/open/([^/"]+)/([^"]+)"', html)
            assert len(pixels) == 1 and pixels[0][0] == eid
            assert verify_recipient_hash(partial(keyring.verify, "open"), eid, rcpts[0], pixels[0][1]), "pixel is this recipient's"
            for other in {CRM["contact"][1], "bob@else.example", CRM["lead"][1]} - {rcpts[0]}:
                assert not verify_recipient_hash(partial(keyring.verify, "open"), eid, other, pixels[0][1])
            assert 'href="mailto:ada@engine.example"' in html and 'href="tel:+15551234"' in html and 'href="#pricing"' in html
            assert "engine.example/plain" not in html and "engine.example/deck" not in html
            clicks = re.findall(r'href="[^"]*/track/click/([^/"]+)/([^"]+)"', html)
            assert len(clicks) == 2
            for cid, lhash in clicks:
                assert cid == eid and lhash in stored
                assert verify_link_hash(partial(keyring.verify, "click"), eid, stored[lhash], lhash)
            (att,) = list(msg.iter_attachments())
            assert att.get_filename() == "proposal.pdf" and att.get_content_type() == "application/pdf"
            assert att.get_content() == PDF
        # Must-show 2: the Sent copy (untracked, so the sender reading it is no "open") with \Seen.
        wait_until(lambda: _email(o, eid)["send"]["sent_copy"]["state"] == "done", 30, what="Sent copy")
        (copy,) = _sent_folder(o)
        assert "\\Seen" in copy.flags
        copy_msg = email.message_from_bytes(copy.raw, policy=policy.default)
        assert copy_msg["Message-ID"] == f"<{data['message_id']}>" and b"/track/" not in copy.raw
        assert list(copy_msg.iter_attachments())[0].get_content() == PDF
        with Session(get_engine()) as s:
            loc = s.execute(select(EmailLocation).where(EmailLocation.email_id == eid)).scalar_one()
        assert loc.folder == "Sent" and loc.uid == copy.uid
        # Linked like inbound mail, on the contact's and the lead's timelines.
        wait_until(lambda: count(Email, Email.id == eid, Email.pipeline_state == "done"), 30, what="ingest of the sent email")
        with Session(get_engine()) as s:
            links = {(lk.entity_type, lk.entity_id) for lk in s.execute(select(EmailLink).where(EmailLink.email_id == eid)).scalars()}
        assert {("contact", CRM["contact"][0]), ("lead", CRM["lead"][0])} <= links
        tl = o["client"].get(f"/api/v1/crm/contacts/{CRM['contact'][0]}/timeline", headers=o["h"]).json()["items"]
        assert tl[0]["email_id"] == eid and tl[0]["direction"] == "outbound" and tl[0]["attachment_count"] == 1
        # The next sync stores the Sent copy as a second location of the same email, not a new one.
        started = utcnow()
        assert o["client"].post(f"/api/v1/accounts/{acct}/sync", headers=o["h"]).status_code == 202
        tick()
        wait_until(lambda: _account_synced_since(acct, started), 60, what="the next sync")
        assert count(Email) == 1 and count(EmailLocation, EmailLocation.email_id == eid) == 1

    def test_user_opt_out_sends_no_pixel_and_no_rewritten_links(self, out: dict[str, Any]) -> None:
        """Tracking issue, must-show 5 (second half): a user who opted out sends untracked mail, one
        transaction for every recipient, with the original links."""
        o = out
        acct = o["account"]()
        r = o["client"].put("/api/v1/users/u1", headers=o["h"],
                            json={"name": "Alice Seller", "email": o["user"], "tracking_opt_out": True})
        assert r.status_code == 200 and r.json()["tracking_opt_out"] is True
        r = _send(o, acct, to=[CRM["contact"][1], "bob@else.example"])
        assert r.status_code == 202, r.text
        assert _until_status(o, r.json()["id"], ("sent", "failed"))["status"] == "sent"
        ((_, rcpts, raw),) = o["smtp"].messages
        assert sorted(rcpts) == sorted([CRM["contact"][1], "bob@else.example"])
        html = email.message_from_bytes(raw, policy=policy.default).get_body(("html",)).get_content()
        assert "/track/" not in html and "<img" not in html
        assert 'href="https://engine.example/deck?utm=1&amp;x=2"' in html and 'href="http://engine.example/plain"' in html
        with Session(get_engine()) as s:
            assert s.execute(select(TrackedLink).where(TrackedLink.email_id == r.json()["id"])).first() is None


def _account_synced_since(account_id: str, when: Any) -> bool:
    from models import EmailAccount

    with Session(get_engine()) as s:
        a = s.get(EmailAccount, account_id)
        return bool(a and a.last_synced_at and a.last_synced_at >= when and a.fetch_owner is None)


class TestReplies:
    def test_451_twice_then_250(self, out: dict[str, Any]) -> None:
        """Must-show 3a: 451 twice then 250 → sent once, three attempts recorded."""
        o = out
        acct = o["account"]()
        o["smtp"].fail_with(451, "4.3.0 Temporary system failure, try again", stage="data", times=2)
        eid = _send(o, acct, track_opens=False, track_clicks=False).json()["id"]
        data = _until_status(o, eid, ("sent", "failed"))
        assert data["status"] == "sent" and len(o["smtp"].messages) == 1
        (delivery,) = data["send"]["deliveries"]
        assert delivery["attempts"] == 3 and data["send"]["attempts"] == 3
        replies = [e for e in delivery["log"] if e["event"] == "reply"]
        assert [e["code"] for e in replies] == [451, 451, 250]

    def test_550_fails_at_once(self, out: dict[str, Any]) -> None:
        """Must-show 3b: 550 → failed with smtp_code 550 and the server's words after one attempt."""
        o = out
        acct = o["account"]()
        o["smtp"].fail_with(550, "5.1.1 <ada@engine.example>: Recipient address rejected", stage="rcpt")
        eid = _send(o, acct, track_opens=False, track_clicks=False).json()["id"]
        data = _until_status(o, eid, ("sent", "failed"))
        assert data["status"] == "failed" and data["error"]["smtp_code"] == 550
        assert "Recipient address rejected" in data["error"]["message"] and data["error"]["code"] == "mailbox_unavailable"
        assert data["send"]["attempts"] == 1 and o["smtp"].messages == []


class TestIdempotencyAndValidation:
    def test_same_key_one_delivery_and_injection_422(self, out: dict[str, Any]) -> None:
        """Must-show 5: the same idempotency_key twice → one id, one delivery; header injection → 422."""
        o = out
        acct = o["account"]()
        a = _send(o, acct, idempotency_key="crm-7781", track_opens=False, track_clicks=False)
        b = _send(o, acct, idempotency_key="crm-7781", track_opens=False, track_clicks=False)
        assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
        _until_status(o, a.json()["id"], ("sent",))
        c = _send(o, acct, idempotency_key="crm-7781", track_opens=False, track_clicks=False)
        assert c.json()["id"] == a.json()["id"] and c.json()["status"] == "sent"
        assert len(o["smtp"].messages) == 1 and count(Email) == 1
        for bad in ({"subject": "Hello\r\nBcc: everyone@victim.example"}, {"to": ["ada@engine.example\r\nX-Evil: 1"]},
                    {"cc": ["ok@x.example", "a@b.example\nBcc: x@y.example"]}):
            r = _send(o, acct, **bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["code"] == "validation_error"
        assert count(Email) == 1


class TestCapsAndSchedule:
    def test_501_gmail_sends_500_delivered_1_deferred(self, out: dict[str, Any]) -> None:
        """Must-show 6: a gmail-preset mailbox, 501 sends in one day → 500 delivered, 1 deferred to the next window."""
        o = out
        acct = o["account"]("gmail")
        ids = []
        for i in range(501):
            r = _send(o, acct, to=[f"r{i}@bulk.example"], subject=f"Note {i}", body_html=f"<p>n {i}</p>",
                      track_opens=False, track_clicks=False)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        wait_until(lambda: count(Email, Email.status == "sent") >= 500 and count(Email, Email.status == "queued") == 1,
                   240, interval=0.5, what="500 sent and 1 deferred")
        assert len(o["smtp"].messages) == 500
        with Session(get_engine()) as s:
            queued = s.execute(select(Email.id).where(Email.status == "queued")).scalar_one()
        data = _email(o, queued)
        deferred = data["send"]["deferred_until"]
        assert deferred is not None and data["deferred_until"] == deferred
        from datetime import datetime

        from models import EmailAccount

        with Session(get_engine()) as s:
            window = s.get(EmailAccount, acct).send_window_start  # type: ignore[union-attr]
        assert datetime.fromisoformat(deferred.replace("Z", "+00:00")) == window + timedelta(hours=24)
        tick()  # not yet due: nothing more goes out
        assert len(o["smtp"].messages) == 500

    def test_scheduled_fires_when_due_cancelled_never(self, out: dict[str, Any]) -> None:
        """Must-show 7: a scheduled send goes out when its time comes (time injected into the sweep);
        a cancelled one never does."""
        from pipeline.flows.send_due import sweep_send_due

        o = out
        acct = o["account"]()
        at = utcnow() + timedelta(days=2)
        a = _send(o, acct, send_at=at.isoformat(), track_opens=False, track_clicks=False).json()
        b = _send(o, acct, send_at=at.isoformat(), to=["other@x.example"], track_opens=False, track_clicks=False).json()
        assert a["status"] == b["status"] == "scheduled"
        r = o["client"].post(f"/api/v1/emails/{b['id']}/cancel", headers=o["h"])
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        for when in (utcnow(), at - timedelta(seconds=1)):  # not due yet
            with Session(get_engine()) as s:
                assert sweep_send_due(s, when) == 0
                s.commit()
        assert _email(o, a["id"])["status"] == "scheduled"
        with Session(get_engine()) as s:
            assert sweep_send_due(s, at + timedelta(seconds=1)) == 1
            s.commit()
        assert _until_status(o, a["id"], ("sent", "failed"))["status"] == "sent"
        assert [rc for _, rc, _ in o["smtp"].messages] == [[CRM["contact"][1]]]
        assert _email(o, b["id"])["status"] == "cancelled"
        assert o["client"].post(f"/api/v1/emails/{a['id']}/cancel", headers=o["h"]).status_code == 409


class TestTemplates:
    def test_fallbacks_in_delivered_mail(self, out: dict[str, Any]) -> None:
        """{{firstName|there}} through aiosmtpd: "Hi Ada" for a contact with a first name, "Hi there" for one
        without, and a lead's firstName the same way (issue: templates, must-show 2)."""
        from models import Contact, Lead, Template

        o = out
        acct = o["account"]()
        with Session(get_engine()) as s:
            s.add(Contact(org_id=o["org_id"], id="c-anon", last_name="Anon", email="anon@x.example", email_norm="anon@x.example"))
            lead = s.get(Lead, (o["org_id"], CRM["lead"][0]))
            assert lead is not None
            lead.firstName = "Jane"
            s.add(lead)
            t = Template(org_id=o["org_id"], name="Hi", subject="Hello {{firstName|there}}", body_html="<p>Hi {{firstName|there}}</p>")
            s.add(t)
            s.commit()
            tid = t.id
        for merge, to in (({"contact_id": CRM["contact"][0]}, CRM["contact"][1]), ({"contact_id": "c-anon"}, "anon@x.example"),
                          ({"lead_id": CRM["lead"][0]}, CRM["lead"][1])):
            r = o["client"].post("/api/v1/emails/send", headers=o["h"], json={
                "account_id": acct, "to": [to], "template_id": tid, "merge": merge, "track_opens": False, "track_clicks": False})
            assert r.status_code == 202, r.text
            _until_status(o, r.json()["id"], ("sent",))
        got = {rcpts[0]: email.message_from_bytes(raw, policy=policy.default) for _, rcpts, raw in o["smtp"].messages}
        assert got[CRM["contact"][1]].get_body(("html",)).get_content().startswith("<p>Hi Ada</p>")
        assert got["anon@x.example"].get_body(("html",)).get_content().startswith("<p>Hi there</p>")
        assert got[CRM["lead"][1]].get_body(("html",)).get_content().startswith("<p>Hi Jane</p>")
        assert got["anon@x.example"]["Subject"] == "Hello there" and "Hi there" in got["anon@x.example"].get_body(("plain",)).get_content()
