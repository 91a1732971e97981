"""Save to Notion against a stand-in of Notion's API (issue: Notion, must-show 1-4).

The real ``notion-client`` talks to tests/harness/notion_server.py (which validates bodies against
Notion's documented limits) by ``MAILPIPE_NOTION_BASE_URL``; mail comes from Dovecot through the
real sync and ingest chain; PostgreSQL and RabbitMQ with an in-process worker, and for the crash
test a ``mailpipe worker`` process that is SIGKILLed right after Notion created the page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, Notification, NotionSave
from models.db import get_engine
from tests.conftest import reset_process_state
from tests.harness.dovecot import Dovecot
from tests.harness.flow import count, make_org
from tests.harness.notion_server import NotionServer
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"
CSV = b"name,amount\nAcme,1200\nGlobex,900\n" * 50
LONG = "Lorem ipsum dolor sit amet. " * 180  # ~5,000 characters in one paragraph
HTML = f"""<html><head><style>p {{ color: red }}</style><script>track()</script></head><body>
<h1>Quarterly proposal</h1>
<p>Hi Alice, here is <b>the plan</b> with <i>some <a href="https://engine.example/deck">italic links</a></i>.</p>
<h2>Scope</h2>
<ul><li>Discovery<ul><li>Interviews <b>(2 weeks)</b><ul><li>Ten customers</li></ul></li><li>Audit</li></ul></li>
<li>Build</li></ul>
<ol><li>First</li><li>Second</li></ol>
<table><thead><tr><th>Item</th><th>Price</th></tr></thead><tbody><tr><td>Seats</td><td><s>$120</s> $100</td></tr>
<tr><td>Support</td><td>included</td></tr></tbody></table>
<p>{LONG}</p>
<blockquote>Looking forward to it</blockquote>
<img src="https://engine.example/track/open/abc/def" width="1" height="1">
</body></html>"""


def message(to: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "Ada Lovelace <ada@engine.example>", to, "Proposal", "<n1@engine.example>"
    m.set_content("plain version")
    m.add_alternative(HTML, subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename="proposal.pdf")
    m.add_attachment(CSV, maintype="text", subtype="csv", filename="prices.csv")
    return m.as_bytes()


@pytest.fixture
def notion_env(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str], smtp_server: Any,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    server = NotionServer().start()
    token = "ntn_internal_" + "x" * 20
    server.tokens.add(token)
    db_id = server.add_database("Customer mail", {"Name": "title", "From": "email", "Received": "date", "Tags": "multi_select",
                                                  "Notes": "rich_text"})
    monkeypatch.setenv("MAILPIPE_NOTION_BASE_URL", server.base)
    monkeypatch.setenv("MAILPIPE_NOTION_CLIENT_ID", server.client_id)
    monkeypatch.setenv("MAILPIPE_NOTION_CLIENT_SECRET", server.client_secret)
    reset_process_state()
    from pipeline.flows.notion_connect import forget_schemas
    from web.app import create_app

    forget_schemas()
    org_id, key = make_org()
    user, password = dovecot_user
    smtp_server.users[user] = password
    h = {"Authorization": f"Bearer {key}"}
    try:
        with TestClient(create_app()) as c:
            assert c.put("/api/v1/users/u1", headers=h, json={"name": "Alice", "email": user}).status_code == 200
            assert c.put("/api/v1/crm/contacts/c1", headers=h, json={"first_name": "Ada", "last_name": "Lovelace",
                                                                     "email": "ada@engine.example"}).status_code == 200
            yield {"server": server, "token": token, "db_id": db_id, "client": c, "h": h, "org_id": org_id, "user": user,
                   "password": password, "dovecot": dovecot, "smtp": smtp_server, **live}
    finally:
        server.stop()


def synced_email(n: dict[str, Any]) -> str:
    """The seeded message, synced, parsed, linked and its attachments stored."""
    d, smtp = n["dovecot"], n["smtp"]
    d.seed(n["user"], "INBOX", message(n["user"]))
    r = n["client"].post("/api/v1/accounts", headers=n["h"], json={
        "user_id": "u1", "provider": "imap", "email": n["user"],
        "imap": {"host": d.host, "port": d.tls_port, "security": "ssl", "password": n["password"]},
        "smtp": {"host": smtp.host, "port": smtp.port, "security": "starttls", "password": n["password"]}})
    assert r.status_code == 201, r.text

    def done() -> str | None:
        items = n["client"].get("/api/v1/emails", headers=n["h"], params={"account_id": r.json()["id"]}).json()["items"]
        return items[0]["id"] if items and items[0]["pipeline_state"] == "done" else None

    return str(wait_until(done, 60, 0.2, "the email through the pipeline"))


def connect(n: dict[str, Any]) -> None:
    r = n["client"].put("/api/v1/users/u1/notion", headers=n["h"], json={"notion_api_key": n["token"], "notion_db_id": n["db_id"]})
    assert r.status_code == 200, r.text


def save(n: dict[str, Any], email_id: str, **body: Any) -> Any:
    return n["client"].post(f"/api/v1/emails/{email_id}/notion", headers=n["h"], json={"user_id": "u1", **body})


def saved_url(n: dict[str, Any], email_id: str, timeout: float = 60) -> str:
    def url() -> str | None:
        return n["client"].get(f"/api/v1/emails/{email_id}", headers=n["h"]).json()["notion_page_url"]

    return str(wait_until(url, timeout, 0.2, "notion_page_url"))


def texts(block: dict[str, Any]) -> list[tuple[str, dict[str, Any], str | None]]:
    body = block[block["type"]]
    return [(r["text"]["content"], r["annotations"], (r["text"].get("link") or {}).get("url")) for r in body.get("rich_text", [])]


def plain(block: dict[str, Any]) -> str:
    return "".join(t for t, _, _ in texts(block))


def test_connect_list_and_save_a_formatted_email_with_attachments(notion_env: dict[str, Any]) -> None:
    """Must-show 1-3 (first half): the page keeps structure and formatting; saving again → one page."""
    n = notion_env
    eid = synced_email(n)
    r = n["client"].put("/api/v1/users/u1/notion", headers=n["h"], json={"notion_api_key": "ntn_wrong", "notion_db_id": n["db_id"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "notion_unauthorized"
    r = n["client"].put("/api/v1/users/u1/notion", headers=n["h"], json={"notion_api_key": n["token"], "notion_db_id": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"]["errors"][0]["field"] == "notion_db_id"  # not a Notion id
    r = n["client"].put("/api/v1/users/u1/notion", headers=n["h"],
                        json={"notion_api_key": n["token"], "notion_db_id": "0" * 32})  # well-formed, unknown to Notion
    assert r.status_code == 422 and r.json()["error"]["code"] == "notion_database_not_found"
    connect(n)
    items = n["client"].get("/api/v1/notion/databases", headers=n["h"], params={"user_id": "u1"}).json()["items"]
    assert [(i["id"], i["title"], i["icon"], i["selected"]) for i in items] == [(n["db_id"], "Customer mail", "📬", True)]

    r = save(n, eid, tags=["Proposal", "Q3, 2026"])
    assert r.status_code == 202 and r.json()["state"] == "pending", r.text
    url = saved_url(n, eid)
    server = n["server"]
    (page_id,) = server.pages
    page = server.pages[page_id]
    assert url == page["url"]
    props = page["properties"]
    assert props["Name"]["title"][0]["text"]["content"] == "Ada Lovelace - Proposal"
    assert props["From"] == {"email": "ada@engine.example"} and "Received" in props
    assert props["Tags"]["multi_select"] == [{"name": "Proposal"}, {"name": "Q3  2026".replace("  ", " ")}]
    assert "Notes" not in props

    blocks = server.page_blocks(page_id)
    kinds = [b["type"] for b in blocks]
    assert kinds[0] == "paragraph" and "mailpipe ref" in plain(blocks[0]), "the header line with the save's ref"
    assert kinds[1:4] == ["heading_1", "paragraph", "heading_2"] and plain(blocks[1]) == "Quarterly proposal"
    runs = texts(blocks[2])
    assert ("the plan", True) in [(t, a["bold"]) for t, a, _ in runs]
    assert [(t, a["italic"], link) for t, a, link in runs if link] == [("italic links", True, "https://engine.example/deck")]
    discovery = blocks[4]
    assert discovery["type"] == "bulleted_list_item" and plain(discovery) == "Discovery"
    interviews = discovery["children"][0]
    assert plain(interviews) == "Interviews (2 weeks)" and [plain(c) for c in interviews["children"]] == ["Ten customers"]
    assert [plain(c) for c in discovery["children"]] == ["Interviews (2 weeks)", "Audit"] and plain(blocks[5]) == "Build"
    assert [b["type"] for b in blocks[6:8]] == ["numbered_list_item"] * 2
    table = blocks[8]
    assert table["type"] == "table" and table["table"]["table_width"] == 2 and table["table"]["has_column_header"] is True
    rows = [[("".join(r["text"]["content"] for r in cell)) for cell in row["table_row"]["cells"]] for row in table["children"]]
    assert rows == [["Item", "Price"], ["Seats", "$120 $100"], ["Support", "included"]]
    strike = table["children"][1]["table_row"]["cells"][1][0]
    assert strike["text"]["content"] == "$120" and strike["annotations"]["strikethrough"] is True
    long = blocks[9]
    assert plain(long) == LONG.strip() and [len(t) for t, _, _ in texts(long)] == [2000, 2000, len(LONG.strip()) - 4000]
    assert blocks[10]["type"] == "quote"
    files = [b for b in blocks if b["type"] == "file"]
    assert [f["file"]["name"] for f in files] == ["proposal.pdf", "prices.csv"]
    uploads = {u["filename"]: u for u in server.uploads.values()}
    assert uploads["proposal.pdf"]["content"] == PDF and uploads["prices.csv"]["content"] == CSV
    assert all(u["attached"] for u in uploads.values())
    assert not any("track()" in plain(b) or "color: red" in plain(b) for b in blocks if b["type"] == "paragraph")
    assert count(Notification, Notification.kind == "notion.saved") == 1

    again = save(n, eid)
    assert again.status_code == 200 and again.json()["notion_page_url"] == url and len(server.pages) == 1


def test_a_database_without_the_optional_columns_still_gets_the_page(notion_env: dict[str, Any]) -> None:
    n = notion_env
    eid = synced_email(n)
    bare = n["server"].add_database("Bare", {"Title": "title"})
    connect(n)
    assert save(n, eid, database_id=bare, title="My own title", tags=["x"]).status_code == 202
    saved_url(n, eid)
    (page,) = n["server"].pages.values()
    assert list(page["properties"]) == ["Title"] and page["properties"]["Title"]["title"][0]["text"]["content"] == "My own title"


def test_rate_limits_are_waited_out_and_a_revoked_token_fails_clearly(notion_env: dict[str, Any]) -> None:
    """Must-show 4: 429 Retry-After: 2 twice → created after the waits (and a 529 too); a 401 → failed
    with a readable reason and one notification, no retry loop."""
    n = notion_env
    eid = synced_email(n)
    connect(n)
    server = n["server"]
    server.fail_next("/v1/pages", 429, "rate_limited", times=2, headers={"Retry-After": "2"})
    server.fail_next("/v1/file_uploads", 529, "service_overload", headers={"Retry-After": "1"})
    started = time.monotonic()
    assert save(n, eid).status_code == 202
    saved_url(n, eid)
    assert time.monotonic() - started >= 5.0, "waited 2 + 2 + 1 seconds as told"
    assert server.count("POST", "/v1/pages") == 3 and len(server.pages) == 1

    other = n["server"].add_database("Second", {"Name": "title"})
    server.tokens.discard(n["token"])  # the user revoked the integration
    assert save(n, eid, database_id=other).status_code == 202

    def failed() -> dict[str, Any] | None:
        items = n["client"].get(f"/api/v1/emails/{eid}/notion", headers=n["h"]).json()["items"]
        return next((i for i in items if i["database_id"] == other and i["state"] == "failed"), None)

    item = wait_until(failed, 30, 0.2, "the save failed")
    assert item["error_code"] == "unauthorized" and "connect Notion again" in item["error"]
    calls = len(server.calls)
    time.sleep(1.5)
    assert len(server.calls) == calls, "no retry loop"
    notes = [x for x in n["client"].get("/api/v1/notifications", headers=n["h"], params={"user_id": "u1"}).json()["items"]
             if x["type"] == "notion.failed"]
    assert len(notes) == 1 and "Second" not in notes[0]["title"] and "connect Notion again" in notes[0]["body"]


def test_oauth_connect_then_save(notion_env: dict[str, Any]) -> None:
    """The public-integration flow: authorize URL with a signed state; the callback exchanges the code
    with Basic auth at /v1/oauth/token and stores the token; the connection then works."""
    from urllib.parse import parse_qs, urlsplit

    n = notion_env
    r = n["client"].get("/api/v1/notion/authorize", headers=n["h"], params={"user_id": "u1"})
    assert r.status_code == 200
    q = parse_qs(urlsplit(r.json()["url"]).query)
    assert q["owner"] == ["user"] and q["client_id"] == [n["server"].client_id] and q["response_type"] == ["code"]
    n["server"].codes["code-1"] = "notion-user-1"  # the user approved in Notion
    bad = n["client"].get("/api/v1/notion/callback", params={"code": "code-1", "state": q["state"][0] + "0"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_state"
    ok = n["client"].get("/api/v1/notion/callback", params={"code": "code-1", "state": q["state"][0]})
    assert ok.status_code == 200 and ok.json()["connected"] is True, ok.text
    items = n["client"].get("/api/v1/notion/databases", headers=n["h"], params={"user_id": "u1"}).json()["items"]
    assert [i["title"] for i in items] == ["Customer mail"]


def test_worker_killed_after_the_page_was_created_still_one_page(notion_env: dict[str, Any], tmp_path: Path) -> None:
    """Must-show 3 (second half): a ``mailpipe worker`` SIGKILLed the moment Notion created the page
    (before it could record the page id); the redelivered message finds that page and finishes it."""
    from ops.settings import get_settings
    from tests.harness.proc import MailpipeProcess, mailpipe_env

    n = notion_env
    eid = synced_email(n)
    connect(n)
    n["worker"].stop(timeout=10_000)  # from here only the worker processes consume
    settings = get_settings()
    import os

    env = mailpipe_env(MAILPIPE_DATABASE_URL=n["pg_url"], MAILPIPE_BROKER_URL=n["amqp_url"],
                       MAILPIPE_SECRET_KEYS=os.environ["MAILPIPE_SECRET_KEYS"], MAILPIPE_STORAGE_URL=settings.storage_url,
                       MAILPIPE_NOTION_BASE_URL=n["server"].base)
    worker1 = MailpipeProcess("worker", "-p", "1", "-t", "1", "-Q", "notion", env=env, cwd=tmp_path, name="worker1")
    killed = threading.Event()

    def kill(_page_id: str) -> None:
        if not killed.is_set():
            worker1.kill_group()
            killed.set()

    n["server"].after_create = kill
    try:
        assert save(n, eid).status_code == 202
        assert killed.wait(60), worker1.output()[-3000:]
    finally:
        n["server"].after_create = None
        worker1.stop()
    with Session(get_engine()) as s:
        row = s.execute(select(NotionSave).where(NotionSave.email_id == eid)).scalar_one()
    assert row.state == "creating" and row.page_id is None, "the page exists but its id was never recorded"
    worker2 = MailpipeProcess("worker", "-p", "1", "-t", "1", "-Q", "notion", env=env, cwd=tmp_path, name="worker2")
    try:
        url = saved_url(n, eid, 90)
    finally:
        assert worker2.stop() == 0, worker2.output()[-3000:]
    assert len(n["server"].pages) == 1 and url == next(iter(n["server"].pages.values()))["url"]
    (page_id,) = n["server"].pages
    blocks = n["server"].page_blocks(page_id)
    assert sum(1 for b in blocks if b["type"] == "heading_1") == 1, "nothing appended twice"
    assert [b["file"]["name"] for b in blocks if b["type"] == "file"] == ["proposal.pdf", "prices.csv"]
    with Session(get_engine()) as s:
        assert s.get(Email, eid).notion_page_url == url  # type: ignore[union-attr]


def test_attachments_over_20_mb_are_listed_not_uploaded(notion_env: dict[str, Any]) -> None:
    """A file over the single-part limit becomes a note on the page; the page is still created."""
    from sqlalchemy import update

    from models import Document

    n = notion_env
    eid = synced_email(n)
    with Session(get_engine()) as s:  # as if prices.csv were 25 MB (its bytes are never read for a note)
        s.execute(update(Document).where(Document.email_id == eid, Document.document_name == "prices.csv").values(size=25 * 1024 * 1024))
        s.commit()
    connect(n)
    assert save(n, eid).status_code == 202
    saved_url(n, eid)
    (page_id,) = n["server"].pages
    blocks = n["server"].page_blocks(page_id)
    assert [b["file"]["name"] for b in blocks if b["type"] == "file"] == ["proposal.pdf"]
    notes = [plain(b) for b in blocks if b["type"] == "paragraph" and "prices.csv" in plain(b)]
    assert notes == ["📎 prices.csv (25.0 MB) — too large to upload to Notion (over 20 MB)"]
    assert [u["filename"] for u in n["server"].uploads.values()] == ["proposal.pdf"]
