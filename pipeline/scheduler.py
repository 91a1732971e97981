"""The scheduler: a tick every few seconds runs the registered sweeps while this process leads.

A sweep selects work that is due in the database (the source of truth), enqueues it and advances
its due time in one transaction. Because the database is re-swept every tick, a lost message or a
restarted broker only delays work; it never loses it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import SchedulerHeartbeat, utcnow
from ops import metrics
from pipeline.leader import LeaderLock

__all__ = ["SWEEPS", "Scheduler", "Sweep", "register_sweep"]

log = structlog.get_logger("mailpipe.scheduler")

Sweep = Callable[[Session, datetime], int]
"""A sweep gets a session and "now"; it enqueues due work and returns how many items it sent."""

SWEEPS: dict[str, Sweep] = {}


def register_sweep(name: str) -> Callable[[Sweep], Sweep]:
    """Register a sweep under a stable name (idempotent: re-registering replaces it)."""

    def decorate(fn: Sweep) -> Sweep:
        SWEEPS[name] = fn
        return fn

    return decorate


class Scheduler:
    """Runs :data:`SWEEPS` every ``tick_seconds`` while ``lock`` says this process leads."""

    def __init__(self, engine: Engine, lock: LeaderLock, tick_seconds: float = 5.0, *, name: str = "main") -> None:
        self.engine = engine
        self.lock = lock
        self.tick_seconds = tick_seconds
        self.name = name
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = False
        self._aps: BackgroundScheduler | BlockingScheduler | None = None
        self._tick_lock = threading.Lock()

    def tick(self) -> dict[str, int]:
        """One tick: (re)check leadership, then run every sweep in its own transaction."""
        if not self._tick_lock.acquire(blocking=False):
            return {}
        try:
            was_leading = self.leading
            self.leading = self.lock.ensure()
            metrics.SCHEDULER_LEADER.set(1 if self.leading else 0)
            if self.leading != was_leading:
                log.info("scheduler_leadership", leading=self.leading, holder=self.holder)
            if not self.leading:
                return {}
            metrics.SCHEDULER_TICKS.inc()
            started = time.perf_counter()
            now = utcnow()
            self._heartbeat(now, became=not was_leading)
            results: dict[str, int] = {}
            for name, sweep in list(SWEEPS.items()):
                try:
                    with Session(self.engine, expire_on_commit=False) as s:
                        results[name] = sweep(s, now)
                        s.commit()
                except Exception as exc:  # one failing sweep must not stop the others or the loop
                    log.error("sweep_failed", sweep=name, error=type(exc).__name__, exc_info=exc)
            metrics.SCHEDULER_TICK_SECONDS.observe(time.perf_counter() - started)
            return results
        finally:
            self._tick_lock.release()

    def _heartbeat(self, now: datetime, *, became: bool) -> None:
        try:
            with Session(self.engine) as s:
                row = s.get(SchedulerHeartbeat, self.name)
                if row is None:
                    row = SchedulerHeartbeat(name=self.name, holder=self.holder, became_leader_at=now, last_tick_at=now)
                if became or row.holder != self.holder:
                    row.holder, row.became_leader_at, row.ticks = self.holder, now, 0
                row.last_tick_at = now
                row.ticks += 1
                s.add(row)
                s.commit()
        except Exception as exc:
            log.warning("heartbeat_failed", error=type(exc).__name__)

    def _add_job(self, aps: BackgroundScheduler | BlockingScheduler) -> None:
        aps.add_job(self.tick, IntervalTrigger(seconds=self.tick_seconds), id="tick", coalesce=True,
                    max_instances=1, misfire_grace_time=max(1, int(self.tick_seconds)), next_run_time=datetime.now())

    def start_background(self) -> None:
        """Run ticks on a background thread (embedded ``serve``)."""
        aps = BackgroundScheduler(daemon=True)
        self._add_job(aps)
        aps.start()
        self._aps = aps

    def run_forever(self) -> None:
        """Block running ticks until :meth:`shutdown` (``mailpipe scheduler``)."""
        aps = BlockingScheduler()
        self._add_job(aps)
        self._aps = aps
        try:
            aps.start()
        finally:
            self.lock.release()

    def shutdown(self) -> None:
        if self._aps is not None and self._aps.running:
            self._aps.shutdown(wait=True)
        self.lock.release()
        metrics.SCHEDULER_LEADER.set(0)
