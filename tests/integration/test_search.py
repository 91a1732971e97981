"""Full-text search (issue 21) on both databases, through the real parse stage and the API.

A word that is only in the HTML part of one message among thousands is found; so are words of the
subject, the participants' names and addresses and the attachment names; results are ranked and
highlighted; and a deleted email (one by one, or an account's mail erased) is no longer found.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email
from models.db import get_engine
from models.search import EmailSearch
from pipeline.clients.storage import get_storage
from pipeline.flows.accounts import erase_account_mail
from pipeline.flows.ingest_parse import parse_batch
from tests.conftest import reset_process_state
from tests.harness.flow import make_account, make_org
from web.app import create_app

N_MESSAGES = 2000
HTML_ONLY_WORD = "zanzibarite"


def _raw(i: int, *, html_extra: str = "", subject: str | None = None, sender: str = "Pat Sender <pat@vendor.example>",
         attachment: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = "Alice Seller <alice@example.test>"
    m["Subject"] = subject or f"Weekly status {i}"
    m["Message-ID"] = f"<msg-{i}@vendor.example>"
    m["Date"] = "Tue, 01 Dec 2026 10:00:00 +0000"
    text = f"Hello Alice,\n\nthe delivery of order {i} is on track. Regards, Pat"
    m.set_content(text)
    m.add_alternative(f"<html><body><p>Hello Alice,</p><p>the delivery of order {i} is on track.{html_extra}</p>"
                      f"<p>Regards, Pat</p></body></html>", subtype="html")
    if attachment:
        m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename=attachment)
    return m.as_bytes()


def _ingest(org_id: str, account_id: str, raws: list[bytes], start: int = 0) -> list[str]:
    """Store raw messages as fetched emails and run the real parse stage over them (500 at a time)."""
    storage = get_storage()
    ids: list[str] = []
    with Session(get_engine()) as s:
        for n, raw in enumerate(raws, start):
            key = f"raw/{account_id}/{n}.eml"
            storage.put(key, raw, "message/rfc822")
            e = Email(org_id=org_id, account_id=account_id, dedupe_key=f"k{n}", raw_key=key, size=len(raw))
            s.add(e)
            ids.append(e.id)
        s.commit()
    for i in range(0, len(ids), 500):
        parse_batch(ids[i : i + 500])
    return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A migrated database of the given kind, an org with two mailboxes and an API client."""
    from ops.migrate import upgrade

    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'search.db'}"
        upgrade(url)
    monkeypatch.setenv("MAILPIPE_DATABASE_URL", url)
    reset_process_state()
    org_id, key = make_org("searchers")
    a1 = make_account(org_id)
    a2 = make_account(org_id, email="bob@example.test")
    with TestClient(create_app()) as client:
        yield {"org": org_id, "key": key, "a1": a1, "a2": a2, "client": client, "dialect": request.param}


def _search(w: dict[str, Any], q: str, **params: Any) -> dict[str, Any]:
    r = w["client"].get("/api/v1/emails", params={"q": q, **params}, headers={"Authorization": f"Bearer {w['key']}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_word_only_in_one_html_body_among_thousands_is_found_until_the_email_is_deleted(world: dict[str, Any]) -> None:
    target = 1234
    raws = [_raw(i, html_extra=f" Ask about {HTML_ONLY_WORD} pricing." if i == target else "") for i in range(N_MESSAGES)]
    ids = _ingest(world["org"], world["a1"], raws)
    page = _search(world, HTML_ONLY_WORD)
    assert [it["id"] for it in page["items"]] == [ids[target]]
    hit = page["items"][0]
    assert f"<mark>{HTML_ONLY_WORD}</mark>" in hit["search"]["highlight"] and hit["search"]["rank"] > 0
    # the word is in no stored text part: the plain body does not have it
    with Session(get_engine()) as s:
        assert HTML_ONLY_WORD not in s.get_one(Email, ids[target]).body_text
        # deleting the email (what erase and retention do) takes it out of the index
        s.execute(delete(Email).where(Email.id == ids[target]))
        s.commit()
        assert s.execute(select(EmailSearch).where(EmailSearch.email_id == ids[target])).first() is None
    assert _search(world, HTML_ONLY_WORD)["items"] == []
    # the others are still found, paged by relevance
    page = _search(world, "delivery order", limit=50)
    assert len(page["items"]) == 50 and page["next_cursor"]
    nxt = _search(world, "delivery order", limit=50, cursor=page["next_cursor"])
    assert len(nxt["items"]) == 50 and not {i["id"] for i in nxt["items"]} & {i["id"] for i in page["items"]}


def test_subject_participants_attachments_ranking_and_erase(world: dict[str, Any]) -> None:
    base = [_raw(i) for i in range(50)]
    special = [
        _raw(100, subject="Quarterly invoice for Globex"),                       # subject match
        _raw(101, html_extra=" We attach the quarterly invoice."),                # body match only
        _raw(102, sender="Grace Hopper <grace@navy.example>"),                    # participant name and address
        _raw(103, attachment="Roadmap-Kilimanjaro.pdf"),                         # attachment name
    ]
    ids = _ingest(world["org"], world["a1"], base + special)
    subj, body, person, att = ids[50:]
    ranked = [it["id"] for it in _search(world, "quarterly invoice")["items"]]
    assert ranked == [subj, body]  # a subject match outranks a body match
    assert [it["id"] for it in _search(world, "Hopper")["items"]] == [person]
    assert [it["id"] for it in _search(world, "grace@navy.example")["items"]] == [person]
    assert [it["id"] for it in _search(world, "navy.example")["items"]] == [person]
    assert [it["id"] for it in _search(world, "kilimanjaro")["items"]] == [att]
    assert [it["id"] for it in _search(world, '"quarterly invoice" -globex')["items"]] == [body]
    assert {it["id"] for it in _search(world, "kilimanjaro or hopper")["items"]} == {att, person}
    # stemming: "invoices" finds "invoice"
    assert set(it["id"] for it in _search(world, "invoices")["items"]) == {subj, body}
    # filters still apply; another org sees nothing
    assert _search(world, "hopper", account_id=world["a2"])["items"] == []
    # hostile queries answer 200 with no error
    for q in ['"', "-", "or", "*", "NEAR(a b)", "'; drop table emails; --", "a AND", "(((", "-only -negative", "ü", "\\"]:
        _search(world, q)
    # an account's mail erased: none of it is found any more
    other = _ingest(world["org"], world["a2"], [_raw(900, subject="Erasable zeppelin notes")], start=900)
    assert [it["id"] for it in _search(world, "zeppelin")["items"]] == other
    with Session(get_engine()) as s:
        erase_account_mail(s, world["a2"])
        s.commit()
    assert _search(world, "zeppelin")["items"] == []


def test_the_highlight_finds_a_word_deep_in_a_long_body(world: dict[str, Any]) -> None:
    """The highlight is cut from the body around the first matched word, so a word 6,000 characters
    in is marked in context, not just the body's opening."""
    filler = " ".join(f"routine{i % 97} line" for i in range(800))  # ~10,000 characters before and after
    ids = _ingest(world["org"], world["a1"], [_raw(0), _raw(1, html_extra=f" {filler[:6000]} the albatross clause {filler}")])
    page = _search(world, "albatross")
    assert [it["id"] for it in page["items"]] == [ids[1]]
    highlight = page["items"][0]["search"]["highlight"]
    assert "<mark>albatross</mark>" in highlight and "clause" in highlight and len(highlight) < 1000
