"""ops.serve's embedded runtime: stopping with tracking batches still in the in-memory broker
spools them for the next start instead of losing them (the events are nowhere else)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.settings import get_settings, reset_settings
from pipeline.broker import MemoryBroker, build_broker, use_broker
from tests.harness.wait import wait_until
from web.intake import Intake, Spool, spooled_files


@pytest.fixture
def memory_broker(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryBroker]:
    import pipeline.actors  # noqa: F401

    monkeypatch.setenv("MAILPIPE_SPOOL_DIR", str(tmp_path / "spool"))
    reset_settings()
    broker = build_broker(None)
    assert isinstance(broker, MemoryBroker)
    use_broker(broker)
    yield broker
    broker.flush_all()


def test_stop_spools_unrecorded_batches_and_the_next_start_replays_them(memory_broker: MemoryBroker,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.serve import Embedded
    from pipeline.actors.tracking import record_events
    from pipeline.stages.hit_batch import decode_hits
    from web.intake import publish_batch

    gate, entered = threading.Event(), threading.Event()
    recorded: list[int] = []

    def slow_record(events: str | list[dict[str, Any]]) -> None:
        entered.set()
        gate.wait(10)
        recorded.extend(e["id"] for e in decode_hits(events))  # the batch as published: one JSON text

    monkeypatch.setattr(record_events, "fn", slow_record)
    embedded = Embedded(get_settings(), worker_threads=1)
    embedded.start()
    for b in range(10):
        publish_batch([{"id": b * 10 + i, "kind": "open"} for i in range(10)])
    assert entered.wait(10), "the worker took the first batch"
    # The in-flight batch finishes only once the worker has been told to stop (not on a timer, which a
    # loaded machine can outrun: the stop would then begin after every batch had been recorded).
    stopper = threading.Thread(target=embedded.stop, kwargs={"tracking_grace_ms": 50})
    stopper.start()
    assert embedded.worker is not None
    wait_until(lambda: not any(t.running for t in embedded.worker.workers), 20, what="the worker told to stop")
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()

    assert recorded and len(recorded) < 100, "one batch was in flight, the rest never ran"
    (left,) = spooled_files()
    spooled = [int(line.split(b'"id":')[1].split(b",")[0]) for line in left.read_bytes().splitlines()]
    assert sorted(recorded + spooled) == list(range(100)), "every event recorded or spooled, once"

    replayed: list[int] = []
    intake = Intake(lambda events: replayed.extend(e["id"] for e in events),
                    Spool(get_settings().spool_dir, 10**8), retry_every=0.01)
    intake.start()  # the next process adopts the file and replays it
    wait_until(lambda: sorted(replayed) == sorted(spooled), 10, what="the spooled events replayed")
    intake.stop()
    assert spooled_files() == []


def test_memory_broker_requeues_what_a_stopping_worker_prefetched(memory_broker: MemoryBroker) -> None:
    """Dramatiq's StubBroker drops prefetched messages on worker stop (here: message 1); ours puts them back."""
    from dramatiq import Worker

    from pipeline.actors.tracking import record_events

    gate = threading.Event()
    record_events.fn, original = (lambda events: gate.wait(10) and 0), record_events.fn
    try:
        worker = Worker(memory_broker, worker_threads=1, worker_timeout=50)
        worker.start()
        for i in range(5):
            record_events.send([{"id": i}])
        # One thread prefetches two messages: the first runs (held by the gate), the second waits in memory.
        wait_until(lambda: memory_broker.queues["tracking"].qsize() == 3, 10, what="two prefetched")
        threading.Timer(0.2, gate.set).start()
        worker.stop(timeout=5_000)
    finally:
        record_events.fn = original
    left = memory_broker.unprocessed("tracking")
    assert sorted(m.args[0][0]["id"] for m in left) == [1, 2, 3, 4]


def test_serve_paces_recording_and_caps_its_backlog(memory_broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded: while the app is busy the recorder waits between batches, and beyond
    MAILPIPE_TRACKING_BACKLOG_BATCHES waiting batches the publish is refused (the intake then spools)."""
    from ops.pacing import WEB_LOAD
    from ops.serve import Embedded
    from pipeline.actors.tracking import record_events
    from pipeline.broker import BacklogFull
    from web.intake import publish_batch

    monkeypatch.setenv("MAILPIPE_TRACKING_BACKLOG_BATCHES", "3")
    monkeypatch.setenv("MAILPIPE_TRACKING_RECORD_SHARE", "0.1")
    reset_settings()
    starts: list[float] = []

    def slow_record(events: str | list[dict[str, Any]]) -> None:
        import time

        starts.append(time.monotonic())
        time.sleep(0.05)

    monkeypatch.setattr(record_events, "fn", slow_record)
    monkeypatch.setattr(WEB_LOAD, "busy", lambda now=None: True)  # the app is serving a flood
    embedded = Embedded(get_settings(), worker_threads=2)
    embedded.start()
    try:
        for b in range(3):
            publish_batch([{"id": f"{b}", "kind": "open"}])
        wait_until(lambda: len(starts) >= 2, 10, what="two batches recorded")
        assert starts[1] - starts[0] >= 0.4, "50 ms at a 10 % share: the next one ~450 ms later"
        for b in range(3, 6):
            try:
                publish_batch([{"id": f"{b}", "kind": "open"}])
            except BacklogFull:
                break
        else:
            raise AssertionError("the backlog was never full")
    finally:
        embedded.stop(tracking_grace_ms=50)
