"""``fetch.account``: sync one mailbox (:func:`pipeline.flows.sync.run_fetch`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor, current_run_owner
from pipeline.flows.sync import run_fetch

__all__ = ["fetch_account"]


@actor(jobs.FETCH_ACCOUNT, max_retries=3, min_backoff=2_000, max_backoff=60_000, time_limit=10 * 60_000, max_age=30 * 60_000)
def fetch_account(account_id: str, token: str) -> None:
    """One run under the mailbox's fetch lease; a run out of time budget continues in a fresh message."""
    outcome = run_fetch(account_id, token, current_run_owner())
    if outcome.more:
        jobs.FETCH_ACCOUNT.send(account_id, token)
