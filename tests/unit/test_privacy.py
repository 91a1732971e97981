"""Privacy and deliverability on SQLite with the fake IMAP/SMTP servers and the StubBroker: the
sanitizer and report detector (pure), bounces and suppression, erase, retention and export.

The same scenarios against Dovecot, aiosmtpd, PostgreSQL and moto S3 are in
tests/integration/test_privacy_dovecot.py; these are the fast twins.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import delete, select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Document, Email, EmailAddress, EmailLink, ErasedMessage, FolderState, Lead, Notification, PrivacyJob, Suppression, utcnow
from models.db import get_engine
from pipeline.clients.storage import get_storage
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from pipeline.stages.bounces import detect_report
from pipeline.stages.safe_html import BLOCKED_IMAGE, safe_html
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, count, drain, make_account, make_org, seed_crm, tick
from tests.harness.mail import make_message
from tests.harness.reports import arf_complaint, postfix_dsn, text_bounce

ME = "alice@example.test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64)) * 4
DANGEROUS = """<html><head><meta http-equiv="refresh" content="0;url=https://evil.example/">
<link rel="stylesheet" href="https://evil.example/x.css"><style>body { background: url(https://evil.example/bg) }</style></head>
<body onload="steal()"><p>Hello <b>there</b></p>
<script>alert("xss")</script>
<img src="https://evil.example/x.png" onerror="alert(document.cookie)" alt="broken">
<a href="javascript:alert(1)">click me</a> <a href="https://ok.example/page">fine link</a>
<iframe src="https://evil.example/frame"></iframe><form action="https://evil.example/post"><input name="pw"></form>
<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/e">
<img src="https://tracker.example/pixel.gif?u=42" width="1" height="1">
<img src="cid:logo123@mail.example" alt="logo">
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">data link</a>
<p style="color: red; background-image: url('https://tracker.example/css')">styled</p>
<p style="color: blue">blue</p><div style="width: expression(alert(1))">ie</div>
</body></html>"""


def html_with_cid(i: int, *, from_: str, message_id: str) -> bytes:
    """A multipart/related message: the dangerous HTML and the inline logo it shows by cid."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = from_, ME, f"Newsletter {i}", message_id
    msg.set_content("plain version")
    msg.add_alternative(DANGEROUS, subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(PNG, "image", "png", cid="<logo123@mail.example>", filename="logo.png")
    return bytes(msg)


def assert_safe(safe: str, *, remote: bool = False) -> None:
    """None of the dangerous parts; with ``remote`` the one remote image of evil.example may stay."""
    low = safe.lower()
    for bad in ("<script", "alert(", "onerror", "onload", "javascript:", "<iframe", "<form", "<input", "<object", "<embed",
                "<meta", "refresh", "<link", "<style", "url(", "expression(", "data:text", "evil.example"):
        if remote and bad == "evil.example":
            assert low.count(bad) == 1 and '<img src="https://evil.example/x.png" alt="broken">' in low, safe
            continue
        assert bad not in low, (bad, safe)


class TestSafeHtml:
    def test_dangerous_parts_removed_cid_rewritten_remote_blocked(self) -> None:
        safe = safe_html(DANGEROUS, cid_urls={"logo123@mail.example": "https://mp.example/api/v1/emails/E/attachments/D"},
                         remote_content=False)
        assert_safe(safe)
        assert '<img src="https://mp.example/api/v1/emails/E/attachments/D" alt="logo">' in safe
        assert "tracker.example" not in safe and safe.count(BLOCKED_IMAGE) == 2
        assert '<a href="https://ok.example/page" target="_blank" rel="noopener noreferrer">fine link</a>' in safe \
            or ('href="https://ok.example/page"' in safe and 'rel="noopener noreferrer"' in safe and 'target="_blank"' in safe)
        assert '<p style="color:blue">blue</p>' in safe.replace("color: blue", "color:blue")
        assert "<b>there</b>" in safe

    def test_remote_content_true_keeps_remote_images_only(self) -> None:
        safe = safe_html(DANGEROUS, cid_urls={}, remote_content=True)
        assert_safe(safe, remote=True)
        assert 'src="https://tracker.example/pixel.gif?u=42"' in safe
        assert "cid:" not in safe  # an unknown cid loses its src

    def test_inline_data_images_only_raster(self) -> None:
        gif = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
        safe = safe_html(f'<img src="{gif}"><img src="data:image/svg+xml;base64,PHN2Zz4="><a href="{gif}">x</a>'
                         '<blockquote cite="data:text/html,x">q</blockquote>', cid_urls={}, remote_content=False)
        assert safe.count(gif) == 1 and "svg" not in safe and "data:text" not in safe and f'<img src="{gif}">' in safe

    @pytest.mark.parametrize("name", ["nested", "pre", "attributes", "unclosed", "tables", "wide"])
    def test_hostile_bodies_stay_cheap(self, name: str) -> None:
        """5 MB of nested <div>s (unbounded, the sanitizer's tree builder is quadratic in depth and a
        few hundred thousand levels crash the process) and other bombs: a bounded time, a bounded output."""
        levels = (5_000_000 - 4) // 11
        body = {"nested": "<div>" * levels + "deep" + "</div>" * levels, "pre": "<pre>x" + "\n" * 40_000 + "x</pre>",
                "attributes": "<a " + " ".join(f"a{i}=1" for i in range(100_000)) + ">x</a>", "unclosed": "<b>" * 200_000 + "x",
                "tables": "<table><tr><td>" * 50_000, "wide": '<p>hi <a href="https://a.example/">l</a></p>' * 110_000}[name]
        started = time.monotonic()
        safe = safe_html(body, cid_urls={}, remote_content=False)
        assert time.monotonic() - started < 5.0
        assert len(safe) <= 10 * min(len(body), 5_000_000) + 200 and "<script" not in safe  # links gain rel and target

    @pytest.mark.parametrize("attack", [
        '<a href="  JaVaScRiPt:alert(1)">x</a>', '<a href="java&#x09;script:alert(1)">x</a>', "<svg onload=alert(1)>",
        '<img src=x onerror=alert(1)//', '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
        '<p style="background:u\\72l(https://evil.example/)">x</p>', "<base href='https://evil.example/'>",
        '<a href="vbscript:msgbox(1)">x</a>', '<div style="behavior: url(x.htc)">x</div>',
    ])
    def test_classic_vectors(self, attack: str) -> None:
        assert_safe(safe_html(attack, cid_urls={}, remote_content=True))


CORPUS_REPORTS = {
    "cpython/msg_16.eml": ("bounce", 1, "hard"), "cpython/msg_43.eml": ("bounce", 11, "hard"),
    "flanker/bounce__delayed.eml": ("bounce", 1, "soft"), "flanker/bounce__gmail-invalid-address.eml": ("bounce", 1, "hard"),
    "flanker/bounce__gmail-no-dns.eml": ("bounce", 1, "hard"), "flanker/bounce__mailbox-full.eml": ("bounce", 1, "hard"),
    "flanker/bounce__no-mx.eml": ("bounce", 1, "soft"), "flanker/bounce__office365.eml": ("bounce", 1, "hard"),
    "flanker/bounce__zed.eml": ("bounce", 1, "hard"), "flanker/complaints__aol.eml": ("complaint", 1, "hard"),
    "flanker/complaints__yahoo.eml": ("complaint", 1, "hard"),
    "mikel-mail/mime_emails__raw_email_with_mimepart_without_content_type.eml": ("bounce", 1, "soft"),
    "mikel-mail/multipart_report_emails__multi_address_bounce1.eml": ("bounce", 5, "hard"),
    "mikel-mail/multipart_report_emails__multipart_report_multiple_status.eml": ("bounce", 1, "hard"),
    "mikel-mail/multipart_report_emails__report_422.eml": ("bounce", 1, "soft"),
    "mikel-mail/multipart_report_emails__report_530.eml": ("bounce", 1, "hard"),
    "mimekit/bounce.eml": ("bounce", 1, "hard"),  # the recipient block base64-encoded
    "mimekit/delivery-status-multiple-blank-lines.eml": ("bounce", 1, "hard"),  # no Action: the status class says it
    "mimekit/delivery-status-no-blank-line.eml": ("bounce", 1, "hard"),
    "mimekit/delivery-status.anonymized.eml": ("bounce", 0, None),  # every field anonymized: a report of nothing
    "mimekit/delivery-status2.eml": ("bounce", 1, "hard"),
    "nodemailer-mailparser/delivery-status.eml": ("bounce", 1, "hard"),
    "spamscope-mail-parser/mail_malformed_2.eml": ("bounce", 1, "soft"),
}


class TestDetectReport:
    ORIGINAL = make_message(1, from_=ME, to="gone@rcpt.example", message_id="<orig1@example.test>",
                            headers={"X-Mailpipe-Email-Id": "0193aaaabbbbccccdddd0001"})

    def test_postfix_hard(self) -> None:
        r = detect_report(postfix_dsn(self.ORIGINAL, "gone@rcpt.example", to=ME))
        assert r is not None and r.kind == "bounce"
        assert [(x.recipient, x.type, x.status) for x in r.recipients] == [("gone@rcpt.example", "hard", "5.1.1")]
        assert "550 5.1.1" in r.recipients[0].diagnostic
        assert r.email_ids == ("0193aaaabbbbccccdddd0001",) and r.message_ids == ("orig1@example.test",)

    def test_postfix_soft_headers_only(self) -> None:
        r = detect_report(postfix_dsn(self.ORIGINAL, "gone@rcpt.example", to=ME, status="4.2.2", code=452, headers_only=True))
        assert r is not None and [(x.type, x.status) for x in r.recipients] == [("soft", "4.2.2")]
        assert r.email_ids == ("0193aaaabbbbccccdddd0001",)

    def test_arf_complaint(self) -> None:
        r = detect_report(arf_complaint(self.ORIGINAL, "gone@rcpt.example", to=ME))
        assert r is not None and r.kind == "complaint" and r.feedback_type == "abuse"
        assert [x.recipient for x in r.recipients] == ["gone@rcpt.example"] and r.message_ids == ("orig1@example.test",)

    def test_non_standard_bounce(self) -> None:
        r = detect_report(text_bounce(self.ORIGINAL, "gone@rcpt.example", to=ME))
        assert r is not None and r.kind == "bounce" and [(x.recipient, x.type) for x in r.recipients] == [("gone@rcpt.example", "hard")]
        assert r.email_ids == ("0193aaaabbbbccccdddd0001",)

    def test_public_corpus(self) -> None:
        """Every report in the 425-message public corpus (tests/data/corpus) is found, with its failed
        recipients and their type; no other message is taken for one."""
        root = Path(__file__).parents[1] / "data" / "corpus"
        found = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix not in (".md", ".tsv") and "LICENSES" not in path.parts:
                r = detect_report(path.read_bytes())
                if r is not None:
                    found[str(path.relative_to(root))] = (r.kind, len(r.recipients), r.recipients[0].type if r.recipients else None)
        assert found == CORPUS_REPORTS

    def test_ordinary_mail_is_no_report(self) -> None:
        assert detect_report(self.ORIGINAL) is None
        assert detect_report(make_message(2, from_="Jane <jane@customer.example>", subject="Delivery failed? No, a question")) is None
        assert detect_report(b"\xff\xfe garbage \x00") is None


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from ops.settings import reset_settings
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.05")
    monkeypatch.setenv("MAILPIPE_BACKFILL_DAYS", "1000")
    reset_settings()
    imap_server = FakeImapServer(ME, "alicepass")
    smtp = FakeSmtpTransport()
    use_imap_connector(fake_connect(imap_server))
    use_smtp_transport(smtp)
    org_id, key = make_org(auto_create_leads=True)
    seed_crm(org_id)
    account_id = make_account(org_id)
    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "imap": imap_server, "smtp": smtp,
               "broker": stub_broker, "worker": stub_worker, "org_id": org_id, "account_id": account_id}
    use_imap_connector(None)
    use_smtp_transport(None)


def settle(env: dict[str, Any]) -> None:
    drain(env["broker"], env["worker"])


def sync(env: dict[str, Any]) -> None:
    from sqlalchemy import update

    from models import EmailAccount

    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()
    tick()
    settle(env)


def resync_from_scratch(env: dict[str, Any]) -> None:
    """Forget every folder cursor: the next sync is a first sync that fetches the whole mailbox again."""
    with Session(get_engine()) as s:
        s.execute(delete(FolderState))
        s.commit()
    sync(env)


def send(env: dict[str, Any], to: list[str], **body: Any) -> Any:
    payload = {"account_id": env["account_id"], "to": to, "subject": "Proposal", "body_html": "<p>Hello</p>", **body}
    return env["client"].post("/api/v1/emails/send", json=payload, headers=env["h"])


def get(env: dict[str, Any], email_id: str, **params: Any) -> Any:
    return env["client"].get(f"/api/v1/emails/{email_id}", headers=env["h"], params=params)


def sent(env: dict[str, Any], to: list[str], **body: Any) -> tuple[str, bytes]:
    r = send(env, to, **body)
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    for _ in range(40):
        settle(env)
        if get(env, eid).json()["status"] == "sent":
            break
        tick()
    assert get(env, eid).json()["status"] == "sent"
    raw = next(raw for _, _, rcpts, raw in reversed(env["smtp"].sends) if f"X-Mailpipe-Email-Id: {eid}".encode() in raw)
    return eid, raw


def wait_job(env: dict[str, Any], job_id: str) -> dict[str, Any]:
    for _ in range(20):
        settle(env)
        r = env["client"].get(f"/api/v1/privacy/jobs/{job_id}", headers=env["h"])
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("done", "failed"):
            return dict(r.json())
    raise AssertionError("privacy job did not finish")


def by_mid(message_id: str) -> Email | None:
    with Session(get_engine()) as s:
        return s.execute(select(Email).where(Email.message_id == message_id)).scalar_one_or_none()


class TestSanitizedRead:
    def test_inbound_html_is_served_safe(self, env: dict[str, Any]) -> None:
        env["imap"].seed("INBOX", [html_with_cid(1, from_=f"Ada <{CRM['contact'][1]}>", message_id="<news1@mail.example>")])
        sync(env)
        e = by_mid("news1@mail.example")
        assert e is not None and e.pipeline_state == "done"
        data = get(env, e.id).json()
        assert "<script>" in data["body_html"]  # as received
        safe = data["body_html_safe"]
        assert_safe(safe)
        (logo,) = [a for a in data["attachments"] if a["content_id"] == "logo123@mail.example"]
        assert f'src="{logo["url"]}"' in safe and "tracker.example" not in safe and BLOCKED_IMAGE in safe
        assert env["client"].get(logo["url"].split("8000", 1)[-1], headers=env["h"]).content == PNG
        remote = get(env, e.id, remote_content="true").json()["body_html_safe"]
        assert_safe(remote, remote=True)
        assert 'src="https://tracker.example/pixel.gif?u=42"' in remote and f'src="{logo["url"]}"' in remote


class TestBounces:
    def test_hard_bounce_soft_bounce_and_complaint(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        leads_before = count(Lead)
        eid, raw = sent(env, ["Gone Person <gone@rcpt.example>"])
        env["imap"].seed("INBOX", [postfix_dsn(raw, "gone@rcpt.example", to=ME)])
        sync(env)
        data = get(env, eid).json()
        assert data["status"] == "bounced"
        (b,) = data["bounces"]
        assert (b["recipient"], b["type"], b["status"]) == ("gone@rcpt.example", "hard", "5.1.1") and "550" in b["diagnostic"]
        with Session(get_engine()) as s:
            report = s.execute(select(Email).where(Email.kind == "bounce")).scalar_one()
            assert not report.linked and report.pipeline_state == "done"
            assert s.execute(select(EmailLink).where(EmailLink.email_id == report.id)).first() is None
            assert s.execute(select(EmailAddress).where(EmailAddress.email_id == report.id)).first() is None
        assert get(env, report.id).json()["kind"] == "bounce" and b["report_email_id"] == report.id
        assert count(Lead) == leads_before
        assert count(Notification, Notification.email_id == report.id) == 0
        notes = c.get("/api/v1/notifications", params={"user_id": "u1"}, headers=h).json()["items"]
        assert [n["email_id"] for n in notes if n["type"] == "email.bounced"] == [eid]
        items = c.get("/api/v1/suppressions", headers=h).json()["items"]
        assert [(i["email"], i["reason"], i["email_id"]) for i in items] == [("gone@rcpt.example", "hard_bounce", eid)]
        r = send(env, ["GONE@rcpt.example", CRM["contact"][1]])
        assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_suppressed"
        assert r.json()["error"]["details"]["addresses"] == ["gone@rcpt.example"]
        # The same report synced again (a second copy) changes nothing.
        assert len(get(env, eid).json()["bounces"]) == 1

        # 4.x.x: soft, the email stays sent, nothing suppressed, the next send goes.
        eid2, raw2 = sent(env, ["full@rcpt.example"])
        env["imap"].seed("INBOX", [postfix_dsn(raw2, "full@rcpt.example", to=ME, status="4.2.2", code=452)])
        sync(env)
        data2 = get(env, eid2).json()
        assert data2["status"] == "sent" and [(x["type"], x["status"]) for x in data2["bounces"]] == [("soft", "4.2.2")]
        assert count(Suppression, Suppression.address_norm == "full@rcpt.example") == 0
        assert send(env, ["full@rcpt.example"]).status_code == 202

        # An ARF complaint suppresses the complainer; unsubscribes block marketing mail only.
        eid3, raw3 = sent(env, ["angry@rcpt.example"])
        env["imap"].seed("INBOX", [arf_complaint(raw3, "angry@rcpt.example", to=ME)])
        sync(env)
        assert get(env, eid3).json()["status"] == "sent"
        assert c.get("/api/v1/suppressions", params={"reason": "complaint"}, headers=h).json()["items"][0]["email"] == "angry@rcpt.example"
        assert send(env, ["angry@rcpt.example"]).status_code == 422
        assert count(Notification, Notification.kind == "email.complained") == 1

    def test_suppression_api(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        r = c.post("/api/v1/suppressions", json={"email": "Manual@Block.example"}, headers=h)
        assert r.status_code == 201 and r.json()["email"] == "manual@block.example" and r.json()["reason"] == "manual"
        assert c.post("/api/v1/suppressions", json={"email": "not an address"}, headers=h).status_code == 422
        assert send(env, ["manual@block.example"]).json()["error"]["details"]["addresses"] == ["manual@block.example"]
        with Session(get_engine()) as s:
            s.add(Suppression(org_id=env["org_id"], address_norm="unsub@x.example", reason="unsubscribe"))
            s.commit()
        assert send(env, ["unsub@x.example"]).status_code == 202  # sales mail: unsubscribes do not block it
        for i in range(3):
            c.post("/api/v1/suppressions", json={"email": f"p{i}@page.example"}, headers=h)
        page = c.get("/api/v1/suppressions", params={"limit": 2}, headers=h).json()
        rest = c.get("/api/v1/suppressions", params={"limit": 10, "cursor": page["next_cursor"]}, headers=h).json()
        assert len(page["items"]) == 2 and len(page["items"]) + len(rest["items"]) == 5 and rest["next_cursor"] is None
        # Accepted before the address was suppressed (scheduled): skipped when it comes due.
        r = send(env, ["later@block.example"], send_at=(utcnow() + timedelta(seconds=1.5)).isoformat())
        assert r.status_code == 202 and r.json()["status"] == "scheduled", r.text
        assert c.post("/api/v1/suppressions", json={"email": "later@block.example"}, headers=h).status_code == 201
        time.sleep(1.6)
        for _ in range(20):
            tick()
            settle(env)
            if get(env, r.json()["id"]).json()["status"] in ("sent", "failed"):
                break
        later = get(env, r.json()["id"]).json()
        assert later["status"] == "failed" and later["error"]["code"] == "all_suppressed", later
        assert not any("later@block.example" in rcpts for _, _, rcpts, _ in env["smtp"].sends)
        assert c.delete("/api/v1/suppressions/MANUAL@block.example", headers=h).status_code == 204
        assert c.delete("/api/v1/suppressions/manual@block.example", headers=h).status_code == 404
        assert send(env, ["manual@block.example"]).status_code == 202


PERSON = "ex.person@person.example"


def seed_people(env: dict[str, Any]) -> None:
    env["imap"].seed("INBOX", [
        make_message(1, from_=f"Ex Person <{PERSON}>", message_id="<ex1@person.example>", subject="From the person",
                     attachments=[("cv.pdf", "application/pdf", b"%PDF person cv " * 40)]),
        make_message(2, from_=f"Ada <{CRM['contact'][1]}>", cc=PERSON, message_id="<ex2@engine.example>", subject="Person in cc"),
        make_message(3, from_=f"Ada <{CRM['contact'][1]}>", message_id="<ada3@engine.example>", subject="Only Ada",
                     attachments=[("ada.pdf", "application/pdf", b"%PDF ada " * 40)]),
    ])


class TestErase:
    def test_erase_an_address(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        assert c.put("/api/v1/crm/contacts/c-ex", json={"last_name": "Person", "email": PERSON}, headers=h).status_code in (200, 201)
        seed_people(env)
        sync(env)
        out_id, out_raw = sent(env, [PERSON], attachments=[{"filename": "offer.pdf", "content_type": "application/pdf",
                                                             "content_base64": "JVBERi0xLjQgb2ZmZXI="}])
        env["imap"].seed("INBOX", [postfix_dsn(out_raw, PERSON, to=ME, status="4.2.2", code=452)])  # a report naming the person
        sync(env)
        assert count(Email, Email.kind == "bounce") == 1
        theirs = [by_mid("ex1@person.example"), by_mid("ex2@engine.example")]
        assert all(e is not None for e in theirs)
        ids = [e.id for e in theirs if e is not None] + [out_id]
        ada = by_mid("ada3@engine.example")
        assert ada is not None
        with Session(get_engine()) as s:
            keys = [k for k in s.execute(select(Email.raw_key).where(Email.id.in_(ids))).scalars() if k]  # type: ignore[attr-defined]
            keys += list(s.execute(select(Document.storage_key).where(Document.email_id.in_(ids))).scalars())  # type: ignore[attr-defined]
            ada_doc = s.execute(select(Document).where(Document.email_id == ada.id)).scalar_one()
        storage = get_storage()
        assert len(keys) >= 4 and all(storage.exists(k) for k in keys)
        assert len(c.get("/api/v1/crm/contacts/c-ex/timeline", headers=h).json()["items"]) >= 2

        r = c.post("/api/v1/privacy/erase", json={"email": PERSON.upper()}, headers=h)
        assert r.status_code == 202
        job = wait_job(env, r.json()["job_id"])
        assert job["state"] == "done" and job["kind"] == "erase" and job["counts"]["emails"] == 4 and job["counts"]["attachments"] >= 1
        assert count(Email, Email.kind == "bounce") == 0
        assert PERSON not in str(job)
        with Session(get_engine()) as s:
            row = s.get(PrivacyJob, job["id"])
            assert row is not None and row.subject is None
        for eid in ids:
            assert get(env, eid).status_code == 404
        assert not any(storage.exists(k) for k in keys)
        assert c.get("/api/v1/crm/contacts/c-ex/timeline", headers=h).json()["items"] == []
        assert c.get("/api/v1/emails", params={"q": "person"}, headers=h).json()["items"] == []
        assert get(env, ada.id).status_code == 200 and storage.exists(ada_doc.storage_key)
        assert count(ErasedMessage) >= 3

        resync_from_scratch(env)
        assert by_mid("ex1@person.example") is None and by_mid("ex2@engine.example") is None
        assert count(Email, Email.org_id == env["org_id"]) == 1  # only Ada's: the report is not re-imported either
        assert get(env, ada.id).status_code == 200


    def test_erase_waits_for_mail_still_in_the_pipeline(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """Mail the ingest chain is still working on is erased on a later run (the job re-enqueues itself)."""
        from sqlalchemy import update

        from pipeline import jobs
        from pipeline.flows import privacy

        seed_people(env)
        sync(env)
        ex1 = by_mid("ex1@person.example")
        assert ex1 is not None
        with Session(get_engine()) as s:  # as if the link stage were still working on it
            s.execute(update(Email).where(Email.id == ex1.id).values(pipeline_state="linked"))  # type: ignore[arg-type]
            s.commit()
        sent_again: list[tuple[Any, ...]] = []

        class Recorder:
            def send(self, *args: Any, delay_ms: int | None = None) -> None:
                sent_again.append((*args, delay_ms))

        monkeypatch.setattr(jobs, "PRIVACY_RUN", Recorder())
        job_id = privacy.request_job(env["org_id"], "erase", PERSON)
        privacy.run_job(job_id)
        r = env["client"].get(f"/api/v1/privacy/jobs/{job_id}", headers=env["h"]).json()
        assert r["state"] == "pending" and r["counts"]["emails"] == 1 and get(env, ex1.id).status_code == 200
        assert sent_again == [(job_id, None), (job_id, privacy.BUSY_RETRY_MS)]
        with Session(get_engine()) as s:
            s.execute(update(Email).where(Email.id == ex1.id).values(pipeline_state="done"))  # type: ignore[arg-type]
            s.commit()
        privacy.run_job(job_id)
        job = env["client"].get(f"/api/v1/privacy/jobs/{job_id}", headers=env["h"]).json()
        assert job["state"] == "done" and job["counts"]["emails"] == 2 and get(env, ex1.id).status_code == 404


class TestRetention:
    def test_old_mail_purged_recent_kept_not_reimported(self, env: dict[str, Any]) -> None:
        from click.testing import CliRunner

        from ops.cli import main

        c, h = env["client"], env["h"]
        env["imap"].seed("INBOX", [make_message(1, from_=CRM["contact"][1], message_id="<old@t>", date=utcnow() - timedelta(days=400),
                                                attachments=[("old.pdf", "application/pdf", b"%PDF old " * 30)])],
                         when=utcnow() - timedelta(days=400))
        env["imap"].seed("INBOX", [make_message(2, from_=CRM["contact"][1], message_id="<new@t>")])
        sync(env)
        r = c.patch("/api/v1/org", json={"retention_days": 365}, headers=h)  # after the sync: its tick would run the daily sweep
        assert r.status_code == 200 and r.json()["retention_days"] == 365
        old, new = by_mid("old@t"), by_mid("new@t")
        assert old is not None and new is not None
        with Session(get_engine()) as s:
            old_key = s.execute(select(Document.storage_key).where(Document.email_id == old.id)).scalar_one()
        result = CliRunner().invoke(main, ["retention", "run", "--json"])
        assert result.exit_code == 0, result.output
        assert '"emails": 1' in result.output
        assert get(env, old.id).status_code == 404 and get(env, new.id).status_code == 200
        assert not get_storage().exists(old_key)
        resync_from_scratch(env)
        assert by_mid("old@t") is None and by_mid("new@t") is not None
        assert c.patch("/api/v1/org", json={"retention_days": None}, headers=h).json()["retention_days"] is None

    def test_daily_sweep_hands_orgs_to_the_queue(self, env: dict[str, Any]) -> None:
        env["client"].patch("/api/v1/org", json={"retention_days": 30}, headers=env["h"])
        assert tick()["retention"] == 1
        assert tick()["retention"] == 0  # once a day


class TestExport:
    def test_export_an_address(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        seed_people(env)
        sync(env)
        out_id, _ = sent(env, [PERSON], attachments=[{"filename": "offer.pdf", "content_type": "application/pdf",
                                                      "content_base64": "JVBERi0xLjQgb2ZmZXI="}])
        r = c.post("/api/v1/privacy/export", json={"email": PERSON}, headers=h)
        job = wait_job(env, r.json()["job_id"])
        assert job["state"] == "done" and job["counts"]["emails"] == 3 and job["download_url"]
        path = job["download_url"].split("8000", 1)[-1]
        got = c.get(path)  # no API key: the URL is signed
        assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(got.content))
        names = zf.namelist()
        ex1, ex2, ada = by_mid("ex1@person.example"), by_mid("ex2@engine.example"), by_mid("ada3@engine.example")
        assert ex1 and ex2 and ada
        assert {f"emails/{ex1.id}.eml", f"emails/{ex2.id}.eml", f"emails/{out_id}.eml", "tracking.json"} <= set(names)
        assert b"cv.pdf" in zf.read(f"emails/{ex1.id}.eml") and b"offer.pdf" in zf.read(f"emails/{out_id}.eml")
        assert any(n.startswith(f"attachments/{ex1.id}/") and n.endswith("cv.pdf") for n in names)
        everything = b"".join(zf.read(n) for n in names)
        assert b"Only Ada" not in everything and b"ada.pdf" not in everything and ada.id.encode() not in everything
        assert c.get(path[:-3] + "xyz").status_code == 404

    def test_hostile_input_and_tenancy(self, env: dict[str, Any]) -> None:
        c, h = env["client"], env["h"]
        for bad in ({"email": "nobody"}, {"email": ""}, {"email": "a b@c.example"}, {}, {"email": 5}):
            r = c.post("/api/v1/privacy/erase", json=bad, headers=h)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (bad, r.text)
        job_id = c.post("/api/v1/privacy/export", json={"email": "x@y.example"}, headers=h).json()["job_id"]
        assert wait_job(env, job_id)["counts"]["emails"] == 0
        _, other_key = make_org("other")
        assert c.get(f"/api/v1/privacy/jobs/{job_id}", headers={"Authorization": f"Bearer {other_key}"}).status_code == 404
        assert c.get("/api/v1/privacy/jobs/nope", headers=h).status_code == 404
        assert c.get("/privacy/exports/forged.token").status_code == 404
        assert c.patch("/api/v1/org", json={"retention_days": 0}, headers=h).status_code == 422


class TestWebhookEvents:
    """The bounce's ``email.bounced`` webhook event is written with the bounce; an erase takes the
    webhook events about the erased mail (their payloads name the person) with it."""

    def test_bounce_event_recorded_and_erased_with_the_mail(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        from models import WebhookEndpoint, WebhookEvent
        from ops.keys import seal
        from pipeline.flows import events_outbox, webhooks
        from pipeline.stages.webhooks import new_secret

        monkeypatch.setattr(events_outbox, "_kick", lambda session: None)  # record only: this test reads the outbox
        monkeypatch.setattr(webhooks, "_enqueue_delivery", lambda endpoint_id, delay_ms=None: None)  # and never POSTs
        with Session(get_engine()) as s:
            s.add(WebhookEndpoint(org_id=env["org_id"], url="https://crm.example/hook", events=["*"],
                                  secret=seal("webhook_endpoints", "secret", new_secret(b"s" * 32))))
            s.commit()
        eid, raw = sent(env, ["Gone Person <gone@rcpt.example>"])
        env["imap"].seed("INBOX", [postfix_dsn(raw, "gone@rcpt.example", to=ME)])
        sync(env)
        sync(env)  # the same report seen again records nothing new
        with Session(get_engine()) as s:
            bounced = list(s.execute(select(WebhookEvent).where(WebhookEvent.type == "email.bounced")).scalars())
        assert len(bounced) == 1
        data = bounced[0].data
        assert data["email_id"] == eid and data["status"] == "bounced" and data["from_email"] == ME
        assert [(b["recipient"], b["type"], b["status"]) for b in data["bounce"]] == [("gone@rcpt.example", "hard", "5.1.1")]
        assert not {"body_html", "body_text", "raw"} & set(data)

        r = env["client"].post("/api/v1/privacy/erase", json={"email": "gone@rcpt.example"}, headers=env["h"])
        assert wait_job(env, r.json()["job_id"])["state"] == "done"
        with Session(get_engine()) as s:
            left = [e.data.get("email_id") for e in s.execute(select(WebhookEvent)).scalars()]
        assert eid not in left
