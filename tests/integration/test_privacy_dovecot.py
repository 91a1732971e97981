"""Privacy and deliverability against Dovecot, aiosmtpd, PostgreSQL, RabbitMQ and moto S3 (issue 19,
must-show 1-5): safe HTML of inbound mail, per-address export and erase (local and S3 storage),
retention, and bounces with the suppression list."""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import delete, select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Document, Email, EmailAddress, EmailLink, FolderState, Lead, Notification, PrivacyJob, utcnow
from models.db import get_engine
from pipeline.clients.storage import get_storage
from pipeline.stages.safe_html import BLOCKED_IMAGE
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, count, fetch_tick, make_org, seed_crm
from tests.harness.mail import make_message
from tests.harness.moto_server import moto_s3  # noqa: F401
from tests.harness.reports import postfix_dsn
from tests.integration.conftest import wait_until
from tests.unit.test_privacy import PNG, assert_safe, html_with_cid

pytestmark = pytest.mark.integration

PERSON = "ex.person@person.example"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


@pytest.fixture(params=["file"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def priv(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str], smtp_server: Any, storage_kind: str,
         request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An organization (auto-created leads on, CRM seeded) with one mailbox on Dovecot + aiosmtpd."""
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_SEND_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("MAILPIPE_BACKFILL_DAYS", "1000")
    if storage_kind == "s3":
        endpoint = request.getfixturevalue("moto_s3")
        monkeypatch.setenv("MAILPIPE_STORAGE_URL", f"s3://mp-{uuid.uuid4().hex[:12]}/tenant?endpoint_url={endpoint}&region=us-east-1")
    reset_process_state()
    if storage_kind == "s3":
        from pipeline.clients.storage import S3Storage

        store = get_storage()
        assert isinstance(store, S3Storage)
        store.ensure_bucket()
    org_id, key = make_org(auto_create_leads=True)
    seed_crm(org_id)
    user, password = dovecot_user
    smtp_server.users[user] = password
    h = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as client:
        body = {"user_id": "u1", "provider": "imap", "email": user,
                "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
                "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}}
        r = client.post("/api/v1/accounts", json=body, headers=h)
        assert r.status_code == 201, r.text
        yield {"client": client, "h": h, "user": user, "dovecot": dovecot, "smtp": smtp_server, "org_id": org_id,
               "account_id": r.json()["id"]}


def sync(timeout: float = 90) -> None:
    """One tick whose fetch completes, then every fetched email through the ingest chain."""
    fetch_tick(timeout)
    busy = Email.pipeline_state.in_(("fetched", "parsed", "stored", "linked", "leads"))  # type: ignore[attr-defined]
    wait_until(lambda: count(Email, busy) == 0 or None, timeout, what="the ingest chain")


def resync_from_scratch() -> None:
    """Forget every folder cursor: the next sync is a first sync fetching the whole mailbox again."""
    with Session(get_engine()) as s:
        s.execute(delete(FolderState))
        s.commit()
    sync()


def get(p: dict[str, Any], email_id: str, **params: Any) -> Any:
    return p["client"].get(f"/api/v1/emails/{email_id}", headers=p["h"], params=params)


def send(p: dict[str, Any], to: list[str], **body: Any) -> Any:
    payload = {"account_id": p["account_id"], "to": to, "subject": "Proposal", "body_html": "<p>Hello</p>", **body}
    return p["client"].post("/api/v1/emails/send", json=payload, headers=p["h"])


def sent(p: dict[str, Any], to: list[str], **body: Any) -> tuple[str, bytes]:
    """Send and wait until sent; returns the email id and the bytes the SMTP server received."""
    r = send(p, to, **body)
    assert r.status_code == 202, r.text
    eid = r.json()["id"]
    wait_until(lambda: get(p, eid).json()["status"] in ("sent", "failed") or None, 60, interval=0.1, what="sent")
    assert get(p, eid).json()["status"] == "sent"
    raw = next(raw for _, _, raw in reversed(p["smtp"].messages) if f"X-Mailpipe-Email-Id: {eid}".encode() in raw)
    wait_until(lambda: get(p, eid).json()["send"]["sent_copy"]["state"] in ("done", "skipped") or None, 30, what="Sent copy")
    return eid, raw


def by_mid(message_id: str) -> Email | None:
    with Session(get_engine()) as s:
        return s.execute(select(Email).where(Email.message_id == message_id)).scalar_one_or_none()


def wait_job(p: dict[str, Any], job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = p["client"].get(f"/api/v1/privacy/jobs/{job_id}", headers=p["h"])
        assert r.status_code == 200, r.text
        return dict(r.json()) if r.json()["state"] in ("done", "failed") else None

    return dict(wait_until(done, 60, interval=0.2, what="the privacy job"))


class TestSafeHtml:
    def test_must_show_1_inbound_html(self, priv: dict[str, Any]) -> None:
        """Script, onerror, javascript: link, iframe, remote image and cid image: body_html_safe has none of
        the dangerous parts, the cid image points at its attachment, the remote image only with remote_content=true."""
        p = priv
        p["dovecot"].seed(p["user"], "INBOX", html_with_cid(1, from_=f"Ada <{CRM['contact'][1]}>", message_id="<news1@mail.example>"))
        sync()
        e = by_mid("news1@mail.example")
        assert e is not None and e.pipeline_state == "done"
        data = get(p, e.id).json()
        assert "<script>" in data["body_html"] and "onerror" in data["body_html"]  # body_html stays as received
        safe = data["body_html_safe"]
        assert_safe(safe)
        (logo,) = [a for a in data["attachments"] if a["content_id"] == "logo123@mail.example"]
        assert f'src="{logo["url"]}"' in safe and logo["url"].endswith(f"/api/v1/emails/{e.id}/attachments/{logo['id']}")
        assert "tracker.example" not in safe and BLOCKED_IMAGE in safe
        assert 'href="https://ok.example/page"' in safe and 'rel="noopener noreferrer"' in safe and 'target="_blank"' in safe
        assert p["client"].get(f"/api/v1/emails/{e.id}/attachments/{logo['id']}", headers=p["h"]).content == PNG
        remote = get(p, e.id, remote_content="true").json()["body_html_safe"]
        assert_safe(remote, remote=True)
        assert 'src="https://tracker.example/pixel.gif?u=42"' in remote and f'src="{logo["url"]}"' in remote


class TestBounces:
    def test_must_show_5_dsn_bounces_suppresses_and_soft_does_not(self, priv: dict[str, Any]) -> None:
        """A send, then a Postfix DSN (550 5.1.1) in the mailbox: bounced, sender notified, address
        suppressed, next send 422; the DSN is not linked and makes no lead. A 4.x.x DSN is soft."""
        p = priv
        c, h = p["client"], p["h"]
        leads_before = count(Lead)
        eid, raw = sent(p, ["Gone Person <gone@rcpt.example>"])
        p["dovecot"].deliver(p["user"], postfix_dsn(raw, "gone@rcpt.example", to=p["user"]))
        sync()
        data = get(p, eid).json()
        assert data["status"] == "bounced", data
        (b,) = data["bounces"]
        assert (b["recipient"], b["type"], b["status"]) == ("gone@rcpt.example", "hard", "5.1.1") and "550 5.1.1" in b["diagnostic"]
        with Session(get_engine()) as s:
            report = s.execute(select(Email).where(Email.kind == "bounce")).scalar_one()
            assert report.direction == "inbound" and not report.linked and report.pipeline_state == "done"
            assert s.execute(select(EmailLink).where(EmailLink.email_id == report.id)).first() is None
            assert s.execute(select(EmailAddress).where(EmailAddress.email_id == report.id)).first() is None
        assert get(p, report.id).json()["kind"] == "bounce"
        assert count(Lead) == leads_before, "the DSN created no lead"
        assert count(Notification, Notification.email_id == report.id) == 0, "no new-email notification for the DSN"
        notes = c.get("/api/v1/notifications", params={"user_id": "u1"}, headers=h).json()["items"]
        assert [n["email_id"] for n in notes if n["type"] == "email.bounced"] == [eid]
        items = c.get("/api/v1/suppressions", headers=h).json()["items"]
        assert [(i["email"], i["reason"], i["email_id"]) for i in items] == [("gone@rcpt.example", "hard_bounce", eid)]
        r = send(p, [CRM["contact"][1], "Gone@RCPT.example"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_suppressed", r.text
        assert r.json()["error"]["details"]["addresses"] == ["gone@rcpt.example"]

        eid2, raw2 = sent(p, ["full@rcpt.example"])
        p["dovecot"].deliver(p["user"], postfix_dsn(raw2, "full@rcpt.example", to=p["user"], status="4.2.2", code=452))
        sync()
        data2 = get(p, eid2).json()
        assert data2["status"] == "sent" and [(x["type"], x["status"]) for x in data2["bounces"]] == [("soft", "4.2.2")]
        assert [i["email"] for i in c.get("/api/v1/suppressions", headers=h).json()["items"]] == ["gone@rcpt.example"]
        assert send(p, ["full@rcpt.example"]).status_code == 202
        assert count(Lead) == leads_before


def _seed_people(p: dict[str, Any]) -> None:
    p["dovecot"].seed(p["user"], "INBOX", [
        make_message(1, from_=f"Ex Person <{PERSON}>", to=p["user"], message_id="<ex1@person.example>", subject="From the person",
                     attachments=[("cv.pdf", "application/pdf", PDF + b"cv")]),
        make_message(2, from_=f"Ada <{CRM['contact'][1]}>", to=p["user"], cc=PERSON, message_id="<ex2@engine.example>",
                     subject="Person in cc"),
        make_message(3, from_=f"Ada <{CRM['contact'][1]}>", to=p["user"], message_id="<ada3@engine.example>", subject="Only Ada",
                     attachments=[("ada.pdf", "application/pdf", PDF + b"ada")]),
    ])


def _offer() -> list[dict[str, str]]:
    return [{"filename": "offer.pdf", "content_type": "application/pdf", "content_base64": base64.b64encode(PDF + b"offer").decode()}]


class TestErase:
    @pytest.mark.parametrize("storage_kind", ["file", "s3"], indirect=True)
    def test_must_show_3_erase(self, priv: dict[str, Any], storage_kind: str) -> None:
        """Erase → the person's emails 404, gone from search and timelines, attachment files gone from
        storage (local and S3), the next sync does not bring them back; others' mail untouched."""
        p = priv
        c, h = p["client"], p["h"]
        assert c.put("/api/v1/crm/contacts/c-ex", json={"last_name": "Person", "email": PERSON}, headers=h).status_code in (200, 201)
        _seed_people(p)
        sync()
        out_id, _ = sent(p, [PERSON], attachments=_offer())
        ex1, ex2, ada = by_mid("ex1@person.example"), by_mid("ex2@engine.example"), by_mid("ada3@engine.example")
        assert ex1 is not None and ex2 is not None and ada is not None
        ids = [ex1.id, ex2.id, out_id]
        with Session(get_engine()) as s:
            keys = [k for k in s.execute(select(Email.raw_key).where(Email.id.in_(ids))).scalars() if k]  # type: ignore[attr-defined]
            docs = list(s.execute(select(Document.storage_key).where(Document.email_id.in_(ids))).scalars())  # type: ignore[attr-defined]
            ada_doc = s.execute(select(Document).where(Document.email_id == ada.id)).scalar_one()
        storage = get_storage()
        assert type(storage).__name__ == ("S3Storage" if storage_kind == "s3" else "LocalStorage")
        assert docs and all(storage.exists(k) for k in keys + docs)
        assert {i["email_id"] for i in c.get("/api/v1/crm/contacts/c-ex/timeline", headers=h).json()["items"]} >= {ex1.id, out_id}

        r = c.post("/api/v1/privacy/erase", json={"email": PERSON}, headers=h)
        assert r.status_code == 202, r.text
        job = wait_job(p, r.json()["job_id"])
        assert job["state"] == "done" and job["counts"]["emails"] == 3 and job["counts"]["attachments"] == len(docs)
        assert PERSON not in str(job)
        with Session(get_engine()) as s:
            row = s.get(PrivacyJob, job["id"])
            assert row is not None and row.subject is None
        for eid in ids:
            assert get(p, eid).status_code == 404
        assert not any(storage.exists(k) for k in keys + docs)
        assert c.get("/api/v1/crm/contacts/c-ex/timeline", headers=h).json()["items"] == []
        assert c.get("/api/v1/emails", params={"q": "person"}, headers=h).json()["items"] == []
        assert get(p, ada.id).status_code == 200 and storage.exists(ada_doc.storage_key)
        assert [i["email_id"] for i in c.get("/api/v1/crm/contacts/c-ada/timeline", headers=h).json()["items"]] == [ada.id]

        resync_from_scratch()
        assert by_mid("ex1@person.example") is None and by_mid("ex2@engine.example") is None
        with Session(get_engine()) as s:
            assert list(s.execute(select(Email.id)).scalars()) == [ada.id]


class TestRetention:
    def test_must_show_4_retention(self, priv: dict[str, Any]) -> None:
        """retention_days 365: a 400-day-old email purged, a recent one kept; not re-imported."""
        from click.testing import CliRunner

        from ops.cli import main

        p = priv
        long_ago = utcnow() - timedelta(days=400)
        p["dovecot"].seed(p["user"], "INBOX", make_message(1, from_=CRM["contact"][1], to=p["user"], message_id="<old@t>", date=long_ago,
                                                            attachments=[("old.pdf", "application/pdf", PDF)]), when=long_ago)
        p["dovecot"].seed(p["user"], "INBOX", make_message(2, from_=CRM["contact"][1], to=p["user"], message_id="<new@t>"))
        sync()
        r = p["client"].patch("/api/v1/org", json={"retention_days": 365}, headers=p["h"])  # after the sync: its tick runs the daily sweep
        assert r.status_code == 200 and r.json()["retention_days"] == 365
        old, new = by_mid("old@t"), by_mid("new@t")
        assert old is not None and new is not None
        with Session(get_engine()) as s:
            old_keys = [old.raw_key, s.execute(select(Document.storage_key).where(Document.email_id == old.id)).scalar_one()]
        result = CliRunner().invoke(main, ["retention", "run", "--json"])
        assert result.exit_code == 0, result.output
        assert get(p, old.id).status_code == 404 and get(p, new.id).status_code == 200
        assert not any(get_storage().exists(k) for k in old_keys if k)
        resync_from_scratch()
        assert by_mid("old@t") is None and by_mid("new@t") is not None
        assert count(Email) == 1


class TestExport:
    @pytest.mark.parametrize("storage_kind", ["file", "s3"], indirect=True)
    def test_must_show_2_export(self, priv: dict[str, Any], storage_kind: str) -> None:
        """Export for an address → a zip with its inbound and outbound mail (attachments inside) and nothing of anyone else."""
        p = priv
        c, h = p["client"], p["h"]
        _seed_people(p)
        sync()
        out_id, _ = sent(p, [PERSON], attachments=_offer())
        r = c.post("/api/v1/privacy/export", json={"email": PERSON}, headers=h)
        assert r.status_code == 202
        job = wait_job(p, r.json()["job_id"])
        assert job["state"] == "done" and job["counts"]["emails"] == 3 and job["download_url"] and job["expires_at"]
        got = c.get(urlsplit(job["download_url"]).path)  # no API key: the URL is signed
        assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(got.content))
        names = set(zf.namelist())
        ex1, ex2, ada = by_mid("ex1@person.example"), by_mid("ex2@engine.example"), by_mid("ada3@engine.example")
        assert ex1 is not None and ex2 is not None and ada is not None
        assert {f"emails/{ex1.id}.eml", f"emails/{ex2.id}.eml", f"emails/{out_id}.eml", "tracking.json"} <= names
        inbound, outbound = zf.read(f"emails/{ex1.id}.eml"), zf.read(f"emails/{out_id}.eml")
        assert b"cv.pdf" in inbound and base64.b64encode(PDF + b"cv")[:60] in inbound.replace(b"\r\n", b"").replace(b"\n", b"")
        assert b"offer.pdf" in outbound
        assert any(n.startswith(f"attachments/{ex1.id}/") and zf.read(n) == PDF + b"cv" for n in names)
        everything = b"".join(zf.read(n) for n in names)
        assert b"Only Ada" not in everything and b"ada.pdf" not in everything and ada.id.encode() not in everything
