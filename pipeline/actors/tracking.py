"""``tracking.record`` and ``tracking.settle_clicks``: the tracking flows (:mod:`pipeline.flows.tracking_record`)."""

from __future__ import annotations

from typing import Any

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.tracking_record import record, settle

__all__ = ["record_events", "settle_clicks"]


@actor(jobs.TRACKING_RECORD, max_retries=5)
def record_events(events: list[dict[str, Any]]) -> int:
    """Verify, classify and store a batch of hits (each once: their intake ids are unique)."""
    return record(events)


@actor(jobs.TRACKING_SETTLE, max_retries=5)
def settle_clicks(email_ids: list[str]) -> int:
    """Judge the emails' waiting opens and clicks against their other hits (the name is kept for
    messages already queued): flag machine ones, count and notify the rest."""
    return settle(email_ids)
