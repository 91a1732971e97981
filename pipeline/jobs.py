"""The messages mailpipe's processes send each other: every job's actor name, queue and arguments.

A workflow that hands work on (a fetch to run, a send to attempt, a batch of emails to ingest)
enqueues a :class:`Job` by name; the actor that runs it is declared with the same :class:`Job`
(:func:`pipeline.broker.actor`). So workflows never import actor modules, and the names that
queued messages carry are written down once, here. Messages carry ids, never payloads (tracking
hits are the exception: they exist nowhere else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq import pipeline

from pipeline.broker import get_broker

__all__ = [
    "FETCH_ACCOUNT",
    "FLAG_STORE",
    "INGEST_ATTACHMENTS",
    "INGEST_LEADS",
    "INGEST_LINK",
    "INGEST_NOTIFY",
    "INGEST_PARSE",
    "INGEST_SENT",
    "INGEST_SENTIMENT",
    "JOBS",
    "LINK_RETRO",
    "NOTIFY_EMAIL",
    "NOTION_SAVE",
    "PRIVACY_RETENTION",
    "PRIVACY_RUN",
    "SELFTEST_FIRST",
    "SELFTEST_SECOND",
    "SEND_EMAIL",
    "TRACKING_RECORD",
    "TRACKING_SETTLE",
    "WEBHOOK_DELIVER",
    "WEBHOOK_DISPATCH",
    "Job",
    "chain",
    "ingest_chain",
]


@dataclass(frozen=True, slots=True)
class Job:
    """One kind of message: the actor that runs it and the queue it travels on."""

    name: str
    queue: str

    def message(self, *args: Any, **options: Any) -> dramatiq.Message[Any]:
        """A message for this job (not sent); ``options`` are Dramatiq message options."""
        return dramatiq.Message(queue_name=self.queue, actor_name=self.name, args=args, kwargs={}, options=options)

    def send(self, *args: Any, delay_ms: int | None = None) -> dramatiq.Message[Any]:
        """Enqueue this job on the process broker (after ``delay_ms`` milliseconds when given)."""
        return get_broker().enqueue(self.message(*args), delay=delay_ms)


FETCH_ACCOUNT = Job("fetch.account", "fetch")              # (account_id, fetch_token)
INGEST_PARSE = Job("ingest.parse", "pipeline")             # ([email_id, ...])
INGEST_ATTACHMENTS = Job("ingest.attachments", "pipeline")
INGEST_LINK = Job("ingest.link", "pipeline")
INGEST_LEADS = Job("ingest.leads", "pipeline")
INGEST_NOTIFY = Job("ingest.notify", "notify")
INGEST_SENT = Job("ingest.sent", "pipeline")               # (account_id): the chain for the mailbox's sent emails, several at once
INGEST_SENTIMENT = Job("ingest.sentiment", "pipeline")     # ([email_id, ...]): fanned out by the link stage, beside the chain
LINK_RETRO = Job("link.retro", "pipeline")                 # (org_id, entity_type, entity_id)
SEND_EMAIL = Job("send.email", "send")                     # (email_id)
FLAG_STORE = Job("flags.store", "fetch")                   # (flag_change_id): IMAP round trips, beside the fetches
TRACKING_RECORD = Job("tracking.record", "tracking")       # ([hit, ...]): the hits themselves
TRACKING_SETTLE = Job("tracking.settle_clicks", "tracking")  # ([email_id, ...])
NOTIFY_EMAIL = Job("notify.email", "notify")               # (notification_id)
NOTION_SAVE = Job("notion.save", "notion")                 # (save_id)
SELFTEST_FIRST = Job("selftest.first", "ops")              # (run_id)
SELFTEST_SECOND = Job("selftest.second", "ops")            # (run_id), piped from the first
WEBHOOK_DISPATCH = Job("webhooks.dispatch", "webhooks")    # (): fan undispatched outbox events out to endpoints
WEBHOOK_DELIVER = Job("webhooks.deliver", "webhooks")      # (endpoint_id): one endpoint's due deliveries, in event order
PRIVACY_RUN = Job("privacy.run", "privacy")                # (privacy_job_id): an export or erase
PRIVACY_RETENTION = Job("privacy.retention", "privacy")    # (org_id): purge mail older than the org's retention_days

JOBS = (FETCH_ACCOUNT, INGEST_PARSE, INGEST_ATTACHMENTS, INGEST_LINK, INGEST_LEADS, INGEST_NOTIFY, INGEST_SENT, INGEST_SENTIMENT,
        LINK_RETRO, SEND_EMAIL,
        FLAG_STORE, TRACKING_RECORD, TRACKING_SETTLE, NOTIFY_EMAIL, NOTION_SAVE, SELFTEST_FIRST, SELFTEST_SECOND,
        WEBHOOK_DISPATCH, WEBHOOK_DELIVER, PRIVACY_RUN, PRIVACY_RETENTION)

_CHAIN = (INGEST_PARSE, INGEST_ATTACHMENTS, INGEST_LINK, INGEST_LEADS, INGEST_NOTIFY)


def chain(*messages: dramatiq.Message[Any]) -> pipeline:
    """A Dramatiq pipeline of ``messages`` on the process broker (each result is handed to the next
    message unless it says ``pipe_ignore``)."""
    return pipeline(messages, broker=get_broker())


def ingest_chain(email_ids: Sequence[str]) -> pipeline:
    """The five ingest stages for a batch of ids as one Dramatiq pipeline (not yet run).

    Every stage takes the same ids (``pipe_ignore``: a stage's result is not handed on), and each
    stage only works on the emails in its own input state, so a repeated chain is a no-op.
    """
    ids = list(email_ids)
    first, *rest = _CHAIN
    return chain(first.message(ids), *(job.message(ids, pipe_ignore=True) for job in rest))
