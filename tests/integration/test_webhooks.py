"""Webhooks against a real local HTTP receiver, PostgreSQL and RabbitMQ (issue 16: must-show 2, 4, 5;
must-show 1 with Dovecot and aiosmtpd is in test_webhooks_pipeline.py, 3 in test_webhooks_crash.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient

from tests.conftest import reset_process_state
from tests.harness.flow import make_org
from tests.harness.webhook_receiver import WebhookReceiver
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def hooks(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The API on PostgreSQL + RabbitMQ with the in-process worker; receivers on 127.0.0.1 allowed."""
    from web.app import create_app

    monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "127.0.0.0/8")
    monkeypatch.setenv("MAILPIPE_WEBHOOK_RETRY_BASE_SECONDS", "0.5")
    reset_process_state()
    org_id, key = make_org()
    receivers: list[WebhookReceiver] = []

    def receiver(**kw: Any) -> WebhookReceiver:
        r = WebhookReceiver(**kw).start()
        receivers.append(r)
        return r

    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "org_id": org_id, "receiver": receiver}
    for r in receivers:
        r.stop()


def _register(hk: dict[str, Any], url: str, events: list[str] | None = None) -> dict[str, Any]:
    r = hk["client"].post("/api/v1/webhooks", json={"url": url, "events": events or ["*"]}, headers=hk["h"])
    assert r.status_code == 201, r.text
    data = dict(r.json())
    assert data["secret"].startswith("whsec_")
    return data


def _test_event(hk: dict[str, Any], endpoint_id: str) -> str:
    r = hk["client"].post(f"/api/v1/webhooks/{endpoint_id}/test", headers=hk["h"])
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


def test_api_shape_secret_once_rotation_signs_with_both(hooks: dict[str, Any]) -> None:
    """Create shows the secret once (GET never); rotate gives a new one and both sign for 24 h; the
    test event verifies under either secret; patch and delete work; another org's key gets 404."""
    hk = hooks
    rec = hk["receiver"]()
    ep = _register(hk, rec.url, ["email.received", "lead.created"])
    assert ep["events"] == ["email.received", "lead.created"] and ep["disabled"] is False
    got = hk["client"].get(f"/api/v1/webhooks/{ep['id']}", headers=hk["h"])
    assert got.status_code == 200 and "secret" not in got.json() and ep["secret"] not in got.text
    listed = hk["client"].get("/api/v1/webhooks", headers=hk["h"]).json()["items"]
    assert [e["id"] for e in listed] == [ep["id"]] and ep["secret"] not in str(listed)
    rot = hk["client"].post(f"/api/v1/webhooks/{ep['id']}/rotate-secret", headers=hk["h"])
    assert rot.status_code == 200 and rot.json()["secret"] != ep["secret"]
    new_secret = rot.json()["secret"]
    event_id = _test_event(hk, ep["id"])
    wait_until(lambda: rec.requests, 20, what="the test event")
    req = rec.requests[0]
    assert req.headers["webhook-id"] == event_id and len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (ep["secret"], new_secret):
        payload = Webhook(secret).verify(req.body, req.headers)
        assert payload["type"] == "webhook.test" and payload["data"]["endpoint_id"] == ep["id"]
    r = hk["client"].patch(f"/api/v1/webhooks/{ep['id']}", json={"events": ["*"], "disabled": True}, headers=hk["h"])
    assert r.status_code == 200 and r.json()["events"] == ["*"] and r.json()["disabled"] is True
    assert hk["client"].patch(f"/api/v1/webhooks/{ep['id']}", json={"events": ["nope"]}, headers=hk["h"]).status_code == 422
    _, other_key = make_org("other")
    other = {"Authorization": f"Bearer {other_key}"}
    assert hk["client"].get(f"/api/v1/webhooks/{ep['id']}", headers=other).status_code == 404
    assert hk["client"].delete(f"/api/v1/webhooks/{ep['id']}", headers=other).status_code == 404
    assert hk["client"].delete(f"/api/v1/webhooks/{ep['id']}", headers=hk["h"]).status_code == 204
    assert hk["client"].get(f"/api/v1/webhooks/{ep['id']}", headers=hk["h"]).status_code == 404


def test_500_then_retried_with_the_same_webhook_id(hooks: dict[str, Any]) -> None:
    """Must-show 2: the first attempt gets a 500; the same webhook-id arrives again later (after the
    backoff), signed again with a fresh timestamp; the log shows 2 attempts and succeeded."""
    hk = hooks
    rec = hk["receiver"](answer=lambda n, wid: 500 if n == 1 else 204)
    ep = _register(hk, rec.url)
    event_id = _test_event(hk, ep["id"])
    wait_until(lambda: len(rec.requests) >= 2, 30, what="the retry")
    first, second = rec.requests[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    assert first.body == second.body
    assert second.at - first.at >= 0.3, "the retry waits for the backoff"
    Webhook(ep["secret"]).verify(second.body, second.headers)

    def settled() -> list[dict[str, Any]] | None:  # the receiver answers a moment before the run records it
        items = hk["client"].get(f"/api/v1/webhooks/{ep['id']}/deliveries", headers=hk["h"]).json()["items"]
        return items if items and items[0]["status"] != "pending" else None

    log = wait_until(settled, 10, what="the delivery recorded")
    assert len(log) == 1
    d = log[0]
    assert d["event_id"] == event_id and d["attempts"] == 2 and d["status"] == "succeeded" and d["last_status_code"] == 204
    only = hk["client"].get(f"/api/v1/webhooks/{ep['id']}/deliveries?status=failed", headers=hk["h"]).json()["items"]
    assert only == []
    # Manual retry: re-sent now, same id, a third attempt.
    r = hk["client"].post(f"/api/v1/webhooks/{ep['id']}/deliveries/{d['id']}/retry", headers=hk["h"])
    assert r.status_code == 202, r.text
    wait_until(lambda: len(rec.requests) >= 3, 20, what="the manual retry")
    assert rec.requests[2].headers["webhook-id"] == event_id
    assert hk["client"].get(f"/api/v1/webhooks/{ep['id']}/deliveries/nope/retry", headers=hk["h"]).status_code in (404, 405)
    assert hk["client"].get(f"/api/v1/webhooks/{ep['id']}/deliveries?status=bogus", headers=hk["h"]).status_code == 422


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://10.0.0.5/",
    "http://[::1]/",
    "http://localhost:{port}/hook",   # a name that resolves to 127.0.0.1
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://100.64.0.1/",
    "ftp://example.com/hook",
])
def test_registration_refuses_non_public_targets(hooks: dict[str, Any], monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Must-show 4 (registration): each → 422, nothing stored, nothing connected."""
    hk = hooks
    monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "")
    from ops.settings import reset_settings

    reset_settings()
    rec = hk["receiver"]()
    r = hk["client"].post("/api/v1/webhooks", json={"url": url.format(port=rec.port), "events": ["*"]}, headers=hk["h"])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("host_not_allowed", "invalid_url")
    if "localhost" in url:
        assert "127.0.0.1" not in r.text, "a name's addresses are not shown"
    assert hk["client"].get("/api/v1/webhooks", headers=hk["h"]).json()["items"] == []
    assert rec.connections == 0


def test_a_host_turning_private_at_delivery_time_is_not_contacted(hooks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Must-show 4 (delivery): hooks.example resolves to a public address at registration and to
    127.0.0.1 (where a receiver listens) at delivery: refused, the receiver never sees a connection,
    the delivery log says why."""
    from ops.settings import reset_settings
    from pipeline.flows import webhook_endpoints, webhooks

    hk = hooks
    monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "")
    reset_settings()
    rec = hk["receiver"]()
    answer = {"ip": "93.184.215.14"}

    def resolver(host: str, port: Any, *args: Any, **kw: Any) -> list[tuple[Any, ...]]:
        assert host == "hooks.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer["ip"], 0))]

    monkeypatch.setattr(webhook_endpoints, "RESOLVER", resolver)
    monkeypatch.setattr(webhooks, "RESOLVER", resolver)
    ep = _register(hk, f"http://hooks.example:{rec.port}/hook")
    answer["ip"] = "127.0.0.1"  # DNS rebinding: the name now points at this machine
    _test_event(hk, ep["id"])

    def refused() -> dict[str, Any] | None:
        items = hk["client"].get(f"/api/v1/webhooks/{ep['id']}/deliveries", headers=hk["h"]).json()["items"]
        return items[0] if items and items[0]["attempts"] >= 1 and items[0]["last_error"] else None

    d = wait_until(refused, 20, what="the refused attempt")
    assert d["last_error"].startswith("host_not_allowed: hooks.example resolves to a non-public address")
    assert "127.0.0.1" not in d["last_error"], "the address a name resolves to is not shown (no internal-DNS oracle)"
    assert d["status"] == "pending" and d["last_status_code"] is None
    time.sleep(0.5)
    assert rec.connections == 0 and rec.requests == []


def test_a_hanging_endpoint_does_not_delay_another(hooks: dict[str, Any]) -> None:
    """Must-show 5: endpoint A hangs (never answers); endpoint B, triggered right after, gets its
    event within 2 s while A's attempt is still open; A's attempt is cut off by the 15 s limit."""
    hk = hooks
    slow = hk["receiver"](hang=True)
    fast = hk["receiver"]()
    a = _register(hk, slow.url)
    b = _register(hk, fast.url)
    _test_event(hk, a["id"])
    wait_until(lambda: slow.connections >= 1, 20, what="A's attempt to start")
    started = time.monotonic()
    _test_event(hk, b["id"])
    wait_until(lambda: fast.requests, 10, interval=0.02, what="B's delivery")
    took = time.monotonic() - started
    assert took < 2.0, f"B waited {took:.1f} s behind A"
    assert slow.requests == [], "A is still hanging"

    def timed_out() -> dict[str, Any] | None:
        items = hk["client"].get(f"/api/v1/webhooks/{a['id']}/deliveries", headers=hk["h"]).json()["items"]
        return items[0] if items and (items[0]["last_error"] or "").startswith("timeout") else None

    d = wait_until(timed_out, 25, what="A's attempt cut off")
    assert d["attempts"] >= 1 and d["last_status_code"] is None
