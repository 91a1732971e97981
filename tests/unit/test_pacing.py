"""ops.pacing and the embedded broker's paced, capped tracking queue (``serve``: recording yields to the app)."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from ops.pacing import Pacer, RequestMeter
from pipeline.broker import BacklogFull, MemoryBroker
from tests.harness.wait import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_is_busy_above_its_rate() -> None:
    meter = RequestMeter(busy_per_second=100, window=0.5)
    assert not meter.busy(now=time.monotonic() + 1)  # nothing served
    start = time.monotonic() + 2
    meter.busy(now=start)
    for _ in range(80):
        meter.tick()
    assert meter.busy(now=start + 0.5), "160 requests/s"
    for _ in range(10):
        meter.tick()
    assert not meter.busy(now=start + 1.0), "20 requests/s"
    assert not meter.busy(now=start + 1.2), "within the window the last verdict stands"


def test_the_pacer_holds_the_next_message_only_while_busy() -> None:
    clock, busy = Clock(), {"on": True}
    pacer = Pacer(0.2, lambda: busy["on"], clock)
    assert pacer.wait() == 0
    pacer.done(0.05)  # a 50 ms batch at a 20 % share: the next one 200 ms later
    assert pacer.wait() == pytest.approx(0.2)
    clock.now += 0.15
    assert pacer.wait() == pytest.approx(0.05)
    busy["on"] = False
    assert pacer.wait() == 0, "an idle app leaves the recorder at full speed"
    busy["on"] = True
    clock.now += 0.06
    assert pacer.wait() == 0
    assert Pacer(1.0, lambda: True, clock).wait() == 0
    with pytest.raises(ValueError):
        Pacer(0, lambda: True)


@pytest.fixture()
def broker() -> Any:
    b = MemoryBroker()
    b.declare_queue("tracking")
    b.declare_queue("other")
    yield b
    b.close()


def test_a_paced_queue_yields_while_busy_and_other_queues_do_not_wait(broker: MemoryBroker) -> None:
    """Tracking messages of 50 ms at a 20 % share while busy: ~250 ms apart; another queue's messages
    go meanwhile. When the app goes idle the rest run back to back."""
    busy = {"on": True}
    broker.pace("tracking", Pacer(0.2, lambda: busy["on"]))
    starts: list[float] = []
    others: list[float] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="tracking", actor_name="t_record")
    def record(n: int) -> None:
        with lock:
            starts.append(time.monotonic())
        time.sleep(0.05)

    @dramatiq.actor(broker=broker, queue_name="other", actor_name="o_work")
    def other(n: int) -> None:
        with lock:
            others.append(time.monotonic())

    for n in range(4):
        record.send(n)
    worker = Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: len(starts) >= 3, 10, what="three paced batches")
        for n in range(5):
            other.send(n)
        wait_until(lambda: len(others) == 5, 2, what="the other queue served at once")
        gaps = [b - a for a, b in zip(starts, starts[1:3], strict=False)]
        assert all(g >= 0.2 for g in gaps), gaps
        busy["on"] = False
        for n in range(4, 10):
            record.send(n)
        wait_until(lambda: len(starts) == 10, 5, what="the rest")
        assert starts[-1] - starts[-6] < 0.2 * 5, "idle: no pacing"
    finally:
        worker.stop()


def test_a_capped_actor_is_refused_when_its_queue_is_full(broker: MemoryBroker) -> None:
    broker.cap("t_cap", "tracking", 3)

    @dramatiq.actor(broker=broker, queue_name="tracking", actor_name="t_cap")
    def capped(n: int) -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="tracking", actor_name="t_free")
    def free(n: int) -> None:
        pass

    for n in range(3):
        capped.send(n)
    with pytest.raises(BacklogFull):
        capped.send(3)
    free.send(0)  # another actor on the queue (settle jobs) is never refused
    assert broker.queues["tracking"].qsize() == 4
