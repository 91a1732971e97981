"""``flags.store``: write a user's flag change to every location of the email (:func:`pipeline.flows.flag_store.run_flag_change`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.flag_store import run_flag_change

__all__ = ["store_flags"]


@actor(jobs.FLAG_STORE, max_retries=5, min_backoff=2_000, max_backoff=120_000, time_limit=5 * 60_000)
def store_flags(change_id: str) -> None:
    """One attempt; what raised is retried by Dramatiq (the sweep re-sends a change whose message was lost)."""
    run_flag_change(change_id)
