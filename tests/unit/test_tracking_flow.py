"""Pixel and click endpoints → intake → ``tracking.record`` → events, counts, notifications (fakes + StubBroker).

The RabbitMQ-outage version (5,000 hits, nothing lost or doubled) is in
tests/integration/test_tracking_outage.py.
"""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, Notification, Organization, TrackingEvent, utcnow
from models.db import get_engine
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, count, drain, make_account, make_org, seed_crm
from web.app import create_app
from web.intake import reset_intake

HTML = ('<html><body><p>Hi Ada,</p><p><a href="https://engine.example/demo">Schedule Demo</a> '
        '<a href="https://engine.example/pricing?plan=pro&amp;x=1">Pricing</a></p></body></html>')
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
GOOGLE_PROXY_UA = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("MAILPIPE_TRACKING_OPEN_DELAY_SECONDS", "0.000001")
    from ops.settings import reset_settings

    reset_settings()
    use_imap_connector(fake_connect(FakeImapServer("alice@example.test", "alicepass")))
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    with TestClient(create_app()) as client:
        h = {"Authorization": f"Bearer {key}"}
        r = client.post("/api/v1/emails/send", headers=h, json={
            "account_id": account_id, "to": [f"Ada Lovelace <{CRM['contact'][1]}>"], "subject": "Proposal Follow-Up",
            "body_html": HTML})
        eid = r.json()["id"]
        drain(stub_broker, stub_worker)
        msg = email.message_from_bytes(smtp.sends[0][3], policy=policy.default)
        html = msg.get_body(("html",)).get_content()
        pixel = re.search(r'src="http://127\.0\.0\.1:8000(/track/open/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        clicks = [m.replace("&amp;", "&") for m in re.findall(r'href="http://127\.0\.0\.1:8000(/track/click/[^"]+)"', html)]
        with Session(get_engine()) as s:  # as if sent a minute ago, so opens are not "too soon"
            s.execute(update(Email).where(Email.id == eid).values(sent_at=utcnow() - timedelta(minutes=1)))
            s.commit()
        yield {"client": client, "h": h, "eid": eid, "pixel": pixel, "clicks": clicks, "broker": stub_broker, "smtp": smtp,
               "worker": stub_worker, "org_id": org_id}


def as_if_from(monkeypatch: pytest.MonkeyPatch, ip: str) -> None:
    """Make every tracking request come from ip (TestClient's peer is not an address)."""
    import web.pixel
    from web.routes import tracking as routes

    monkeypatch.setattr(web.pixel, "client_ip_from", lambda client, xff: ip)
    monkeypatch.setattr(routes, "client_ip_from", lambda client, xff: ip)


def flush(env: dict[str, Any]) -> None:
    """Hand everything the intake buffered to the broker, then let the worker record it."""
    reset_intake()
    drain(env["broker"], env["worker"])


def tracking(env: dict[str, Any]) -> dict[str, Any]:
    r = env["client"].get(f"/api/v1/emails/{env['eid']}/tracking", headers=env["h"])
    assert r.status_code == 200, r.text
    return dict(r.json())


class TestPixel:
    def test_browser_open_is_recorded_counted_and_notified(self, env: dict[str, Any]) -> None:
        """A real open: 43-byte GIF with no-store headers; one event with the UA; count, first open, notification."""
        r = env["client"].get(env["pixel"], headers={"User-Agent": CHROME})
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and len(r.content) == 43
        assert r.headers["content-length"] == "43" and "no-store" in r.headers["cache-control"]
        assert r.headers["pragma"] == "no-cache" and r.headers["x-robots-tag"] == "noindex"
        flush(env)
        t = tracking(env)
        assert t["open_count"] == 1 and t["status"] == "opened" and t["first_open_at"] is not None
        assert t["first_open_after_send_s"] is not None and t["first_open_after_send_s"] > 0
        (o,) = t["opens"]
        assert o["user_agent"] == CHROME and o["machine"] is False and o["recipient_email"] == CRM["contact"][1]
        with Session(get_engine()) as s:
            n = s.execute(select(Notification).where(Notification.kind == "email.opened")).scalar_one()
        assert n.title == "Ada Lovelace opened your email 'Proposal Follow-Up'" and n.user_id == "u1"

    @pytest.mark.parametrize("path", ["/track/open/{eid}/00112233445566778899aabbccddeeff", "/track/open/0000000000000000deadbeef/abc12345",
                                      "/track/open/{eid}/not-hex", "/track/open/x/y"])
    def test_forged_or_unknown_ids_get_the_gif_and_record_nothing(self, env: dict[str, Any], path: str) -> None:
        r = env["client"].get(path.format(eid=env["eid"]), headers={"User-Agent": CHROME})
        assert r.status_code == 200 and len(r.content) == 43
        flush(env)
        assert count(TrackingEvent) == 0

    def test_head_and_prefetch_are_answered_not_counted(self, env: dict[str, Any]) -> None:
        c = env["client"]
        assert c.head(env["pixel"]).status_code == 200
        assert c.get(env["pixel"], headers={"Sec-Purpose": "prefetch;prerender"}).status_code == 200
        assert c.get(env["pixel"], headers={"Purpose": "prefetch"}).status_code == 200
        flush(env)
        assert count(TrackingEvent) == 0

    def test_machine_opens_are_flagged_not_notified(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """Apple MPP (Apple range + generic UA) is flagged, not counted; Gmail's proxy is flagged but counted; neither notifies."""
        as_if_from(monkeypatch, "17.58.1.2")
        env["client"].get(env["pixel"], headers={"User-Agent": "Mozilla/5.0"})
        flush(env)
        (o,) = tracking(env)["opens"]
        assert o["machine"] is True and o["reason"] == "apple_mpp" and tracking(env)["open_count"] == 0
        assert count(Notification, Notification.kind == "email.opened") == 0
        as_if_from(monkeypatch, "66.102.8.1")
        env["client"].get(env["pixel"], headers={"User-Agent": GOOGLE_PROXY_UA})
        flush(env)
        opens = tracking(env)["opens"]
        assert opens[1]["machine"] is True and opens[1]["reason"] == "gmail_proxy" and tracking(env)["open_count"] == 1
        assert count(Notification, Notification.kind == "email.opened") == 0

    def test_proxy_opens_notify_when_the_operator_says_so(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_TRACKING_NOTIFY_PROXY_OPENS", "true")
        reset_settings()
        as_if_from(monkeypatch, "66.102.8.1")
        env["client"].get(env["pixel"], headers={"User-Agent": GOOGLE_PROXY_UA})
        flush(env)
        assert tracking(env)["open_count"] == 1 and count(Notification, Notification.kind == "email.opened") == 1

    def test_replays_from_one_ip_collapse(self, env: dict[str, Any]) -> None:
        for _ in range(3):
            env["client"].get(env["pixel"], headers={"User-Agent": CHROME})
        flush(env)
        t = tracking(env)
        assert len(t["opens"]) == 3 and t["open_count"] == 1 and sum(o["counted"] for o in t["opens"]) == 1

    def test_dnt_honoured_when_the_org_says_so(self, env: dict[str, Any]) -> None:
        """DNT: 1 or Sec-GPC: 1 drop opens for an org with honor_dnt; clicks are still recorded."""
        r = env["client"].patch("/api/v1/org", headers=env["h"], json={"honor_dnt": True})
        assert r.status_code == 200 and r.json()["honor_dnt"] is True
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME, "DNT": "1"})
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME, "Sec-GPC": "1"})
        env["client"].get(env["clicks"][0], headers={"User-Agent": CHROME, "DNT": "1"}, follow_redirects=False)
        flush(env)
        t = tracking(env)
        assert t["opens"] == [] and len(t["clicks"]) == 1

    def test_anonymized_ips(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        with Session(get_engine()) as s:
            s.execute(update(Organization).values(anonymize_ip=True))
            s.commit()
        as_if_from(monkeypatch, "203.0.113.77")
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME})
        flush(env)
        assert tracking(env)["opens"][0]["ip"] == "203.0.113.0"


class TestClick:
    def test_redirects_to_the_stored_url_and_records(self, env: dict[str, Any]) -> None:
        r = env["client"].get(env["clicks"][0], headers={"User-Agent": CHROME}, follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == "https://engine.example/demo"
        time.sleep(1.2)  # a person reads before clicking the next link (faster is a scanner's burst)
        r2 = env["client"].get(env["clicks"][1], headers={"User-Agent": CHROME}, follow_redirects=False)
        assert r2.headers["location"] == "https://engine.example/pricing?plan=pro&x=1"
        flush(env)
        t = tracking(env)
        assert t["click_count"] == 2 and [c["url"] for c in t["clicks"]] == ["https://engine.example/demo",
                                                                              "https://engine.example/pricing?plan=pro&x=1"]
        with Session(get_engine()) as s:
            titles = sorted(n.title for n in s.execute(select(Notification).where(Notification.kind == "email.clicked")).scalars())
        assert titles == ["Ada Lovelace clicked 'Pricing'", "Ada Lovelace clicked 'Schedule Demo'"]

    @pytest.mark.parametrize("suffix", ["?next=https://evil.example/", "?url=https%3A%2F%2Fevil.example", "?a=1&u=https://evil.example",
                                        "#https://evil.example"])
    def test_query_parameters_are_never_appended(self, env: dict[str, Any], suffix: str) -> None:
        r = env["client"].get(env["clicks"][0] + suffix, follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == "https://engine.example/demo"

    @pytest.mark.parametrize("path", [
        "/track/click/{eid}/00112233445566778899aabbccddeeff",
        "/track/click/{eid}/https%3A%2F%2Fevil.example",
        "/track/click/{eid}/..%2F..%2Fhttps:%2F%2Fevil.example",
        "/track/click/0000000000000000deadbeef/{hash}",
        "/track/click/{eid}/{hash}%2Fhttps:%2F%2Fevil.example",
    ])
    def test_forged_links_are_404_never_a_redirect(self, env: dict[str, Any], path: str) -> None:
        lhash = env["clicks"][0].rsplit("/", 1)[1]
        r = env["client"].get(path.format(eid=env["eid"], hash=lhash), follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers

    def test_a_burst_over_every_link_is_a_scanner(self, env: dict[str, Any]) -> None:
        """Five links of one email clicked within a second: all flagged link_burst, none counted or notified."""
        c = env["client"]
        links = "".join(f'<a href="https://engine.example/p{i}">Part {i}</a> ' for i in range(5))
        r = c.post("/api/v1/emails/send", headers=env["h"], json={
            "account_id": c.get(f"/api/v1/emails/{env['eid']}", headers=env["h"]).json()["account_id"],
            "to": [CRM["contact"][1]], "subject": "Five parts", "body_html": f"<html><body>{links}</body></html>"})
        eid = r.json()["id"]
        drain(env["broker"], env["worker"])
        html = email.message_from_bytes(env["smtp"].sends[-1][3], policy=policy.default).get_body(("html",)).get_content()
        paths = re.findall(r'href="http://127\.0\.0\.1:8000(/track/click/[^"]+)"', html)
        assert len(paths) == 5
        with Session(get_engine()) as s:
            s.execute(update(Email).where(Email.id == eid).values(sent_at=utcnow() - timedelta(minutes=1)))
            s.commit()
        for p in paths:
            assert c.get(p, headers={"User-Agent": CHROME}, follow_redirects=False).status_code == 302
        flush(env)
        t = c.get(f"/api/v1/emails/{eid}/tracking", headers=env["h"]).json()
        assert [(x["machine"], x["reason"]) for x in t["clicks"]] == [(True, "link_burst")] * 5 and t["click_count"] == 0
        assert count(Notification, Notification.kind == "email.clicked") == 0

    def test_head_click_is_a_scanner(self, env: dict[str, Any]) -> None:
        r = env["client"].head(env["clicks"][0], follow_redirects=False)
        assert r.status_code == 302
        flush(env)
        (c,) = tracking(env)["clicks"]
        assert c["machine"] is True and c["reason"] == "head_request" and tracking(env)["click_count"] == 0


class TestClientIp:
    def test_forwarded_for_only_through_trusted_proxies(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """X-Forwarded-For is read from the right, past trusted proxies, only when the peer is one."""
        from starlette.requests import Request

        from ops.settings import reset_settings
        from web.routes.tracking import client_ip

        def req(peer: str, xff: str) -> Request:
            return Request({"type": "http", "client": (peer, 1234), "headers": [(b"x-forwarded-for", xff.encode())]})

        assert client_ip(req("198.51.100.9", "1.2.3.4")) == "198.51.100.9"  # no trusted proxies configured
        monkeypatch.setenv("MAILPIPE_TRUSTED_PROXIES", "10.0.0.0/8")
        reset_settings()
        assert client_ip(req("10.1.2.3", "6.6.6.6, 1.2.3.4, 10.9.9.9")) == "1.2.3.4"
        assert client_ip(req("198.51.100.9", "1.2.3.4")) == "198.51.100.9"
        assert client_ip(req("10.1.2.3", "not-an-ip")) == "10.1.2.3"


class TestRealtime:
    def test_token_and_websocket_push(self, env: dict[str, Any]) -> None:
        """A browser with a short-lived token hears about the open and the click as they are recorded."""
        c = env["client"]
        r = c.post("/api/v1/notifications/token", headers=env["h"], json={"user_id": "u1"})
        assert r.status_code == 200 and r.json()["expires_in"] == 300
        token = r.json()["token"]
        with c.websocket_connect(f"/api/v1/notifications/ws?token={token}") as ws:
            assert ws.receive_json() == {"type": "hello", "user_id": "u1"}
            c.get(env["pixel"], headers={"User-Agent": CHROME})
            c.get(env["clicks"][0], headers={"User-Agent": CHROME}, follow_redirects=False)
            flush(env)
            first, second = ws.receive_json(), ws.receive_json()
        assert {first["type"], second["type"]} == {"email.opened", "email.clicked"}
        opened = first if first["type"] == "email.opened" else second
        assert opened["email_id"] == env["eid"] and opened["title"].startswith("Ada Lovelace opened")

    def test_bad_or_expired_tokens_are_refused(self, env: dict[str, Any]) -> None:
        from starlette.websockets import WebSocketDisconnect

        from web.routes.notifications import check_token, issue_token

        good = issue_token(env["org_id"], "u1")
        assert check_token(good) == (env["org_id"], "u1")
        assert check_token(issue_token(env["org_id"], "u1", now=1_000_000.0)) is None  # expired long ago
        forged = good[:-2] + ("11" if good.endswith("00") else "00")  # never the good token by chance
        assert check_token(forged) is None and check_token("nonsense") is None
        for bad in ("nonsense", forged):
            with pytest.raises(WebSocketDisconnect) as info:
                with env["client"].websocket_connect(f"/api/v1/notifications/ws?token={bad}") as ws:
                    ws.receive_json()
            assert info.value.code == 4401


class TestEmailNotifications:
    def test_a_user_who_asked_gets_opens_by_email(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """notify_by_email: the open also arrives as an email from the service address (once)."""
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_NOTIFY_SMTP_URL", "smtp://notify.example.test:2525?from=notifications@mailpipe.example&security=none")
        reset_settings()
        r = env["client"].put("/api/v1/users/u1", headers=env["h"],
                              json={"name": "Alice Seller", "email": "alice@example.test", "notify_by_email": True})
        assert r.status_code == 200 and r.json()["notify_by_email"] is True
        before = len(env["smtp"].sends)
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME})
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME + " again"})  # a second open: no second email
        flush(env)
        mails = env["smtp"].sends[before:]
        assert [(host, sender, rcpts) for host, sender, rcpts, _ in mails] == [
            ("notify.example.test", "notifications@mailpipe.example", ("alice@example.test",))]
        msg = email.message_from_bytes(mails[0][3], policy=policy.default)
        assert msg["Subject"] == "Ada Lovelace opened your email 'Proposal Follow-Up'"
        with Session(get_engine()) as s:
            n = s.execute(select(Notification).where(Notification.kind == "email.opened")).scalar_one()
        assert n.email_state == "sent" and n.emailed_at is not None

    def test_without_the_setting_no_email(self, env: dict[str, Any]) -> None:
        before = len(env["smtp"].sends)
        env["client"].get(env["pixel"], headers={"User-Agent": CHROME})
        flush(env)
        assert len(env["smtp"].sends) == before
