"""The whole inbound flow under `mailpipe serve` (SQLite + in-process broker and worker)."""

from __future__ import annotations

import email
import json
import re
from email import policy
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.dovecot import Dovecot
from tests.harness.mail import make_message
from tests.harness.ports import free_port, wait_port
from tests.harness.proc import MailpipeProcess, mailpipe_env, run_mailpipe
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def test_embedded_serve_syncs_links_and_notifies(tmp_path: Path, dovecot: Dovecot, dovecot_user: tuple[str, str],
                                                 smtp_server: Any, test_certs: tuple[Path, Path]) -> None:
    """CRM records and a mailbox created over HTTP; serve's own scheduler and worker sync, link, store
    attachments and notify; nothing on the server changes; SIGTERM stops it cleanly."""
    user, password = dovecot_user
    smtp_server.users[user] = password
    dovecot.seed(user, "INBOX", [
        make_message(1, from_="Ada <ada@engine.example>", message_id="<s1@t>",
                     attachments=[("notes.txt", "text/plain", b"meeting notes\n" * 10)]),
        make_message(2, from_="stranger@unknown.example", message_id="<s2@t>"),
    ], flags=["\\Flagged"])
    before = dovecot.flags(user, "INBOX")
    env = mailpipe_env(SSL_CERT_FILE=str(test_certs[0]), MAILPIPE_SCHEDULER_TICK_SECONDS="1")
    port = free_port()
    proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve")
    try:
        wait_port("127.0.0.1", port, 30)
        base = f"http://127.0.0.1:{port}"
        org = json.loads(run_mailpipe("org", "create", "acme", "--json", env=env, cwd=tmp_path).stdout)
        h = {"Authorization": f"Bearer {org['api_key']}"}
        assert httpx.put(f"{base}/api/v1/users/u1", json={"name": "Alice", "email": user}, headers=h).status_code == 200
        assert httpx.put(f"{base}/api/v1/crm/contacts/c1", json={"first_name": "Ada", "last_name": "L", "email": "ada@engine.example"},
                         headers=h).status_code == 200
        body = {"user_id": "u1", "provider": "imap", "email": user,
                "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
                "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}}
        r = httpx.post(f"{base}/api/v1/accounts", json=body, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        acct = r.json()["id"]

        def synced() -> Any:
            a = httpx.get(f"{base}/api/v1/accounts/{acct}", headers=h).json()
            items = httpx.get(f"{base}/api/v1/emails", params={"account_id": acct}, headers=h).json()["items"]
            return items if len(items) == 2 and all(i["pipeline_state"] == "done" for i in items) and a["sync"]["state"] == "idle" else None

        items = {i["message_id"]: i for i in wait_until(synced, 60, 0.25, "two emails through the pipeline")}
        assert items["s1@t"]["linked"] and not items["s2@t"]["linked"]
        full = httpx.get(f"{base}/api/v1/emails/{items['s1@t']['id']}", headers=h).json()
        assert full["links"]["contact_ids"] == ["c1"]
        att = full["attachments"][0]
        got = httpx.get(f"{base}/api/v1/emails/{full['id']}/attachments/{att['id']}", headers=h)
        assert got.content == b"meeting notes\n" * 10
        timeline = httpx.get(f"{base}/api/v1/crm/contacts/c1/timeline", headers=h).json()["items"]
        assert [t["email_id"] for t in timeline] == [full["id"]] and timeline[0]["attachment_count"] == 1
        notes = httpx.get(f"{base}/api/v1/notifications", params={"user_id": "u1", "unread": "true"}, headers=h).json()
        assert notes["unread_count"] == 1 and notes["items"][0]["email_id"] == full["id"]

        # The unlinked sender becomes a contact later: the earlier mail links retroactively.
        httpx.put(f"{base}/api/v1/crm/contacts/c2", json={"last_name": "S", "email": "Stranger@Unknown.example"}, headers=h)
        wait_until(lambda: httpx.get(f"{base}/api/v1/emails/{items['s2@t']['id']}", headers=h).json()["links"]["contact_ids"] == ["c2"],
                   20, 0.25, "retroactive link")
        assert dovecot.flags(user, "INBOX") == before
        assert password not in proc.output()
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]


def test_embedded_serve_keeps_tracking_hits_across_a_restart(tmp_path: Path, dovecot: Dovecot, dovecot_user: tuple[str, str],
                                                            smtp_server: Any, test_certs: tuple[Path, Path]) -> None:
    """Embedded mode has no RabbitMQ: tracking batches wait in the in-memory broker. Pixel hits
    answered just before SIGTERM are recorded before it exits or spooled and replayed by the next
    start: after a restart every hit is recorded, once."""
    user, password = dovecot_user
    smtp_server.users[user] = password
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # 600 hits on one pixel: durability here, so the per-token throttle is off (test_tracking_throttle.py has it)
    env = mailpipe_env(SSL_CERT_FILE=str(test_certs[0]), MAILPIPE_SCHEDULER_TICK_SECONDS="1", MAILPIPE_PUBLIC_URL=base,
                       MAILPIPE_TRACKING_TOKEN_PER_MINUTE="0")
    proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve")
    hits = 600
    try:
        wait_port("127.0.0.1", port, 30)
        org = json.loads(run_mailpipe("org", "create", "acme", "--json", env=env, cwd=tmp_path).stdout)
        h = {"Authorization": f"Bearer {org['api_key']}"}
        assert httpx.put(f"{base}/api/v1/users/u1", json={"name": "Alice", "email": user}, headers=h).status_code == 200
        body = {"user_id": "u1", "provider": "imap", "email": user,
                "imap": {"host": dovecot.host, "port": dovecot.tls_port, "security": "ssl", "password": password},
                "smtp": {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls", "password": password}}
        r = httpx.post(f"{base}/api/v1/accounts", json=body, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{base}/api/v1/emails/send", headers=h, json={
            "account_id": r.json()["id"], "to": ["ada@engine.example"], "subject": "Proposal",
            "body_html": '<p>Hi Ada, <a href="https://engine.example/demo">demo</a></p>'})
        assert r.status_code == 202, r.text
        eid = r.json()["id"]
        wait_until(lambda: httpx.get(f"{base}/api/v1/emails/{eid}", headers=h).json()["status"] == "sent", 60, 0.25, "sent")
        (_, _, raw), = smtp_server.messages
        html = email.message_from_bytes(raw, policy=policy.default).get_body(("html",)).get_content()
        pixel = re.search(r'src="https?://[^/"]+(/track/open/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        with httpx.Client(base_url=base) as c:
            for _ in range(hits):
                assert c.get(pixel, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}).status_code == 200
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]
    first = proc.output()

    proc = MailpipeProcess("serve", "--port", str(port), env=env, cwd=tmp_path, name="serve-again")
    try:
        wait_port("127.0.0.1", port, 30)

        def opens() -> int:
            return int(httpx.get(f"{base}/api/v1/emails/{eid}/tracking", headers=h).json()["events_total"]["opens"])

        wait_until(lambda: opens() >= hits, 60, 0.25, f"{hits} opens recorded")
        assert opens() == hits, "none lost, none doubled"
    finally:
        code = proc.stop()
    assert code == 0, proc.output()[-3000:]
    assert password not in first + proc.output()
