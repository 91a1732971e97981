"""``webhooks.dispatch`` and ``webhooks.deliver``: the outbox fan-out and one endpoint's delivery run
(:mod:`pipeline.flows.webhooks`)."""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor, current_run_owner
from pipeline.flows.webhooks import deliver_endpoint, dispatch_pending

__all__ = ["deliver", "dispatch"]


@actor(jobs.WEBHOOK_DISPATCH, max_retries=5, min_backoff=1_000, max_backoff=60_000)
def dispatch() -> None:
    """Undispatched events → delivery rows (idempotent: unique per endpoint and event)."""
    dispatch_pending()


@actor(jobs.WEBHOOK_DELIVER, max_retries=5, min_backoff=1_000, max_backoff=60_000, time_limit=120_000)
def deliver(endpoint_id: str) -> None:
    """One run over an endpoint's due deliveries, under its lease (one run per endpoint at a time)."""
    deliver_endpoint(endpoint_id, current_run_owner())
