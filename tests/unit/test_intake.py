"""web.intake: buffer → publisher → broker, the spool while the broker is away, replay, adoption."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.harness.wait import wait_until
from web.intake import Intake, Spool


class FlakyBroker:
    """A publish function that can be switched off (raises, like a broker outage)."""

    def __init__(self) -> None:
        self.up = True
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if not self.up:
            raise ConnectionError("broker unreachable")
        with self.lock:
            self.batches.append(list(events))

    def ids(self) -> list[int]:
        with self.lock:
            return [e["id"] for b in self.batches for e in b]


def events(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": i, "kind": "open"} for i in range(start, start + n)]


def test_batches_reach_the_broker(tmp_path: Path) -> None:
    """Submitted events are published in batches, each event once, in order."""
    broker = FlakyBroker()
    intake = Intake(broker, Spool(tmp_path, 10**8), batch=100)
    intake.start()
    for e in events(0, 1000):
        intake.submit(e)
    wait_until(lambda: len(broker.ids()) == 1000, 10, what="1000 published")
    intake.stop()
    assert broker.ids() == list(range(1000)) and max(len(b) for b in broker.batches) <= 100


def test_outage_spools_then_replays_in_order(tmp_path: Path) -> None:
    """While the broker refuses, events go to the spool file; when it is back they are replayed, none lost."""
    broker = FlakyBroker()
    intake = Intake(broker, Spool(tmp_path, 10**8), batch=50, retry_every=0.05)
    intake.start()
    broker.up = False
    for e in events(0, 500):
        intake.submit(e)
    wait_until(lambda: intake.spool.size > 0 and intake.idle, 10, what="events spooled")
    assert broker.ids() == []
    intake.spool.sync()
    assert sum(1 for _ in open(intake.spool.path)) == 500
    broker.up = True
    for e in events(500, 10):
        intake.submit(e)
    wait_until(lambda: len(set(broker.ids())) == 510, 10, what="replayed")
    intake.stop()
    assert sorted(set(broker.ids())) == list(range(510)) and broker.ids()[:500] == list(range(500))
    assert not intake.spool.path.exists(), "an empty spool is removed on shutdown"


def test_shutdown_during_outage_keeps_events_and_the_next_process_adopts_them(tmp_path: Path) -> None:
    """Stopping while the broker is down leaves the spool; a new intake replays it (another process's file)."""
    broker = FlakyBroker()
    broker.up = False
    first = Intake(broker, Spool(tmp_path, 10**8), linger=0.5)
    first.start()
    for e in events(0, 300):
        first.submit(e)
    first.stop()  # buffered events go to the spool (fsync'd) when the broker refuses
    assert broker.ids() == [] and first.spool.path.exists()
    broker.up = True
    second = Intake(broker, Spool(tmp_path, 10**8), retry_every=0.05)
    second.start()
    wait_until(lambda: len(set(broker.ids())) == 300, 10, what="adopted spool replayed")
    second.stop()
    assert sorted(set(broker.ids())) == list(range(300)) and list(tmp_path.glob("*.jsonl")) == []


def test_a_full_spool_drops_and_says_so(tmp_path: Path) -> None:
    """Only a full spool drops events, and the drop is counted."""
    from ops import metrics

    before = metrics.TRACK_INTAKE.labels("dropped")._value.get()
    broker = FlakyBroker()
    broker.up = False
    intake = Intake(broker, Spool(tmp_path, 2000), linger=0.01)
    intake.start()
    for e in events(0, 200):
        intake.submit(e)
    intake.stop()
    dropped = metrics.TRACK_INTAKE.labels("dropped")._value.get() - before
    kept = sum(1 for _ in open(intake.spool.path))
    assert dropped > 0 and kept + dropped == 200 and intake.spool.path.stat().st_size <= 2000


def test_submit_never_blocks_when_the_buffer_is_full(tmp_path: Path) -> None:
    """A full buffer overflows into the spool path instead of blocking the request."""
    broker = FlakyBroker()
    intake = Intake(broker, Spool(tmp_path, 10**8), max_buffer=10)
    for e in events(0, 100):  # publisher not started: the buffer fills up
        intake.submit(e)
    intake.start()
    wait_until(lambda: len(broker.ids()) == 100, 10, what="all published")
    intake.stop()
    assert sorted(broker.ids()) == list(range(100))


class FillingBroker:
    """A publish function that takes ``room`` batches, then refuses until given more room (a full
    in-memory backlog in ``serve``, :class:`pipeline.broker.BacklogFull`)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.room <= 0:
                raise RuntimeError("backlog full")
            self.room -= 1
            self.batches.append(list(events))

    def ids(self) -> list[int]:
        with self.lock:
            return [e["id"] for b in self.batches for e in b]


def test_a_replay_stopped_part_way_goes_on_from_there(tmp_path: Path) -> None:
    """Replaying a spool into a broker that fills up after 2 batches, then takes 3 more, then the rest:
    every event is published exactly once, in order (the head is not published again each time)."""
    broker = FillingBroker(room=0)
    intake = Intake(broker, Spool(tmp_path, 10**8), batch=50, retry_every=0.05)
    intake.start()
    for e in events(0, 500):
        intake.submit(e)
    wait_until(lambda: intake.spool.size > 0 and intake.idle, 10, what="events spooled")
    for room in (2, 3, 100):
        with broker.lock:
            broker.room = room
        if room < 100:
            wait_until(lambda: broker.room == 0, 10, what="the room used")
    wait_until(lambda: len(broker.ids()) >= 500, 10, what="all replayed")
    intake.stop()
    assert broker.ids() == list(range(500))
