"""The pixel under a RabbitMQ outage (issue: tracking, must-show 3): every hit answered at once, and
after the broker is back exactly as many events are recorded as hits were made."""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from models import Email, TrackingEvent
from models.db import get_engine
from ops import metrics
from tests.conftest import reset_process_state
from tests.harness.flow import count, make_account, make_org, sent_tracked_emails
from tests.harness.ports import free_port
from tests.harness.services import ensure_rabbitmq
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

HITS = 5000
OUTAGE_S = 20.0


def _rabbit(action: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", action], check=True, capture_output=True, timeout=120)


def _serve(port: int) -> Any:
    import uvicorn

    from web.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, what="uvicorn")
    return server, thread


def test_5000_pixel_hits_through_a_20_second_broker_outage(live: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPIPE_TRUSTED_PROXIES", "127.0.0.1/32")  # the load generator plays a proxy: one IP per reader
    # 500 hits per pixel: durability here, throttling in test_tracking_throttle.py
    monkeypatch.setenv("MAILPIPE_TRACKING_TOKEN_PER_MINUTE", "0")
    reset_process_state()
    org_id, _ = make_org()
    account_id = make_account(org_id)
    pixels = sent_tracked_emails(org_id, account_id, 10)
    port = free_port("127.0.0.1")
    server, thread = _serve(port)
    spooled_before = metrics.TRACK_INTAKE.labels("spooled")._value.get()
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def hit(i: int, client: httpx.Client) -> None:
        eid, rhash = pixels[i % len(pixels)]
        t0 = time.perf_counter()
        r = client.get(f"/track/open/{eid}/{rhash}", headers={
            "User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                          "Version/17.5 Safari/605.1.15",
            "X-Forwarded-For": f"198.51.{i // 250}.{i % 250}"})
        with lock:
            latencies.append(time.perf_counter() - t0)
            statuses.append(r.status_code)

    stopped_at = time.monotonic()
    _rabbit("stop_app")
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) for _ in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            # Paced over most of the outage, so hits keep arriving while the broker is away.
            for i in range(HITS):
                target = stopped_at + (OUTAGE_S * 0.8) * i / HITS
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(hit, i, clients[i % 8])
        for c in clients:
            c.close()
        assert time.monotonic() - stopped_at < OUTAGE_S + 5, "the load did not fit in the outage"
        assert count(TrackingEvent) == 0, "nothing can be recorded while the broker is down"
        remaining = OUTAGE_S - (time.monotonic() - stopped_at)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        _rabbit("start_app")
        ensure_rabbitmq()
    assert statuses == [200] * HITS
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies))]
    assert p99 < 0.25 and latencies[-1] < 2.0, f"pixel slowed down during the outage: p99 {p99:.3f}s max {latencies[-1]:.3f}s"
    assert metrics.TRACK_INTAKE.labels("spooled")._value.get() - spooled_before >= HITS * 0.9, "hits went to the spool"
    try:
        wait_until(lambda: count(TrackingEvent) >= HITS, 180, 1, what=f"{HITS} events recorded after the outage")
        time.sleep(3)  # anything doubled would show up now
        assert count(TrackingEvent) == HITS
        with Session(get_engine()) as s:
            from sqlalchemy import func, select

            assert s.execute(select(func.count(func.distinct(TrackingEvent.intake_id)))).scalar_one() == HITS
            assert s.execute(select(func.sum(Email.open_count))).scalar_one() == count(
                TrackingEvent, TrackingEvent.machine.is_(False), TrackingEvent.counted.is_(True))  # type: ignore[attr-defined]
    finally:
        server.should_exit = True
        thread.join(10)
