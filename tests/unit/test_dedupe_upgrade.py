"""Changing the dedupe key of mail without a Message-ID (issue 14) on a mailbox already synced.

Rows stored by earlier releases keep their keys (``hdr:``, a hash of the headers alone). A later
sync must not import those messages again, whether the message is fetched at a location we know
(a lost cursor), copied to another folder, or re-indexed after a UIDVALIDITY change; and a message
the old key had merged into another one is now stored. Fake IMAP server and StubBroker; the same
flow runs against Dovecot in tests/integration/test_corpus_sync.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import delete, select, update
from sqlmodel import Session

from models import Email, EmailAccount, EmailLocation, FolderState
from models.db import get_engine
from pipeline.flows.connections import use_imap_connector
from pipeline.stages.identity import message_identity
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.flow import count, drain, make_account, make_org, seed_crm, tick

HEAD = (b"From: Ada Lovelace <ada@engine.example>\r\nTo: alice@example.test\r\nSubject: Daily report\r\n"
        b"Date: Wed, 04 Dec 2024 07:00:00 +0000\r\n\r\n")
REPORT_A = HEAD + b"Report A: 12 orders shipped.\r\n"
REPORT_B = HEAD + b"Report B: 3 orders returned.\r\n"


@pytest.fixture
def server() -> Iterator[FakeImapServer]:
    srv = FakeImapServer("alice@example.test", "alicepass")
    use_imap_connector(fake_connect(srv))
    yield srv
    use_imap_connector(None)


@pytest.fixture
def org(db: str) -> str:
    org_id, _ = make_org()
    seed_crm(org_id)
    return org_id


def _sync(broker: StubBroker, worker: Worker) -> None:
    with Session(get_engine()) as s:
        s.execute(update(EmailAccount).values(next_fetch_at=None))
        s.commit()
    tick()
    drain(broker, worker)


def _as_stored_by_the_previous_release(raw: bytes) -> str:
    """Rewrite the row of ``raw`` to the key the previous release gave it; returns that key."""
    ident = message_identity(raw)
    assert ident.legacy_key is not None and ident.legacy_key.startswith("hdr:")
    with Session(get_engine()) as s:
        s.execute(update(Email).where(Email.dedupe_key == ident.dedupe_key).values(dedupe_key=ident.legacy_key))
        s.commit()
    return ident.legacy_key


def _keys() -> list[str]:
    with Session(get_engine()) as s:
        return sorted(s.execute(select(Email.dedupe_key)).scalars())


class TestKeyUpgrade:
    def test_distinct_bodies_are_two_emails(self, org: str, server: FakeImapServer, stub_broker: StubBroker,
                                            stub_worker: Worker) -> None:
        """Same Date/From/To/Subject, no Message-ID, different bodies: two emails (one was lost before)."""
        server.seed("INBOX", [REPORT_A, REPORT_B])
        make_account(org)
        _sync(stub_broker, stub_worker)
        assert count(Email) == 2 and all(k.startswith("hb:") for k in _keys())

    def test_old_row_is_found_again(self, org: str, server: FakeImapServer, stub_broker: StubBroker,
                                    stub_worker: Worker) -> None:
        """A row stored under the old key: its copy in Sent, a re-index after a UIDVALIDITY change and a
        lost cursor all find it, and the message the old key had hidden is stored at last."""
        server.seed("INBOX", REPORT_A)
        make_account(org)
        _sync(stub_broker, stub_worker)
        legacy = _as_stored_by_the_previous_release(REPORT_A)

        server.seed("Sent", REPORT_A)  # the same bytes in another folder: matched by legacy key + bytes
        _sync(stub_broker, stub_worker)
        assert _keys() == [legacy] and count(EmailLocation) == 2

        server.set_uidvalidity("INBOX", 777)  # re-index: every INBOX message fetched again
        _sync(stub_broker, stub_worker)
        assert _keys() == [legacy] and count(EmailLocation, EmailLocation.uidvalidity == 777) == 1

        with Session(get_engine()) as s:  # the cursor is lost: the same UIDs come again, found by location
            s.execute(update(Email).values(dedupe_key="hdr:from-an-even-older-release"))
            s.execute(delete(FolderState))
            s.commit()
        _sync(stub_broker, stub_worker)
        assert _keys() == ["hdr:from-an-even-older-release"] and count(EmailLocation) == 2

        server.seed("INBOX", REPORT_B)  # same headers, other body: the old key would have dropped it
        _sync(stub_broker, stub_worker)
        assert count(Email) == 2 and message_identity(REPORT_B).dedupe_key in _keys()
