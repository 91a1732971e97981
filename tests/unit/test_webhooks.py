"""Webhooks without the network: signatures checked by the standardwebhooks verifier, the retry
schedule, subscriptions and target URLs (pure); the outbox in the caller's transaction, and the
delivery run's retry, give-up and disable rules (SQLite, a scripted poster)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import update
from sqlmodel import Session, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from models import Notification, User, WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow
from models.db import get_engine
from pipeline.clients.webhook_http import Outcome
from pipeline.stages import webhooks as st
from tests.harness.flow import make_org

SECRET_A = st.new_secret(b"a" * 32)
SECRET_B = st.new_secret(b"b" * 32)


class TestStages:
    def test_signature_verifies_under_each_secret_and_not_a_third(self) -> None:
        """Both signatures of a rotation are accepted; a tampered body or another secret is not."""
        body = st.body_bytes("email.sent", datetime(2026, 12, 5, tzinfo=UTC), {"email_id": "e1"})
        headers = st.signed_headers("evt_1", utcnow(), body, [SECRET_A, SECRET_B])
        assert headers["webhook-id"] == "evt_1" and headers["webhook-signature"].count("v1,") == 2
        for secret in (SECRET_A, SECRET_B):
            assert Webhook(secret).verify(body, headers)["data"] == {"email_id": "e1"}
        with pytest.raises(WebhookVerificationError):
            Webhook(st.new_secret(b"c" * 32)).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET_A).verify(body.replace(b"e1", b"e2"), headers)

    def test_body_is_stable_and_carries_type_timestamp_data(self) -> None:
        at = datetime(2026, 12, 5, 1, 2, 3, tzinfo=UTC)
        one = st.body_bytes("lead.created", at, {"b": 1, "a": [1, 2]})
        assert one == st.body_bytes("lead.created", at, {"a": [1, 2], "b": 1})
        assert one == b'{"data":{"a":[1,2],"b":1},"timestamp":"2026-12-05T01:02:03Z","type":"lead.created"}'

    def test_secret_needs_24_bytes(self) -> None:
        assert SECRET_A.startswith("whsec_")
        with pytest.raises(ValueError):
            st.new_secret(b"x" * 23)

    def test_backoff_doubles_from_the_base_with_jitter_and_caps_at_an_hour(self) -> None:
        rng = random.Random(7)
        waits = [st.backoff_seconds(n, 5.0, rng) for n in range(1, 8)]
        for n, w in enumerate(waits, start=1):
            assert 0.8 * 5 * 2 ** (n - 1) <= w <= 1.2 * 5 * 2 ** (n - 1)
        assert st.backoff_seconds(40, 5.0, rng) <= 3600 * 1.2
        # ≥ 24 h of retries: the attempts before the window closes still come at most an hour apart.
        assert sum(st.backoff_seconds(n, 5.0, random.Random(1)) for n in range(1, 40)) > 24 * 3600

    def test_events_and_subscriptions(self) -> None:
        assert st.validate_events(["email.sent", "email.sent", "lead.created"]) == ["email.sent", "lead.created"]
        assert st.validate_events(["email.sent", "*"]) == ["*"]
        for bad in ([], ["email.sent", "nope"]):
            with pytest.raises(ValueError):
                st.validate_events(bad)
        assert st.subscribes(["*"], "sentiment.at_risk") and not st.subscribes(["*"], st.TEST_EVENT)
        assert st.subscribes(["email.sent"], "email.sent") and not st.subscribes(["email.sent"], "email.failed")

    @pytest.mark.parametrize("url", ["ftp://h/x", "file:///etc/passwd", "http://user:pw@h/", "http:///nohost", "https://h:99999/",
                                     "http://h/a b", "gopher://h/"])
    def test_target_form_refused(self, url: str) -> None:
        with pytest.raises(ValueError):
            st.parse_target(url)

    def test_target_form_accepted(self) -> None:
        t = st.parse_target("https://Hooks.Example.com/in?x=1")
        assert (t.scheme, t.host, t.port) == ("https", "hooks.example.com", 443)
        assert st.parse_target("http://[2001:db8::1]:8080/").host == "2001:db8::1"


@pytest.fixture
def org(db: str, stub_broker: StubBroker) -> Iterator[str]:
    org_id, _ = make_org()
    yield org_id


def _endpoint(org_id: str, events: list[str], **kw: Any) -> str:
    from ops.keys import seal

    with Session(get_engine()) as s:
        ep = WebhookEndpoint(org_id=org_id, url="http://hooks.example/in", events=events,
                             secret=seal("webhook_endpoints", "secret", SECRET_A), **kw)
        s.add(ep)
        s.commit()
        return ep.id


def _count(model: Any) -> int:
    with Session(get_engine()) as s:
        return len(list(s.execute(select(model)).scalars()))


class TestOutbox:
    def test_nothing_without_a_subscriber_then_one_row_per_dedupe_key(self, org: str, stub_broker: StubBroker) -> None:
        from pipeline.flows.events_outbox import record_event

        with Session(get_engine()) as s:
            assert record_event(s, org, "email.sent", {"email_id": "e1"}, dedupe_key="email.sent:e1") is None
            s.commit()
        assert _count(WebhookEvent) == 0, "no endpoint: the outbox stays empty"
        _endpoint(org, ["email.sent"])
        with Session(get_engine()) as s:
            assert record_event(s, org, "lead.created", {"lead_id": "l1"}) is None, "not subscribed"
            first = record_event(s, org, "email.sent", {"email_id": "e1"}, dedupe_key="email.sent:e1")
            s.commit()
        with Session(get_engine()) as s:
            assert record_event(s, org, "email.sent", {"email_id": "e1"}, dedupe_key="email.sent:e1") is None, "a repeat"
            s.commit()
        assert first is not None and first.startswith("evt_") and _count(WebhookEvent) == 1
        assert stub_broker.queues["webhooks"].qsize() >= 1, "a dispatch was enqueued after the commit"
        with pytest.raises(ValueError):
            with Session(get_engine()) as s:
                record_event(s, org, "not.a.type", {})

    def test_rolled_back_change_records_no_event(self, org: str) -> None:
        from pipeline.flows.events_outbox import record_event

        _endpoint(org, ["*"])
        with Session(get_engine()) as s:
            assert record_event(s, org, "email.sent", {"email_id": "e2"}, dedupe_key="email.sent:e2")
            s.rollback()
        assert _count(WebhookEvent) == 0

    def test_dispatch_fans_out_to_subscribed_enabled_endpoints_once(self, org: str) -> None:
        from pipeline.flows.events_outbox import record_event
        from pipeline.flows.webhooks import dispatch_pending

        every = _endpoint(org, ["*"])
        sent_only = _endpoint(org, ["email.sent"])
        _endpoint(org, ["*"], disabled=True)
        other_org, _ = make_org("other")
        _endpoint(other_org, ["*"])
        with Session(get_engine()) as s:
            record_event(s, org, "email.sent", {"email_id": "e1"})
            record_event(s, org, "lead.created", {"lead_id": "l1"})
            s.commit()
        assert dispatch_pending() == 2 and dispatch_pending() == 0
        with Session(get_engine()) as s:
            rows = {(d.endpoint_id, d.type) for d in s.execute(select(WebhookDelivery)).scalars()}
        assert rows == {(every, "email.sent"), (every, "lead.created"), (sent_only, "email.sent")}


class Scripted:
    """A poster answering from a script of outcomes (and recording what it was asked to send)."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.sent: list[dict[str, str]] = []

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        self.sent.append(headers)
        return self.outcomes.pop(0)

    def close(self) -> None:
        pass


FAIL = Outcome(False, 503, "http_503", 0.01)
OK = Outcome(True, 200, None, 0.01)


class TestDeliveryRun:
    def _prepare(self, org: str, n: int = 2) -> str:
        from pipeline.flows.events_outbox import record_event
        from pipeline.flows.webhooks import dispatch_pending

        ep = _endpoint(org, ["*"])
        with Session(get_engine()) as s:
            for i in range(n):
                record_event(s, org, "lead.created", {"lead_id": f"l{i}"})
            s.commit()
        dispatch_pending()
        return ep

    def _run(self, ep: str, poster: Scripted) -> int:
        from pipeline.flows.webhooks import deliver_endpoint

        return deliver_endpoint(ep, "msg:run", poster_factory=lambda: poster)  # type: ignore[arg-type,return-value]

    def _deliveries(self) -> list[WebhookDelivery]:
        with Session(get_engine()) as s:
            return list(s.execute(select(WebhookDelivery).order_by(WebhookDelivery.event_id)).scalars())  # type: ignore[arg-type]

    def test_a_failure_pauses_the_endpoint_until_its_retry_keeping_order(self, org: str) -> None:
        ep = self._prepare(org)
        poster = Scripted([FAIL])
        assert self._run(ep, poster) == 1, "one attempt, then the endpoint waits"
        first, second = self._deliveries()
        assert first.status == "pending" and first.attempts == 1 and first.last_status_code == 503
        assert first.next_attempt_at is not None and first.next_attempt_at > utcnow()
        assert second.attempts == 0 and second.next_attempt_at is not None and second.next_attempt_at >= first.next_attempt_at
        with Session(get_engine()) as s:  # the retry is due: the first goes first, then the second
            s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            s.commit()
        poster = Scripted([OK, OK])
        assert self._run(ep, poster) == 2
        assert [h["webhook-id"] for h in poster.sent] == [d.event_id for d in self._deliveries()]
        assert all(d.status == "succeeded" for d in self._deliveries())
        with Session(get_engine()) as s:
            endpoint = s.get(WebhookEndpoint, ep)
            assert endpoint is not None and endpoint.failing_since is None and endpoint.lease_owner is None

    def test_failed_after_the_window_disabled_after_three_days_org_notified(self, org: str) -> None:
        ep = self._prepare(org, n=1)
        with Session(get_engine()) as s:
            s.add(User(org_id=org, id="u1", name="Ula", email="ula@acme.example", email_norm="ula@acme.example"))
            s.execute(update(WebhookDelivery).values(created_at=utcnow() - timedelta(hours=25)))
            s.execute(update(WebhookEndpoint).values(failing_since=utcnow() - timedelta(days=3, minutes=1)))
            s.commit()
        assert self._run(ep, Scripted([FAIL])) == 1
        (d,) = self._deliveries()
        assert d.status == "failed" and d.next_attempt_at is None and d.last_error == "http_503"
        with Session(get_engine()) as s:
            endpoint = s.get(WebhookEndpoint, ep)
            assert endpoint is not None and endpoint.disabled and "failing since" in (endpoint.disabled_reason or "")
            notes = list(s.execute(select(Notification)).scalars())
        assert [(n.user_id, n.kind) for n in notes] == [("u1", "webhook.disabled")]
        assert self._run(ep, Scripted([])) == 0, "a disabled endpoint gets no run"


class TestSyncState:
    def test_only_settled_changes_are_announced(self, org: str) -> None:
        """idle → syncing → idle says nothing; idle → error, error again, then idle: two events."""
        from models import EmailAccount
        from pipeline.flows.mailbox_lease import FETCH_LEASE, release
        from tests.harness.flow import make_account

        _endpoint(org, ["account.sync_state_changed"])
        account_id = make_account(org)

        def run(**values: Any) -> None:
            with Session(get_engine()) as s:
                assert FETCH_LEASE.claim(s, account_id, "m:1", sync_state="syncing")
                s.commit()
            release(account_id, "m:1", **values)

        run(sync_state="idle")
        run(sync_state="error", last_error="connect: refused", last_error_code="connect")
        run(sync_state="error", last_error="connect: refused", last_error_code="connect")
        run(sync_state="idle", last_error=None)
        with Session(get_engine()) as s:
            events = list(s.execute(select(WebhookEvent).order_by(WebhookEvent.id)).scalars())  # type: ignore[arg-type]
            account = s.get(EmailAccount, account_id)
        assert [(e.data["previous_state"], e.data["state"]) for e in events] == [("idle", "error"), ("error", "idle")]
        assert events[0].data["error_code"] == "connect" and events[0].data["account_id"] == account_id
        assert events[0].data["user_id"] == "u1" and account is not None and account.reported_sync_state == "idle"


class TestApi:
    def test_manual_link_records_email_linked_and_patch_rechecks_the_url(self, org: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """POST /emails/{id}/links writes email.linked (source manual) in the link's transaction; a
        PATCH to a private URL is a 422 that leaves the endpoint unchanged."""
        from starlette.testclient import TestClient

        from models import Contact, Email
        from ops.orgs import issue_key
        from ops.settings import reset_settings
        from tests.harness.flow import make_account
        from web.app import create_app

        monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "127.0.0.0/8")
        reset_settings()
        account_id = make_account(org)
        with Session(get_engine()) as s:
            s.add(Contact(org_id=org, id="c9", last_name="Doe", email="jo@client.test", email_norm="jo@client.test"))
            email = Email(org_id=org, account_id=account_id, dedupe_key="d9", subject="Quote", from_email="jo@client.test",
                          from_email_norm="jo@client.test", to_emails=["alice@example.test"])
            s.add(email)
            s.commit()
            email_id = email.id
            key = issue_key(s, org)
            s.commit()
        h = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app()) as c:
            r = c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["email.linked"]}, headers=h)
            assert r.status_code == 201, r.text
            ep_id = r.json()["id"]
            r = c.post(f"/api/v1/emails/{email_id}/links", json={"entity_type": "contact", "entity_id": "c9"}, headers=h)
            assert r.status_code == 200, r.text
            assert c.post(f"/api/v1/emails/{email_id}/links", json={"entity_type": "contact", "entity_id": "c9"},
                          headers=h).status_code == 200
            r = c.patch(f"/api/v1/webhooks/{ep_id}", json={"url": "http://10.0.0.5/"}, headers=h)
            assert r.status_code == 422 and r.json()["error"]["code"] == "host_not_allowed"
            assert c.get(f"/api/v1/webhooks/{ep_id}", headers=h).json()["url"] == "http://127.0.0.1:9/hook"
        with Session(get_engine()) as s:
            events = list(s.execute(select(WebhookEvent)).scalars())
        assert len(events) == 1, "linking twice is one link, one event"
        data = events[0].data
        assert events[0].type == "email.linked" and data["source"] == "manual" and data["contact_ids"] == ["c9"]
        assert data["email_id"] == email_id and data["user_id"] == "u1" and data["subject"] == "Quote"


def test_sweep_purges_finished_deliveries_and_their_events_after_30_days(org: str, stub_broker: StubBroker) -> None:
    """Old succeeded/failed deliveries and the events left without any go; pending ones and recent ones stay."""
    from pipeline.flows import webhooks
    from pipeline.flows.events_outbox import record_event
    from pipeline.flows.webhooks import dispatch_pending, sweep_webhooks

    _endpoint(org, ["*"])
    with Session(get_engine()) as s:
        ids = [record_event(s, org, "lead.created", {"lead_id": f"l{i}"}) for i in range(3)]
        s.commit()
    dispatch_pending()
    old = utcnow() - timedelta(days=31)
    with Session(get_engine()) as s:
        s.execute(update(WebhookEvent).values(created_at=old))
        s.execute(update(WebhookDelivery).where(WebhookDelivery.event_id == ids[0]).values(status="succeeded", created_at=old))  # type: ignore[arg-type]
        s.execute(update(WebhookDelivery).where(WebhookDelivery.event_id == ids[1]).values(status="pending", created_at=old))  # type: ignore[arg-type]
        s.execute(update(WebhookDelivery).where(WebhookDelivery.event_id == ids[2]).values(status="failed"))  # type: ignore[arg-type]
        s.commit()
    webhooks._last_purge.clear()
    with Session(get_engine()) as s:
        sweep_webhooks(s, utcnow())
    with Session(get_engine()) as s:
        left = {d.event_id for d in s.execute(select(WebhookDelivery)).scalars()}
        events = {e.id for e in s.execute(select(WebhookEvent)).scalars()}
    assert left == {ids[1], ids[2]} and events == {ids[1], ids[2]}


class TestPoster:
    """The HTTP attempt against a local server: no redirects, a bounded read, the name kept in Host."""

    def _serve(self, status: int, body: bytes, headers: dict[str, str], *, length: int | None = None) -> tuple[Any, list[str]]:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                seen.append(f"{self.path} host={self.headers.get('host')}")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(length if length is not None else len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                    if length is not None and length > len(body):
                        time.sleep(20)  # the rest never comes: only a reader that stops early returns soon
                except OSError:
                    pass

            def do_GET(self) -> None:
                seen.append(f"GET {self.path}")
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, seen

    def test_redirect_is_not_followed_and_is_not_delivered(self) -> None:
        from pipeline.clients.webhook_http import Poster
        from pipeline.stages.netpolicy import parse_nets

        server, seen = self._serve(302, b"", {"location": "/elsewhere"})
        try:
            with Poster(parse_nets("127.0.0.0/8")) as p:
                out = p.post(f"http://localhost:{server.server_address[1]}/hook", b"{}", {})
        finally:
            server.shutdown()
        assert not out.ok and out.status_code == 302 and out.error == "http_302"
        assert seen == [f"/hook host=localhost:{server.server_address[1]}"], "one POST, to the name given, no GET of the Location"

    def test_a_huge_answer_is_read_only_up_to_64_kib(self) -> None:
        """The receiver promises 100 MB, sends 128 KiB and stalls: the attempt returns at once, delivered."""
        from pipeline.clients.webhook_http import MAX_READ, Poster
        from pipeline.stages.netpolicy import parse_nets

        server, _ = self._serve(200, b"x" * (2 * MAX_READ), {}, length=100 * 2**20)
        try:
            with Poster(parse_nets("127.0.0.0/8")) as p:
                out = p.post(f"http://127.0.0.1:{server.server_address[1]}/hook", b"{}", {})
        finally:
            server.shutdown()
        assert out.ok and out.status_code == 200 and out.seconds < 3
