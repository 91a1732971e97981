"""GET /api/v1/emails/{id}/tracking paged by an opaque cursor (web.tracking_page), and the recording
worker's authoritative per-token cap (pipeline.actors.tracking) — on SQLite with the StubBroker.

The PostgreSQL + RabbitMQ + uvicorn versions (5,000 hits on one pixel, 20,000 events walked) are in
tests/integration/test_tracking_throttle.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import update
from sqlmodel import Session
from starlette.testclient import TestClient

from models import Email, TrackingEvent, new_id, utcnow
from models.db import get_engine
from ops import metrics
from ops.settings import reset_settings
from tests.harness.flow import count, make_account, make_org, sent_tracked_emails
from web.app import create_app
from web.cursors import keyset_cursor, read_keyset

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


@pytest.fixture
def seeded(db: str) -> Iterator[dict[str, Any]]:
    """One sent email with 250 events: opens and clicks interleaved, three sharing each second."""
    org_id, key = make_org()
    (eid, rhash), = sent_tracked_emails(org_id, make_account(org_id), 1)
    base = utcnow() - timedelta(hours=1)
    with Session(get_engine()) as s:
        for i in range(250):
            click = i % 2 == 1
            s.add(TrackingEvent(id=new_id()[:12] + f"{(i * 7919) % 1000:012d}", intake_id=f"seed-{i}", email_id=eid,
                                kind="click" if click else "open", recipient_hash=None if click else rhash,
                                link_hash="ab" * 16 if click else None, url="https://x.example/" if click else None,
                                at=base + timedelta(seconds=i // 3), ip=f"10.0.{i // 250}.{i % 250}", user_agent=CHROME))
        s.execute(update(Email).where(Email.id == eid).values(open_count=7, click_count=3))
        s.commit()
    other_org, other_key = make_org("globex")
    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "eid": eid, "other": {"Authorization": f"Bearer {other_key}"}}


def get(st: dict[str, Any], **params: Any) -> Any:
    return st["client"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["h"], params=params)


class TestPaging:
    def test_walks_every_event_once_in_order_with_totals_on_every_page(self, seeded: dict[str, Any]) -> None:
        """limit=100 over 250 events: pages of 100, 100, 50; every event once; opens and clicks each
        chronological across pages (the stream is one, ordered by time then id, so events sharing a
        second are neither skipped nor repeated); counts and totals the same on every page."""
        st, cursor, pages, seen = seeded, None, [], []
        while True:
            r = get(st, limit=100, **({"cursor": cursor} if cursor else {}))
            assert r.status_code == 200, r.text
            body = r.json()
            pages.append(len(body["opens"]) + len(body["clicks"]))
            assert (body["open_count"], body["click_count"], body["status"]) == (7, 3, "clicked")
            assert body["events_total"] == {"opens": 125, "clicks": 125}
            seen.extend((e["at"], "open", e["ip"]) for e in body["opens"])
            seen.extend((e["at"], "click", e["ip"]) for e in body["clicks"])
            assert all("url" in e for e in body["clicks"]) and not any("url" in e for e in body["opens"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == [100, 100, 50]
        ips = [ip for _, _, ip in seen]
        assert len(ips) == len(set(ips)) == 250
        for kind in ("open", "click"):
            times = [at for at, k, _ in seen if k == kind]
            assert times == sorted(times) and len(times) == 125

    def test_default_limit_is_100(self, seeded: dict[str, Any]) -> None:
        body = get(seeded).json()
        assert len(body["opens"]) + len(body["clicks"]) == 100 and body["next_cursor"]

    def test_one_page_when_it_fits(self, seeded: dict[str, Any]) -> None:
        body = get(seeded, limit=500).json()
        assert len(body["opens"]) == 125 and len(body["clicks"]) == 125 and body["next_cursor"] is None

    @pytest.mark.parametrize("limit", ["0", "501", "-3", "ten", "1.5"])
    def test_bad_limit_is_a_422_naming_it(self, seeded: dict[str, Any], limit: str) -> None:
        r = get(seeded, limit=limit)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        assert "limit" in r.json()["error"]["message"]

    @pytest.mark.parametrize("cursor", ["!!!", "Zm9v", "MTIzOg", "x" * 200, "OTk5OTk5OTk5OTk5OTk5OTk5OmFi", "%00", "MTIzOmFiIGNk"])
    def test_bad_cursor_is_a_422_naming_it(self, seeded: dict[str, Any], cursor: str) -> None:
        """Garbage, other base64, an id with a space, a time past datetime's range: 422, never 500."""
        r = get(seeded, cursor=cursor)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "validation_error" and err["details"]["errors"][0]["field"] == "cursor"

    def test_other_orgs_and_unknown_emails_are_404(self, seeded: dict[str, Any]) -> None:
        st = seeded
        assert st["client"].get(f"/api/v1/emails/{st['eid']}/tracking", headers=st["other"]).status_code == 404
        assert st["client"].get(f"/api/v1/emails/{'0' * 24}/tracking", headers=st["h"]).status_code == 404

    def test_cursor_round_trips_to_the_microsecond(self) -> None:
        at = utcnow().replace(microsecond=123456)
        assert read_keyset(keyset_cursor(at, "0123456789abcdef01234567")) == (at, "0123456789abcdef01234567")


@pytest.fixture
def capped(db: str, stub_broker: StubBroker, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("MAILPIPE_TRACKING_TOKEN_PER_MINUTE", "5")
    reset_settings()
    org_id, _ = make_org()
    return {"pixels": sent_tracked_emails(org_id, make_account(org_id), 2)}


def hits(pixel: tuple[str, str], n: int, start: float, step: float = 0.1, tag: str = "") -> list[dict[str, Any]]:
    eid, rhash = pixel
    return [{"id": f"{tag}{eid}-{start}-{i}", "kind": "open", "email_id": eid, "token": rhash, "at": start + i * step,
             "ip": "203.0.113.9", "ua": CHROME, "method": "GET", "dnt": False} for i in range(n)]


def stored(eid: str) -> int:
    return count(TrackingEvent, TrackingEvent.email_id == eid)


class TestRecordCap:
    def test_three_replicas_cannot_multiply_the_token_limit(self, capped: dict[str, Any]) -> None:
        """Three web processes each let 10 hits of one pixel through in a second: the worker stores 5
        (MAILPIPE_TRACKING_TOKEN_PER_MINUTE) and counts 25 by="record"; another email is untouched."""
        from pipeline.actors.tracking import record_events

        pixel, other = capped["pixels"]
        dropped = metrics.TRACK_THROTTLED.labels("open", "record")
        before = dropped._value.get()
        now = time.time()
        for replica in range(3):
            record_events(hits(pixel, 10, now, tag=f"r{replica}-"))
        record_events(hits(other, 3, now))
        assert stored(pixel[0]) == 5 and stored(other[0]) == 3
        assert dropped._value.get() - before == 25

    def test_the_window_slides(self, capped: dict[str, Any]) -> None:
        """A minute after the first hits, the token may store again; spread-out opens all count."""
        from pipeline.actors.tracking import record_events

        pixel, other = capped["pixels"]
        now = time.time() - 600
        record_events(hits(pixel, 10, now))
        assert stored(pixel[0]) == 5
        record_events(hits(pixel, 10, now + 61))
        assert stored(pixel[0]) == 10
        record_events(hits(other, 8, now, step=20.0))  # one every 20 s: at most 4 within any minute
        assert stored(other[0]) == 8

    def test_a_redelivered_batch_is_not_throttled_against_itself(self, capped: dict[str, Any]) -> None:
        """The same batch twice (a replayed spool): its stored events are recognised by id, nothing doubles."""
        from pipeline.actors.tracking import record_events, settle_clicks
        from pipeline.flows.tracking_record import record

        pixel, _ = capped["pixels"]
        batch = hits(pixel, 4, time.time() - 5)
        assert record(batch) == 4  # the flow counts what was new; the actor returns nothing
        record_events(batch)
        assert record(batch) == 0
        assert stored(pixel[0]) == 4
        settle_clicks([pixel[0]])  # people's opens are counted at the settle pass
        with Session(get_engine()) as s:
            assert s.get(Email, pixel[0]).open_count == 1  # type: ignore[union-attr]  # one IP within 10 s: one open
