"""``selftest.first`` → ``selftest.second``: the two-stage round trip of :mod:`pipeline.flows.selftest`."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.selftest import stamp

__all__ = ["first", "second"]


@actor(jobs.SELFTEST_FIRST, max_retries=3)
def first(run_id: str) -> str:
    """Stage one: stamp the run and hand its id to stage two."""
    stamp(run_id, "first")
    return run_id


@actor(jobs.SELFTEST_SECOND, max_retries=3)
def second(run_id: str) -> None:
    """Stage two: stamp the run as complete."""
    stamp(run_id, "second")
