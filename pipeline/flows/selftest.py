"""A two-actor round trip through the broker: proves workers consume and pipelines chain.

``mailpipe selftest`` and the test suite start a run; each actor records which worker handled
it, and counts how often it ran, so redeliveries are visible rather than harmful.
"""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import update
from sqlmodel import col

from models import SelfTestRun, utcnow
from models.db import session_scope
from pipeline import jobs

__all__ = ["stamp", "start_run", "wait_for_run"]


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stamp(run_id: str, stage: str) -> None:
    """Record that ``stage`` ran for the run: when, on which worker, and how many times."""
    runs = getattr(SelfTestRun, f"{stage}_runs")
    with session_scope() as s:
        s.execute(update(SelfTestRun).where(col(SelfTestRun.id) == run_id).values(
            {f"{stage}_at": utcnow(), f"{stage}_worker": _worker_name(), f"{stage}_runs": runs + 1}))


def start_run() -> str:
    """Record a run and enqueue the two-stage pipeline; returns the run id."""
    run = SelfTestRun()
    with session_scope() as s:
        s.add(run)
    jobs.chain(jobs.SELFTEST_FIRST.message(run.id), jobs.SELFTEST_SECOND.message()).run()
    return run.id


def wait_for_run(run_id: str, timeout: float = 30.0) -> SelfTestRun | None:
    """Poll the database until stage two has stamped the run, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            run = s.get(SelfTestRun, run_id)
            if run is not None and run.second_at is not None:
                return run
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
