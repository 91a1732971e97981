"""``send.email``: one run of an outbound email's due send work (:func:`pipeline.flows.send_run.run_send`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor, current_run_owner
from pipeline.flows.send_run import run_send

__all__ = ["send_email"]


@actor(jobs.SEND_EMAIL, max_retries=5, min_backoff=2_000, max_backoff=60_000, time_limit=10 * 60_000)
def send_email(email_id: str) -> None:
    """Exactly once however often it runs: the flow records every step before it happens."""
    run_send(email_id, current_run_owner())
