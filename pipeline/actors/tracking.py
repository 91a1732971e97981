"""``tracking.record`` and ``tracking.settle_clicks``: the tracking flows (:mod:`pipeline.flows.tracking_record`)."""

from __future__ import annotations

from typing import Any

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows.tracking_record import record, settle
from pipeline.stages.hit_batch import decode_hits

__all__ = ["record_events", "settle_clicks"]


@actor(jobs.TRACKING_RECORD, max_retries=5)
def record_events(events: str | list[dict[str, Any]]) -> None:
    """Verify, classify and store a batch of hits (each once: their intake ids are unique); the batch
    comes as one JSON text (:mod:`pipeline.stages.hit_batch`) or, queued by an older version, a list. Returns
    nothing: a value from an actor with no result backend is logged as a warning per message, which
    at tracking rates is a flood (and, once stderr is a full pipe, a stall)."""
    record(decode_hits(events))


@actor(jobs.TRACKING_SETTLE, max_retries=5)
def settle_clicks(email_ids: list[str]) -> None:
    """Judge the emails' waiting opens and clicks against their other hits (the name is kept for
    messages already queued): flag machine ones, count and notify the rest."""
    settle(email_ids)
