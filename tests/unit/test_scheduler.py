"""pipeline.scheduler: ticks run registered sweeps only while leading."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlmodel import Session

from models import SchedulerHeartbeat
from models.db import get_engine
from pipeline import scheduler as sched_mod
from pipeline.leader import AlwaysLeader, leader_lock_for
from pipeline.scheduler import Scheduler, register_sweep


class FlippingLock:
    """A lock whose answer the test controls."""

    def __init__(self) -> None:
        self.leading = False
        self.released = False

    def ensure(self) -> bool:
        return self.leading

    def release(self) -> None:
        self.released = True


@pytest.fixture
def sweeps() -> Iterator[dict[str, object]]:
    saved = dict(sched_mod.SWEEPS)
    sched_mod.SWEEPS.clear()
    yield sched_mod.SWEEPS  # type: ignore[misc]
    sched_mod.SWEEPS.clear()
    sched_mod.SWEEPS.update(saved)


class TestTick:
    def test_runs_sweeps_when_leading(self, db: str, sweeps: dict[str, object]) -> None:
        """A leading tick runs every sweep and records a heartbeat."""
        seen: list[datetime] = []

        @register_sweep("probe")
        def probe(session: Session, now: datetime) -> int:
            seen.append(now)
            return 3

        s = Scheduler(get_engine(), AlwaysLeader(), 1)
        assert s.tick() == {"probe": 3}
        assert s.tick() == {"probe": 3}
        assert len(seen) == 2
        with Session(get_engine()) as session:
            hb = session.get(SchedulerHeartbeat, "main")
            assert hb is not None and hb.ticks == 2 and hb.holder == s.holder

    def test_follower_does_nothing(self, db: str, sweeps: dict[str, object]) -> None:
        """A follower's tick runs no sweep until it wins the lock."""
        calls: list[int] = []
        register_sweep("probe")(lambda session, now: calls.append(1) or 1)
        lock = FlippingLock()
        s = Scheduler(get_engine(), lock, 1)
        assert s.tick() == {} and calls == []
        lock.leading = True
        assert s.tick() == {"probe": 1} and s.leading

    def test_failing_sweep_does_not_stop_others(self, db: str, sweeps: dict[str, object]) -> None:
        """One sweep raising is logged; the next sweep still runs."""

        def boom(session: Session, now: datetime) -> int:
            raise RuntimeError("broken")

        register_sweep("a_boom")(boom)
        register_sweep("b_ok")(lambda session, now: 7)
        assert Scheduler(get_engine(), AlwaysLeader(), 1).tick() == {"b_ok": 7}


class TestLockChoice:
    def test_sqlite_always_leads(self) -> None:
        """Embedded mode has one process, so it needs no election."""
        assert isinstance(leader_lock_for("sqlite:///x.db"), AlwaysLeader)
