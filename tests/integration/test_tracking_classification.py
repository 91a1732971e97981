"""Machine traffic and privacy on the real stack (issue: tracking, must-show 4 and the DNT half of 5).

uvicorn serving the tracking app, PostgreSQL, RabbitMQ (the intake batches, the click-settling
delay and the fanout exchange the web process listens on), an in-process worker, and a websocket
client subscribed as the sender. Hits come from "readers' networks" through ``X-Forwarded-For``,
trusted from 127.0.0.1 only, as behind a real load balancer. The SMTP side is the fake transport
(sending has its own integration tests, including the opted-out user in test_send_dovecot.py).
"""

from __future__ import annotations

import email
import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient
from websockets.sync.client import ClientConnection, connect

from models import Email, Notification, TrackingEvent, utcnow
from models.db import get_engine
from pipeline.flows.connections import use_smtp_transport
from tests.conftest import reset_process_state
from tests.harness.asgi_server import AsgiServer
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import CRM, count, make_account, make_org, seed_crm
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
LINKS = ["demo", "pricing", "deck", "case-study", "contact"]


@pytest.fixture
def stack(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """One tracked email with five links to Ada, sent a minute ago; the app under uvicorn; a socket as u1."""
    from web.app import create_app

    port = free_port("127.0.0.1")
    monkeypatch.setenv("MAILPIPE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MAILPIPE_TRUSTED_PROXIES", "127.0.0.1/32")
    reset_process_state()
    smtp = FakeSmtpTransport()
    use_smtp_transport(smtp)
    org_id, key = make_org()
    seed_crm(org_id)
    account_id = make_account(org_id)
    h = {"Authorization": f"Bearer {key}"}
    body = "".join(f'<p><a href="https://engine.example/{p}">{p.title()}</a></p>' for p in LINKS)
    api = TestClient(create_app())
    api.__enter__()
    server = AsgiServer(create_app(), "mailpipe under uvicorn", port=port, lifespan="on")
    try:
        r = api.post("/api/v1/emails/send", headers=h, json={
            "account_id": account_id, "to": [f"Ada Lovelace <{CRM['contact'][1]}>"], "subject": "Proposal Follow-Up",
            "body_html": f"<html><body><p>Hi Ada,</p>{body}</body></html>"})
        assert r.status_code == 202, r.text
        eid = r.json()["id"]
        wait_until(lambda: len(smtp.sends) == 1, 30, what="the email sent")

        def recorded_sent() -> bool:  # the send run writes sent_at when it finishes, and the ingest chain rewrites it
            with Session(get_engine()) as s:  # from the Date header when it parses the copy: wait for both
                row = s.get(Email, eid)
                return row is not None and row.status == "sent" and row.pipeline_state == "done"

        wait_until(recorded_sent, 30, what="the send recorded")
        with Session(get_engine()) as s:  # sent a minute ago: nothing below is "seconds after delivery"
            s.execute(update(Email).where(Email.id == eid).values(sent_at=utcnow() - timedelta(minutes=1)))
            s.commit()
        html = email.message_from_bytes(smtp.sends[0][3], policy=policy.default).get_body(("html",)).get_content()
        pixel = re.search(r'src="http://127\.0\.0\.1:\d+(/track/open/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        clicks = [m.replace("&amp;", "&") for m in re.findall(r'href="http://127\.0\.0\.1:\d+(/track/click/[^"]+)"', html)]
        assert len(clicks) == 5
        server.start()
        token = api.post("/api/v1/notifications/token", headers=h, json={"user_id": "u1"}).json()["token"]
        with connect(f"ws://127.0.0.1:{port}/api/v1/notifications/ws?token={token}") as socket, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert json.loads(socket.recv(timeout=5))["type"] == "hello"
            yield {"api": api, "h": h, "eid": eid, "pixel": pixel, "clicks": clicks, "http": http, "socket": socket}
    finally:
        server.stop()
        api.__exit__(None, None, None)


def hit(st: dict[str, Any], path: str, ip: str, ua: str, **headers: str) -> None:
    r = st["http"].get(path, headers={"User-Agent": ua, "X-Forwarded-For": ip, **headers})
    assert r.status_code == (302 if "/click/" in path else 200), (path, r.status_code)


def events(eid: str) -> list[TrackingEvent]:
    with Session(get_engine()) as s:
        return list(s.execute(select(TrackingEvent).where(TrackingEvent.email_id == eid)
                              .order_by(TrackingEvent.at, TrackingEvent.id)).scalars())


def pushes(socket: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every message the socket receives within ``seconds``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(json.loads(socket.recv(timeout=left)))
        except TimeoutError:
            break
    return out


def test_machine_traffic_is_flagged_and_silent_a_browser_open_notifies(stack: dict[str, Any]) -> None:
    """Must-show 4: Gmail's proxy, Apple MPP and a five-links-in-a-second burst are flagged machine
    with their reasons and notify nobody; a normal browser open then notifies at once."""
    st = stack
    hit(st, st["pixel"], "66.102.8.20", GMAIL)
    hit(st, st["pixel"], "17.58.63.9", "Mozilla/5.0")  # Apple's range, the bare UA MPP sends
    started = time.monotonic()
    for path in st["clicks"]:  # a gateway following every link, with a browser's UA
        hit(st, path, "198.51.100.7", CHROME)
    assert time.monotonic() - started < 1.0, "the burst must fit in one second"

    def settled() -> bool:
        evs = events(st["eid"])
        return len(evs) == 7 and all(e.settled for e in evs)

    wait_until(settled, 30, what="2 opens and 5 settled clicks")
    evs = events(st["eid"])
    assert all(e.machine for e in evs), [(e.kind, e.reason) for e in evs]
    assert sorted(e.reason or "" for e in evs if e.kind == "open") == ["apple_mpp", "gmail_proxy"]
    assert [e.reason for e in evs if e.kind == "click"] == ["link_burst"] * 5
    assert {e.ip for e in evs} == {"66.102.8.20", "17.58.63.9", "198.51.100.7"}, "client IPs read through the trusted proxy"
    silent = pushes(st["socket"], 1.5)
    assert [p for p in silent if p["type"] in ("email.opened", "email.clicked")] == []
    assert count(Notification) == 0
    t = st["api"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["h"]).json()
    assert t["open_count"] == 1 and t["click_count"] == 0, "Gmail's proxied open counts; MPP and the scanner do not"

    opened = time.monotonic()
    hit(st, st["pixel"], "203.0.113.9", CHROME)
    push = wait_until(lambda: next((p for p in pushes(st["socket"], 0.2) if p["type"] == "email.opened"), None), 5,
                      interval=0, what="the open pushed")
    assert time.monotonic() - opened < 2.0
    assert push["email_id"] == st["eid"] and push["title"] == "Ada Lovelace opened your email 'Proposal Follow-Up'"
    assert count(Notification, Notification.kind == "email.opened") == 1 and count(Notification) == 1
    last = events(st["eid"])[-1]
    assert last.machine is False and last.reason is None and last.ip == "203.0.113.9"


def test_dnt_and_gpc_opens_dropped_when_the_org_honours_them(stack: dict[str, Any]) -> None:
    """Must-show 5 (first half): with honor_dnt off a DNT open is recorded; once the org turns it on,
    DNT: 1 and Sec-GPC: 1 opens record nothing while an explicit click with DNT still does."""
    from ops import metrics

    st = stack
    dropped = metrics.TRACK_RECORDED.labels("open", "dnt")
    hit(st, st["pixel"], "203.0.113.20", CHROME, DNT="1")
    wait_until(lambda: len(events(st["eid"])) == 1, 30, what="the DNT open recorded while the org ignores DNT")
    r = st["api"].patch("/api/v1/org", headers=st["h"], json={"honor_dnt": True})
    assert r.status_code == 200 and r.json()["honor_dnt"] is True
    before = dropped._value.get()
    hit(st, st["pixel"], "203.0.113.21", CHROME, DNT="1")
    hit(st, st["pixel"], "203.0.113.22", CHROME, **{"Sec-GPC": "1"})
    hit(st, st["clicks"][0], "203.0.113.23", CHROME, DNT="1")
    wait_until(lambda: dropped._value.get() - before == 2, 30, what="two opens dropped for DNT/GPC")
    wait_until(lambda: any(e.kind == "click" and e.settled for e in events(st["eid"])), 30, what="the click settled")
    evs = events(st["eid"])
    assert [(e.kind, e.ip) for e in evs] == [("open", "203.0.113.20"), ("click", "203.0.113.23")]
    assert evs[1].machine is False and evs[1].url == "https://engine.example/demo"
    t = st["api"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["h"]).json()
    assert t["open_count"] == 1 and t["click_count"] == 1


SAFELINKS = "Mozilla/5.0 (Windows NT 6.1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/57.0.2987.133 Safari/537.36"  # gophish#973
GMAIL_PREFETCH = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 "
                  "Safari/537.36 Edge/12.246 Mozilla/5.0")  # mautic#10245
WHATSAPP = "WhatsApp/2.17.190 A"  # goaccess#808
OUTLOOK_16 = "Microsoft Office/16.0 (Microsoft Outlook 16.0.8241; Pro)"  # browscap#1634


def test_issue_22_machine_classes_are_flagged_and_a_cloud_desktop_reader_counts(stack: dict[str, Any]) -> None:
    """Issue 22 on the real stack: Safe Links from Exchange Online Protection's network, an unlisted
    gateway's pixel beside its two-link scan, Gmail's prefetch beside the proxy's open, a WhatsApp
    preview and a cloud scanner are flagged with their reasons and notify nobody; the proxy open is
    counted (must-show 2); then a person on an Azure virtual desktop opens and clicks, and both count."""
    st = stack
    with Session(get_engine()) as s:  # sent two minutes ago: the cloud rule's window is still open
        s.execute(update(Email).where(Email.id == st["eid"]).values(sent_at=utcnow() - timedelta(minutes=2)))
        s.commit()
    apart = 1.3  # the groups more than a second apart, or three links within a second would be one burst
    hit(st, st["clicks"][0], "40.107.218.12", SAFELINKS)  # microsoft365.txt (EOP)
    time.sleep(apart)
    hit(st, st["pixel"], "192.0.2.201", CHROME)  # a gateway in no list: pixel, then two links within a second
    hit(st, st["clicks"][1], "192.0.2.201", CHROME)
    hit(st, st["clicks"][2], "192.0.2.201", CHROME)
    time.sleep(apart)
    hit(st, st["pixel"], "66.249.84.10", GMAIL_PREFETCH)  # google.txt
    hit(st, st["pixel"], "66.102.8.20", GMAIL)
    hit(st, st["clicks"][3], "31.13.66.1", WHATSAPP)
    time.sleep(apart)
    hit(st, st["clicks"][4], "52.20.1.2", CHROME)  # aws.txt, never opened

    def settled(n: int) -> bool:
        evs = events(st["eid"])
        return len(evs) == n and all(e.settled for e in evs)

    wait_until(lambda: settled(8), 30, what="eight hits settled")
    reasons = sorted((e.kind, e.ip or "", e.reason or "") for e in events(st["eid"]))
    assert reasons == [("click", "192.0.2.201", "link_burst"), ("click", "192.0.2.201", "link_burst"),
                       ("click", "31.13.66.1", "link_preview"), ("click", "40.107.218.12", "security_gateway"),
                       ("click", "52.20.1.2", "cloud_scanner"), ("open", "192.0.2.201", "security_gateway"),
                       ("open", "66.102.8.20", "gmail_proxy"), ("open", "66.249.84.10", "gmail_prefetch")], reasons
    assert all(e.machine for e in events(st["eid"]))
    assert [p for p in pushes(st["socket"], 1.5) if p["type"] in ("email.opened", "email.clicked")] == []
    t = st["api"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["h"]).json()
    assert t["open_count"] == 1 and t["click_count"] == 0, "only the proxy's open counts"

    hit(st, st["pixel"], "20.50.1.10", OUTLOOK_16)  # azure.txt: a Windows 365 desktop
    time.sleep(2.5)  # the person reads before clicking
    hit(st, st["clicks"][0], "20.50.1.10", CHROME)
    wait_until(lambda: settled(10), 30, what="the desktop reader's open and click settled")
    last = events(st["eid"])[-2:]
    assert [(e.kind, e.machine) for e in last] == [("open", False), ("click", False)]
    t = st["api"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["h"]).json()
    assert t["open_count"] == 2 and t["click_count"] == 1
    kinds = {p["type"] for p in pushes(st["socket"], 3) if p["type"] in ("email.opened", "email.clicked")}
    assert kinds == {"email.clicked", "email.opened"}, "the person's open and click are pushed"
    assert count(Notification, Notification.kind == "email.opened") == 1 and count(Notification, Notification.kind == "email.clicked") == 1
