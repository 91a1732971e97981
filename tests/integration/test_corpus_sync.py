"""The real-world corpus through the whole inbound pipeline: Dovecot, PostgreSQL, RabbitMQ (issue 14,
must-show 6: no lost message, no wrong link, exact filenames, no mojibake).

All 424 messages of tests/data/corpus go into one Dovecot INBOX and are synced by the real fetch,
parse, store, link, lead and notify actors. Every file is a distinct message (see the corpus
README), so every one must come out as its own email at its own location.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Document, Email, EmailLink, EmailLocation, Lead
from models.db import get_engine
from pipeline.clients.storage import get_storage
from pipeline.stages.autolink import normalize_email
from pipeline.stages.identity import message_identity
from tests.harness.corpus import CORPUS, EXPECTED_FILENAMES, SPOOFS, corpus_files, has_mojibake, source_check
from tests.harness.dovecot import Dovecot
from tests.harness.flow import CRM, count, make_account, make_org, seed_crm, sync_until_done

pytestmark = pytest.mark.integration

FILES = corpus_files()
NOT_MAIL = {"cpython/msg_19.eml", "spamassassin/spam__bsmtp.eml", "spamscope-mail-parser/mail_outlook_1.eml"}
#: Every CRM record of tests.harness.flow.seed_crm and the addresses that may link mail to it.
RECORD_ADDRESSES: dict[tuple[str, str], set[str]] = {
    ("contact", CRM["contact"][0]): {CRM["contact"][1]},
    ("account", CRM["account_of_contact"]): {CRM["contact"][1]},  # through its contact
    ("contact", CRM["contact_personal"][0]): {CRM["contact_personal"][1]},
    ("lead", CRM["lead"][0]): {CRM["lead"][1]},
    ("account", CRM["account"][0]): {CRM["account"][1]},
    ("contact", CRM["collision"][0]): {CRM["collision"][2]},
    ("lead", CRM["collision"][1]): {CRM["collision"][2]},
}


def _name(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


@pytest.fixture
def synced(live: dict[str, Any], dovecot: Dovecot, dovecot_user: tuple[str, str]) -> Iterator[dict[str, Any]]:
    """The corpus seeded into a fresh mailbox and synced once; maps each corpus file to its email."""
    user, password = dovecot_user
    org_id, key = make_org(auto_create_leads=True)
    seed_crm(org_id)
    uids = dovecot.seed(user, "INBOX", [p.read_bytes() for p in FILES])
    make_account(org_id, host=dovecot.host, port=dovecot.tls_port, email=user, password=password)
    sync_until_done(len(FILES), timeout=280)
    with Session(get_engine()) as s:
        by_uid = dict(s.execute(select(EmailLocation.uid, EmailLocation.email_id)).all())
        emails = {e.id: e for e in s.execute(select(Email)).scalars()}
    files = {_name(p): emails[by_uid[uid]] for p, uid in zip(FILES, uids, strict=True) if uid in by_uid}
    yield {"org_id": org_id, "key": key, "user": user, "files": files, "uids": dict(zip((_name(p) for p in FILES), uids, strict=True))}


@pytest.mark.timeout(600)
def test_corpus_syncs_without_loss_wrong_link_or_mojibake(synced: dict[str, Any]) -> None:
    """Every seeded message is stored once at its own location; quarantined ones carry a reason; no
    email is linked to a CRM record by anything but its own addresses (spoofed display names link
    nothing and are flagged); attachment names are exact; text from valid bytes has no U+FFFD or
    mojibake."""
    files: dict[str, Email] = synced["files"]
    # No lost message: one location per seeded message, one email per location, each in a final state.
    assert count(EmailLocation) == len(FILES) and len(files) == len(FILES)
    assert count(Email) == len(FILES) and len({e.id for e in files.values()}) == len(FILES)
    states = {name: e.pipeline_state for name, e in files.items()}
    assert {n for n, st in states.items() if st == "quarantined"} == NOT_MAIL
    assert all(st == "done" for n, st in states.items() if n not in NOT_MAIL)
    assert all(files[n].parse_error for n in NOT_MAIL)
    a, b = files["handwritten/no_message_id_same_headers_a.eml"], files["handwritten/no_message_id_same_headers_b.eml"]
    assert a.id != b.id and "Report A" in a.body_text and "Report B" in b.body_text

    # No wrong link: every link's record has one of the email's own addresses.
    with Session(get_engine()) as s:
        links = list(s.execute(select(EmailLink)).scalars())
        leads = {ld.id: ld for ld in s.execute(select(Lead)).scalars()}
    by_email = {e.id: e for e in files.values()}
    linked = defaultdict(set)
    for link in links:
        e = by_email[link.email_id]
        own = {normalize_email(e.from_email)} if e.direction == "inbound" else {normalize_email(x) for x in e.to_emails + e.cc_emails}
        allowed = RECORD_ADDRESSES.get((link.entity_type, link.entity_id)) or {leads[link.entity_id].email_norm}
        assert own & allowed, f"{link.entity_type} {link.entity_id} linked to {e.from_email} ({link.how})"
        linked[link.email_id].add((link.entity_type, link.entity_id))
    assert linked, "nothing was linked at all: the link check above tested nothing"
    for name, sender in SPOOFS.items():
        e = files[name]
        assert e.suspicious_sender and e.from_email == sender
        assert not linked[e.id] & set(RECORD_ADDRESSES), f"{name} linked to {linked[e.id]}"
        assert not [ld for ld in leads.values() if ld.source_email_id == e.id and ld.email_norm != sender]
    assert linked[files["handwritten/display_name_address_recipients.eml"].id] == {
        ("contact", CRM["contact"][0]), ("account", CRM["account_of_contact"])}
    assert sum(e.suspicious_sender for e in files.values()) == len(SPOOFS)

    # Exact attachment names.
    with Session(get_engine()) as s:
        docs = defaultdict(list)
        for d in s.execute(select(Document).order_by(Document.email_id, Document.part_index)).scalars():
            docs[d.email_id].append(d.document_name)
    for name, expected in EXPECTED_FILENAMES.items():
        assert [n for n in docs[files[name].id] if not n.startswith("attachment-")] == expected, name

    # No U+FFFD or mojibake where the source bytes were valid: the bytes as the server served them
    # (Dovecot turns bare LF into CRLF, which is no longer valid inside an unencoded UTF-16 part).
    judged = 0
    for path in FILES:
        e = files[_name(path)]
        source = source_check(get_storage().get(e.raw_key or ""))
        if not source.clean:
            continue
        judged += 1
        for value in (e.subject, e.from_name or "", e.body_text, e.body_html or "", " | ".join(docs[e.id])):
            assert source.replacement or "\ufffd" not in value, f"{_name(path)}: {value[:200]!r}"
            assert source.mojibake or not has_mojibake(value), f"{_name(path)}: {value[:200]!r}"
    assert judged >= 0.85 * len(FILES)


@pytest.mark.timeout(600)
def test_api_shows_the_spoof_and_the_names(synced: dict[str, Any]) -> None:
    """GET /api/v1/emails/{id} says suspicious_sender, shows the real sender and no link, and lists the
    exact attachment names."""
    from web.app import create_app

    files: dict[str, Email] = synced["files"]
    h = {"Authorization": f"Bearer {synced['key']}"}
    with TestClient(create_app()) as client:
        spoof = client.get(f"/api/v1/emails/{files['handwritten/spoof_display_address.eml'].id}", headers=h).json()
        plain = client.get(f"/api/v1/emails/{files['handwritten/two_to_headers.eml'].id}", headers=h).json()
        named = client.get(f"/api/v1/emails/{files['handwritten/folded_encoded_word_filename.eml'].id}", headers=h).json()
    assert spoof["suspicious_sender"] is True and spoof["from_email"] == "mallory@evil.example"
    assert spoof["from_name"] == CRM["contact"][1] and spoof["links"]["contact_ids"] == []
    assert plain["suspicious_sender"] is False
    assert plain["to_emails"] == ["alice@example.test", CRM["lead"][1]] and plain["cc_emails"] == ["carol@example.org", "dan@example.org"]
    assert [a["filename"] for a in named["attachments"]] == ["été résumé de la réunion du conseil d'administration.pdf"]


@pytest.mark.timeout(600)
def test_rows_with_old_keys_are_not_imported_again(synced: dict[str, Any], dovecot: Dovecot) -> None:
    """Mail without a Message-ID stored under the previous release's keys (headers only) is found again
    when a UIDVALIDITY change re-indexes the folder: no duplicate, every location moved."""
    with Session(get_engine()) as s:
        rows = list(s.execute(select(Email.id, Email.raw_key, Email.dedupe_key).where(Email.message_id.is_(None))).all())
        legacy = {row.id: message_identity(get_storage().get(row.raw_key)).legacy_key for row in rows}
        seen: dict[str, int] = defaultdict(int)
        for key in legacy.values():
            seen[key or ""] += 1
        rewritten = [(eid, key) for eid, key in legacy.items() if key and key.startswith("hdr:") and seen[key] == 1]
        for eid, key in rewritten:
            s.execute(update(Email).where(Email.id == eid).values(dedupe_key=key))
        s.commit()
    assert len(rewritten) >= 10, "too few old-style rows to show anything"
    old = dovecot.status(synced["user"], "INBOX")["uidvalidity"]
    dovecot.set_uidvalidity(synced["user"], "INBOX", old + 1000)
    sync_until_done(len(FILES), timeout=280)
    assert count(Email) == len(FILES)
    assert count(EmailLocation, EmailLocation.uidvalidity == old + 1000) == len(FILES)
    with Session(get_engine()) as s:
        keys = dict(s.execute(select(Email.id, Email.dedupe_key)).all())
    assert all(keys[eid] == key for eid, key in rewritten)
