"""The inbound pipeline end to end on the in-memory fake IMAP server and the StubBroker.

The same scenarios run against Dovecot, RabbitMQ and PostgreSQL in
tests/integration/test_inbound_dovecot.py; these are the fast twins.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update
from sqlmodel import Session

from models import Document, Email, EmailAccount, EmailLocation, Lead, Notification
from models.db import get_engine
from pipeline.clients.imap import ImapErrorKind
from pipeline.clients.storage import get_storage
from pipeline.flows.connections import use_imap_connector
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.flow import CRM, account, count, drain, email_by_mid, links_of, make_account, make_org, seed_crm, tick
from tests.harness.mail import make_message


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


def seed_rules(server: FakeImapServer) -> None:
    """One message per linking rule, plus one with an attachment."""
    server.seed("INBOX", [
        make_message(1, from_=f"Ada <{CRM['contact'][1]}>", message_id="<m1@t>"),
        make_message(2, from_=CRM["contact_personal"][1].upper(), message_id="<m2@t>"),
        make_message(3, from_=CRM["lead"][1], message_id="<m3@t>"),
        make_message(4, from_=CRM["account"][1], message_id="<m4@t>"),
        make_message(5, from_=CRM["collision"][2], message_id="<m5@t>"),
        make_message(6, from_="Stranger Danger <stranger@unknown.example>", message_id="<m6@t>"),
        make_message(7, from_=CRM["contact"][1], message_id="<m7@t>",
                     attachments=[("report q3.pdf", "application/pdf", b"%PDF-1.4 fake" * 100)]),
    ], flags=["\\Answered"])


class TestFirstSync:
    def test_rules_flags_and_attachments(self, org: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """One tick stores each message once, links per the rules, stores attachments, changes no flag."""
        seed_rules(server)
        before = server.flags("INBOX")
        acct_id = make_account(org)
        assert tick()["fetch_due_accounts"] == 1
        drain(stub_broker, stub_worker)
        assert count(Email) == 7 and count(Email, Email.pipeline_state != "done") == 0
        assert links_of("m1@t") == {("contact", "c-ada"), ("account", "a-engine")}
        assert links_of("m2@t") == {("contact", "c-bob")}
        assert links_of("m3@t") == {("lead", "l-lee")}
        assert links_of("m4@t") == {("account", "a-acme")}
        assert links_of("m5@t") == {("contact", "c-sam"), ("lead", "l-sam")} and email_by_mid("m5@t").needs_review
        assert links_of("m6@t") == set() and not email_by_mid("m6@t").linked
        with Session(get_engine()) as s:
            doc = s.execute(select(Document)).scalar_one()
        assert doc.document_name == "report q3.pdf" and get_storage().get(doc.storage_key) == b"%PDF-1.4 fake" * 100
        assert server.flags("INBOX") == before
        a = account(acct_id)
        assert a.sync_state == "idle" and a.messages_synced == 7 and a.last_synced_at is not None
        # Notifications: one per linked inbound email, for the mailbox owner.
        assert count(Notification, Notification.kind == "email.received", Notification.user_id == "u1") == 6

    def test_second_tick_fetches_nothing_then_new_mail(self, org: str, server: FakeImapServer, stub_broker: StubBroker,
                                                       stub_worker: Worker) -> None:
        """A repeat tick is a no-op; five new messages become exactly five emails."""
        seed_rules(server)
        acct_id = make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        with Session(get_engine()) as s:  # make the account due again
            s.execute(update(EmailAccount).values(next_fetch_at=None))
            s.commit()
        tick()
        drain(stub_broker, stub_worker)
        assert count(Email) == 7
        server.seed("INBOX", [make_message(100 + i, message_id=f"<new{i}@t>") for i in range(5)])
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(next_fetch_at=None))
            s.commit()
        tick()
        drain(stub_broker, stub_worker)
        assert count(Email) == 12 and account(acct_id).messages_synced == 12

    def test_same_message_in_inbox_and_sent(self, org: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """One Message-ID in INBOX and Sent is one email with two locations."""
        raw = make_message(1, from_="alice@example.test", to=CRM["contact"][1], message_id="<both@t>")
        server.seed("INBOX", raw)
        server.seed("Sent", raw)
        make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        e = email_by_mid("both@t")
        assert count(Email) == 1 and count(EmailLocation, EmailLocation.email_id == e.id) == 2
        assert e.direction == "outbound" and links_of("both@t") == {("contact", "c-ada"), ("account", "a-engine")}


class TestResync:
    def test_uidvalidity_change_reindexes_silently(self, org: str, server: FakeImapServer, stub_broker: StubBroker,
                                                   stub_worker: Worker) -> None:
        """After UIDVALIDITY changes: no duplicate emails, no new notifications, fresh locations."""
        seed_rules(server)
        make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        notes = count(Notification)
        server.set_uidvalidity("INBOX", 424242)
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(next_fetch_at=None))
            s.commit()
        tick()
        drain(stub_broker, stub_worker)
        assert count(Email) == 7 and count(Notification) == notes
        assert count(EmailLocation) == 7 and count(EmailLocation, EmailLocation.uidvalidity == 424242) == 7

    def test_rate_limit_defers_rest(self, org: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """Past the hourly budget the rest waits for the next window; nothing is dropped."""
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_SYNC_RATE_PER_HOUR", "4")
        reset_settings()
        server.seed("INBOX", [make_message(i, message_id=f"<r{i}@t>") for i in range(10)])
        acct_id = make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        a = account(acct_id)
        assert count(Email) == 4 and a.deferred_until is not None
        assert tick().get("fetch_due_accounts") == 0  # deferred: not due
        with Session(get_engine()) as s:  # an hour passes
            s.execute(update(EmailAccount).values(next_fetch_at=None, deferred_until=None, rate_window_start=None))
            s.commit()
        for _ in range(3):
            tick()
            drain(stub_broker, stub_worker)
            with Session(get_engine()) as s:
                s.execute(update(EmailAccount).values(next_fetch_at=None, deferred_until=None, rate_window_start=None))
                s.commit()
        assert count(Email) == 10


class TestFailures:
    def test_wrong_password_shows_auth_error(self, org: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """A rejected login marks the account in error with an auth reason at once."""
        srv = FakeImapServer("alice@example.test", "other-password")
        use_imap_connector(fake_connect(srv))
        acct_id = make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        a = account(acct_id)
        assert a.sync_state == "error" and a.last_error_code == ImapErrorKind.AUTH.value
        assert a.last_error and "reconnect needed" in a.last_error and "alicepass" not in a.last_error

    def test_malformed_mail_never_wedges(self, org: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """Garbage and broken MIME are stored or quarantined with a reason; the rest goes through."""
        server.seed("INBOX", [
            b"\x00\xff\xfe not an email at all \x00",
            b"From: a@b.example\r\nSubject: =?bogus?q?x?=\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nno end",
            make_message(9, message_id="<fine@t>"),
        ])
        make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        with Session(get_engine()) as s:
            rows = list(s.execute(select(Email)).scalars())
        assert len(rows) == 3
        assert {r.pipeline_state for r in rows} <= {"done", "quarantined"}
        bad = [r for r in rows if r.pipeline_state == "quarantined"]
        assert all(r.parse_error for r in bad) and any(r.pipeline_state == "done" for r in rows)


class TestLeads:
    def test_unknown_sender_becomes_lead(self, db: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """With auto_create_leads on, a new human sender becomes a NEW lead with a notification; bulk mail does not."""
        org_id, _ = make_org(auto_create_leads=True, own_domains=["example.test"])
        seed_crm(org_id)
        server.seed("INBOX", [
            make_message(1, from_="Grace Hopper <grace@navy.example>", message_id="<g1@t>"),
            make_message(2, from_="Grace Hopper <grace@navy.example>", message_id="<g2@t>"),
            make_message(3, from_="News <news@list.example>", message_id="<n1@t>", headers={"List-Unsubscribe": "<mailto:u@list.example>"}),
            make_message(4, from_="Colleague <bob@example.test>", message_id="<c1@t>"),
        ])
        make_account(org_id)
        tick()
        drain(stub_broker, stub_worker)
        with Session(get_engine()) as s:
            leads = list(s.execute(select(Lead).where(Lead.source_email_id.is_not(None))).scalars())  # type: ignore[union-attr]
        assert [(ld.firstName, ld.lastName, ld.status, ld.lead_source, ld.email) for ld in leads] == [
            ("Grace", "Hopper", "NEW", "Email", "grace@navy.example")]
        assert links_of("g1@t") == {("lead", leads[0].id)} and links_of("g2@t") == {("lead", leads[0].id)}
        assert links_of("n1@t") == set() and links_of("c1@t") == set()
        notes = count(Notification, Notification.kind == "lead.created")
        assert notes == 1
        with Session(get_engine()) as s:
            title = s.execute(select(Notification.title).where(Notification.kind == "lead.created")).scalar_one()
        assert title == "New lead created from email: Grace Hopper"


class TestRawCache:
    def test_lost_raw_is_fetched_again(self, org: str, server: FakeImapServer, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """If a stored raw message vanished (say, a power cut), parse fetches it again from its location."""
        server.seed("INBOX", make_message(1, from_=CRM["contact"][1], message_id="<lost@t>"))
        from pipeline.actors.fetch import fetch_account

        acct_id = make_account(org)
        stub_worker.pause()
        tick()
        fetch_account.fn(acct_id, account(acct_id).fetch_token)  # run the fetch here; the chain stays queued
        e = email_by_mid("lost@t")
        get_storage().delete(e.raw_key or "")
        stub_worker.resume()
        drain(stub_broker, stub_worker)
        e = email_by_mid("lost@t")
        assert e.pipeline_state == "done" and e.subject == "Message number 1"
        assert get_storage().exists(e.raw_key or "")


class TestUserBudget:
    def test_two_mailboxes_share_the_hourly_budget(self, org: str, stub_broker: StubBroker, stub_worker: Worker,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """The hourly budget is per user: a second mailbox of the same user gets only what is left."""
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_SYNC_RATE_PER_HOUR", "6")
        reset_settings()
        first = FakeImapServer("alice@example.test", "alicepass")
        first.seed("INBOX", [make_message(i, message_id=f"<a{i}@t>") for i in range(4)])
        second = FakeImapServer("alice2@example.test", "pw2")
        second.seed("INBOX", [make_message(i, message_id=f"<b{i}@t>") for i in range(4)])
        servers = {"alice@example.test": first, "alice2@example.test": second}
        use_imap_connector(lambda settings: fake_connect(servers[settings.username])(settings))
        a = make_account(org)
        tick()
        drain(stub_broker, stub_worker)
        b = make_account(org, email="alice2@example.test", password="pw2")
        tick()
        drain(stub_broker, stub_worker)
        assert account(a).messages_synced == 4 and account(b).messages_synced == 2
        assert account(b).deferred_until is not None


class TestLease:
    def test_disabled_account_drops_queued_fetch(self, org: str, server: FakeImapServer, stub_broker: StubBroker,
                                                 stub_worker: Worker) -> None:
        """A fetch queued before the account was disabled is dropped and leaves it disabled."""
        from pipeline.actors.fetch import fetch_account

        server.seed("INBOX", make_message(1, message_id="<d1@t>"))
        acct_id = make_account(org)
        stub_worker.pause()
        tick()
        token = account(acct_id).fetch_token
        with Session(get_engine()) as s:
            s.execute(update(EmailAccount).values(sync_state="disabled", fetch_token=None))
            s.commit()
        fetch_account.fn(acct_id, token)
        assert account(acct_id).sync_state == "disabled" and count(Email) == 0
        stub_worker.resume()

    def test_redelivery_takes_over_and_stale_run_stops(self, org: str, server: FakeImapServer) -> None:
        """A redelivered message takes the lease over; the older run's next write is refused."""
        from models.lease import LeaseLost
        from pipeline.flows.mailbox_lease import claim as _claim
        from pipeline.flows.mailbox_lease import renew as _renew

        acct_id = make_account(org)
        tick()
        token = account(acct_id).fetch_token or ""
        assert _claim(acct_id, token, "msg-1:aaaa") is not None
        assert _claim(acct_id, token, "msg-2:bbbb") is None  # another message: lease held
        assert _claim(acct_id, token, "msg-1:cccc") is not None  # same message redelivered: takeover
        with Session(get_engine()) as s, pytest.raises(LeaseLost):
            _renew(s, acct_id, "msg-1:aaaa")
        with Session(get_engine()) as s:
            _renew(s, acct_id, "msg-1:cccc")
            s.commit()
