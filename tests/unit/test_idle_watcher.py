"""Real time and two-way state on the in-memory IMAP fake, SQLite and the StubBroker: the watcher
(IDLE → fetch, flags, expunges, reconnects, servers without IDLE), flags from the API to the server,
and the pure decisions behind them. Dovecot, PostgreSQL and RabbitMQ: tests/integration/test_idle_dovecot.py."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlmodel import Session

from models import EmailAccount, FlagChange
from models.db import get_engine
from pipeline.clients.imap import MailboxEvent
from pipeline.flows.connections import use_imap_connector
from pipeline.flows.watcher import Watcher, WatcherConfig
from pipeline.stages import idle, mailbox_state
from tests.harness.fake_imap import DEFAULT_CAPABILITIES, FakeImapServer, fake_connect
from tests.harness.flow import account, email_by_mid, make_account, make_org, seed_crm
from tests.harness.mail import make_message
from tests.harness.wait import wait_until


class TestDecisions:
    def test_fair_share_splits_what_is_due_within_capacity(self) -> None:
        assert idle.fair_share(50, 2, 2000) == 25
        assert idle.fair_share(51, 2, 2000) == 26
        assert idle.fair_share(5000, 1, 2000) == 2000
        assert idle.fair_share(0, 3, 10) == 0 and idle.fair_share(10, 0, 10) == 10

    def test_share_change_gives_back_only_what_is_clearly_above(self) -> None:
        assert idle.share_change(0, 25) == 25
        assert idle.share_change(27, 25) == 0  # within a tenth: keep, no ping-pong
        assert idle.share_change(50, 25) == -25

    def test_backoff_grows_with_jitter_and_stops_at_the_cap(self) -> None:
        rng = random.Random(7)
        first = [idle.backoff_seconds(1, rng=rng) for _ in range(50)]
        assert all(0.5 <= w <= 1.0 for w in first) and len(set(first)) > 40
        assert all(150 <= idle.backoff_seconds(n, rng=rng) <= 300 for n in (10, 20, 100))
        assert idle.backoff_seconds(0) == 0

    def test_events_become_a_fetch_flag_changes_and_expunges(self) -> None:
        actions = idle.event_actions([
            MailboxEvent("exists", number=3),
            MailboxEvent("flags", number=1, uids=(7,), flags=frozenset({"\\Seen"}), modseq=40),
            MailboxEvent("vanished", uids=(8, 9)),
        ])
        assert actions.fetch and actions.flags == {7: frozenset({"\\Seen"})} and actions.modseqs == {7: 40}
        assert actions.gone == {8, 9}
        assert idle.event_actions([MailboxEvent("expunge", number=2)]).fetch  # no UID: the fetch compares
        assert idle.event_actions([MailboxEvent("flags", number=2, flags=frozenset())]).fetch
        assert not idle.event_actions([]).fetch

    def test_flag_check_uses_the_cheapest_way(self) -> None:
        both = {"CONDSTORE", "QRESYNC"}
        assert mailbox_state.plan_flag_check(both, 10, 10, [5]).method == "none"
        assert mailbox_state.plan_flag_check(both, 10, 12, [5]) == mailbox_state.FlagCheck("changedsince", changedsince=10)
        assert mailbox_state.plan_flag_check({"CONDSTORE"}, 10, 12, [5, 9]) == mailbox_state.FlagCheck("both", 10, 5)
        assert mailbox_state.plan_flag_check(set(), None, None, [5, 9]) == mailbox_state.FlagCheck("window", window_from=5)
        assert mailbox_state.plan_flag_check(set(), None, None, []).method == "none"

    def test_email_flags_and_stale_reports(self) -> None:
        assert mailbox_state.email_flags([{"\\Seen"}, {"\\Flagged"}]) == mailbox_state.EmailFlags(True, True, False)
        stored = {1: (["\\Seen"], 50), 2: ([], None)}
        updates = mailbox_state.location_updates(stored, {1: set(), 2: {"\\Answered"}, 3: {"\\Seen"}}, {1: 40})
        assert [u.uid for u in updates] == [2]  # uid 1: older MODSEQ than stored; uid 3: not stored
        assert mailbox_state.store_actions(True, False) == (["\\Seen"], ["\\Flagged"])
        assert mailbox_state.store_actions(None, None) == ([], [])


@pytest.fixture
def server() -> Iterator[FakeImapServer]:
    srv = FakeImapServer("alice@example.test", "alicepass")
    use_imap_connector(fake_connect(srv))
    yield srv
    use_imap_connector(None)


@pytest.fixture
def watcher(db: str, stub_broker: StubBroker, stub_worker: Worker) -> Iterator[Watcher]:
    w = Watcher(WatcherConfig(capacity=10, lease_seconds=2.0, reissue_seconds=60.0))
    w.start()
    yield w
    w.stop()


def _org() -> str:
    org_id, _ = make_org()
    seed_crm(org_id)
    return org_id


class TestWatcherOnTheFake:
    def test_new_mail_flags_and_expunge_reach_the_emails(self, server: FakeImapServer, watcher: Watcher) -> None:
        acct = make_account(_org())
        wait_until(lambda: account(acct).idle_since is not None, 10, 0.05, "the mailbox idling")
        server.seed("INBOX", make_message(1, from_="ada@engine.example", message_id="<i1@t>"))
        email = wait_until(lambda: _done("i1@t"), 10, 0.05, "the new mail linked")
        assert email.linked and not email.seen and not email.deleted_on_server
        [uid] = list(server.flags("INBOX"))
        server.add_flags("INBOX", uid, ["\\Seen"])
        wait_until(lambda: email_by_mid("i1@t").seen, 10, 0.05, "\\Seen from the IDLE FETCH")
        server.expunge("INBOX", uid)
        gone = wait_until(lambda: (e := email_by_mid("i1@t")).deleted_on_server and e, 10, 0.05, "deleted_on_server")
        assert gone.deleted_at is None  # the CRM's record stays

    def test_a_dropped_connection_reconnects_and_mail_still_arrives(self, server: FakeImapServer, watcher: Watcher) -> None:
        acct = make_account(_org())
        wait_until(lambda: server.sessions and any(s._idling for s in server.sessions), 10, 0.05, "an idling session")
        server.kick()
        wait_until(lambda: any(s._idling for s in server.sessions), 10, 0.05, "idling again after the kick")
        server.seed("INBOX", make_message(2, message_id="<i2@t>"))
        wait_until(lambda: _done("i2@t"), 10, 0.05, "mail after the reconnect")
        assert account(acct).idle_since is not None

    def test_a_server_without_idle_keeps_polling(self, db: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
        plain = FakeImapServer("alice@example.test", "alicepass", capabilities=DEFAULT_CAPABILITIES - {"IDLE"})
        use_imap_connector(fake_connect(plain))
        acct = make_account(_org())
        w = Watcher(WatcherConfig(capacity=10, lease_seconds=2.0))
        w.start()
        try:
            a = wait_until(lambda: (x := account(acct)).idle_capable is False and x, 10, 0.05, "IDLE found missing")
            assert a.idle_owner is None and a.idle_since is None
            assert not w.idlers
        finally:
            w.stop()
            use_imap_connector(None)


class TestFlagsFromTheApi:
    def test_patch_stores_flags_on_every_location(self, server: FakeImapServer, db: str, stub_broker: StubBroker,
                                                  stub_worker: Worker) -> None:
        from starlette.testclient import TestClient

        from tests.harness.flow import drain, tick
        from web.app import create_app

        org_id, key = make_org()
        raw = make_message(3, message_id="<twin@t>")
        [inbox_uid] = server.seed("INBOX", raw)
        [sent_uid] = server.seed("Sent", raw)
        make_account(org_id)
        tick()
        drain(stub_broker, stub_worker)
        email = email_by_mid("twin@t")
        h = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app()) as client:
            r = client.patch(f"/api/v1/emails/{email.id}", json={"seen": True, "flagged": True}, headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["flags"] == {"seen": True, "flagged": True, "answered": False}
            drain(stub_broker, stub_worker)
            assert "\\Seen" in server.flags("INBOX")[inbox_uid] and "\\Flagged" in server.flags("Sent")[sent_uid]
            r = client.patch(f"/api/v1/emails/{email.id}", json={"seen": False}, headers=h)
            drain(stub_broker, stub_worker)
            assert server.flags("INBOX")[inbox_uid] == {"\\Flagged"} and server.flags("Sent")[sent_uid] == {"\\Flagged"}
            assert client.patch("/api/v1/emails/nope", json={"seen": True}, headers=h).status_code == 404
            assert client.patch(f"/api/v1/emails/{email.id}", json={"seen": "yes"}, headers=h).status_code == 422
        with Session(get_engine()) as s:
            states = [c.state for c in s.execute(select(FlagChange).order_by(FlagChange.created_at)).scalars()]
            assert states == ["done", "done"]
            assert s.execute(select(EmailAccount.id)).scalar_one()


def _done(message_id: str) -> object:
    try:
        email = email_by_mid(message_id)
    except Exception:
        return None
    return email if email.pipeline_state == "done" else None
