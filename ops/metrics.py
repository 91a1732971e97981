"""Prometheus metrics: one registry of mailpipe's own series plus a Dramatiq middleware.

When ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is first imported, values are
shared across worker processes and :func:`render` aggregates them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dramatiq import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

__all__ = ["CONTENT_TYPE_LATEST", "DramatiqMetrics", "render", "MESSAGES", "MESSAGE_ERRORS", "MESSAGE_SECONDS"]

MESSAGES = Counter("mailpipe_messages_total", "Dramatiq messages processed", ["queue_name", "actor_name", "outcome"])
MESSAGE_ERRORS = Counter("mailpipe_message_errors_total", "Dramatiq messages that raised", ["queue_name", "actor_name", "error"])
MESSAGE_SECONDS = Histogram(
    "mailpipe_message_duration_seconds",
    "Time spent processing one Dramatiq message",
    ["queue_name", "actor_name"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
INPROGRESS = Gauge("mailpipe_messages_inprogress", "Messages being processed", ["queue_name", "actor_name"], multiprocess_mode="livesum")
SCHEDULER_TICKS = Counter("mailpipe_scheduler_ticks_total", "Scheduler ticks run while leading")
SCHEDULER_LEADER = Gauge("mailpipe_scheduler_leader", "1 while this process leads the scheduler", multiprocess_mode="liveall")
EMAILS_SYNCED = Counter("mailpipe_emails_synced_total", "New emails stored by IMAP sync", ["folder_role"])
SYNC_SECONDS = Histogram("mailpipe_sync_duration_seconds", "Duration of one fetch job",
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
SYNC_LAG = Histogram("mailpipe_sync_lag_seconds", "Delay between a message reaching the server and being stored",
                     buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600))
FETCH_ERRORS = Counter("mailpipe_fetch_errors_total", "IMAP fetch failures", ["kind"])
ACCOUNT_STATES = ("idle", "syncing", "error", "reconnect_required", "disabled")
ACCOUNTS = Gauge("mailpipe_accounts", "Mailboxes by sync state (set by the leading scheduler from the database)", ["state"],
                 multiprocess_mode="mostrecent")
ACCOUNTS_STALE = Gauge("mailpipe_accounts_sync_stale",
                       "Active mailboxes whose last successful sync is older than three poll intervals (at least 15 min)",
                       multiprocess_mode="mostrecent")
QUEUE_MESSAGES = Gauge("mailpipe_queue_messages", "Broker messages per queue: ready, delayed (retries, schedules) and dead",
                       ["queue", "state"], multiprocess_mode="mostrecent")
SCHEDULER_TICK_SECONDS = Histogram("mailpipe_scheduler_tick_duration_seconds", "Duration of one leading scheduler tick",
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SMTP_ERRORS = Counter("mailpipe_smtp_errors_total", "SMTP connection-level failures by class (dns, connect, tls, auth, timeout, protocol)",
                      ["kind"])
EMAILS_FAILED = Counter("mailpipe_emails_failed_total", "Outbound emails that failed or partly failed, by reason class", ["reason"])
SEND_LATENCY = Histogram("mailpipe_send_latency_seconds", "From when an email was due to the server accepting it",
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
HTTP_REQUESTS = Counter("mailpipe_http_requests_total", "HTTP requests by route template, method and status", ["route", "method", "status"])
HTTP_SECONDS = Histogram("mailpipe_http_request_duration_seconds", "HTTP request duration by route template", ["route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
SPOOL_BYTES = Gauge("mailpipe_tracking_spool_bytes", "Tracking events waiting in this process's spool file", multiprocess_mode="livesum")
SEND_ATTEMPTS = Counter("mailpipe_send_attempts_total", "SMTP transactions attempted, by outcome", ["outcome"])
SENT = Counter("mailpipe_emails_sent_total", "Outbound emails finished, by final status", ["status"])
SEND_DEFERRED = Counter("mailpipe_send_deferred_total", "Sends held back (an account's daily cap, or waiting for an OAuth token)")
NOTION_SAVES = Counter("mailpipe_notion_saves_total", "Save-to-Notion steps by result (page_created, done, failed, retry)",
                       ["result"])
TOKEN_REFRESH = Counter("mailpipe_oauth_token_refresh_total",
                        "OAuth token endpoint calls by provider and result (exchanged, exchange_failed, ok, error, unavailable, revoked)",
                        ["provider", "result"])
TRACK_INTAKE = Counter("mailpipe_tracking_intake_total",
                       "Tracking events through the intake: buffered, published, spooled, replayed, dropped", ["stage"])
TRACK_RECORDED = Counter("mailpipe_tracking_events_total", "Tracking events recorded, by kind and verdict", ["kind", "verdict"])
TRACK_THROTTLED = Counter("mailpipe_tracking_throttled_total",
                          "Tracking hits dropped beyond a rate: by token or ip (a web process's pre-filter) or record (the stored cap)",
                          ["kind", "by"])
INGESTED = Counter("mailpipe_ingest_total", "Emails through each ingest stage", ["stage", "outcome"])
SENTIMENT = Counter("mailpipe_sentiment_total", "Inbound emails classified, by label (or error) and backend kind (lexicon, onnx, llm)",
                    ["label", "backend"])
SENTIMENT_FALLBACK = Counter("mailpipe_sentiment_fallback_total",
                             "Classifications the LLM or ONNX backend handed to the lexicon, by reason "
                             "(error, rate_limited, paused, unavailable)",
                             ["reason"])
ACCOUNTS_AT_RISK = Counter("mailpipe_accounts_at_risk_total", "CRM accounts that turned at risk (one per episode)")
IDLE_CONNECTIONS = Gauge("mailpipe_idle_connections", "IMAP connections this watcher holds in IDLE on INBOX",
                         multiprocess_mode="livesum")
IDLE_HELD = Gauge("mailpipe_idle_mailboxes_held", "Mailboxes this watcher holds the IDLE lease of (idling or reconnecting)",
                  multiprocess_mode="livesum")
IDLE_RECONNECTS = Counter("mailpipe_idle_reconnects_total",
                          "IDLE connections lost and reconnected, by reason (bye, connect, timeout, tls, auth, protocol, token)",
                          ["reason"])
IDLE_DUE = Gauge("mailpipe_idle_mailboxes_due", "Mailboxes that should be held in IDLE (set by the leading scheduler)",
                 multiprocess_mode="mostrecent")
IDLE_IDLING = Gauge("mailpipe_idle_mailboxes_idling", "Mailboxes idling under a live lease (set by the leading scheduler)",
                    multiprocess_mode="mostrecent")
ARRIVAL_SECONDS = Histogram("mailpipe_arrival_latency_seconds",
                            "New inbound mail: from reaching the server (INTERNALDATE, whole seconds) to stored and linked",
                            buckets=(0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600))
SERVER_STATE = Counter("mailpipe_server_state_total",
                       "Server-side changes applied: expunged locations and emails whose flags or deleted_on_server changed",
                       ["change"])
FLAG_STORES = Counter("mailpipe_flag_stores_total", "User flag changes written to the server, by result (done, retry, failed, superseded)",
                      ["result"])
WEBHOOK_DELIVERIES = Counter("mailpipe_webhook_deliveries_total",
                             "Webhook delivery attempts by result (succeeded, retry, failed, refused)", ["result"])
WEBHOOK_SECONDS = Histogram("mailpipe_webhook_delivery_duration_seconds", "Duration of one webhook POST (to the end of the answer)",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
WEBHOOK_BACKLOG = Gauge("mailpipe_webhook_outbox_backlog",
                        "Webhook work waiting (set by the leading scheduler): undispatched events, pending deliveries",
                        ["kind"], multiprocess_mode="mostrecent")
WEBHOOK_DISABLED = Gauge("mailpipe_webhook_endpoints_disabled", "Webhook endpoints disabled (set by the leading scheduler)",
                         multiprocess_mode="mostrecent")
BOUNCES = Counter("mailpipe_bounces_total", "Bounced recipients of sent mail by type (hard, soft) and complaints (complaint)", ["type"])
EMAILS_BOUNCED = Counter("mailpipe_emails_bounced_total", "Sent emails that became bounced (every recipient hard-bounced)")
PRIVACY_JOBS = Counter("mailpipe_privacy_jobs_total", "Privacy jobs finished, by kind (export, erase) and state (done, failed)",
                       ["kind", "state"])
EMAILS_PURGED = Counter("mailpipe_emails_purged_total", "Emails deleted by erase requests and retention, by reason", ["reason"])


class DramatiqMetrics(Middleware):
    """Counts, times and labels every message by queue and actor."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: Any, message: Any) -> None:
        self._started[message.message_id] = time.perf_counter()
        INPROGRESS.labels(message.queue_name, message.actor_name).inc()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None) -> None:
        start = self._started.pop(message.message_id, None)
        INPROGRESS.labels(message.queue_name, message.actor_name).dec()
        if start is not None:
            MESSAGE_SECONDS.labels(message.queue_name, message.actor_name).observe(time.perf_counter() - start)
        outcome = "error" if exception is not None else "ok"
        MESSAGES.labels(message.queue_name, message.actor_name, outcome).inc()
        if exception is not None:
            MESSAGE_ERRORS.labels(message.queue_name, message.actor_name, type(exception).__name__).inc()

    def after_skip_message(self, broker: Any, message: Any) -> None:
        start = self._started.pop(message.message_id, None)
        if start is not None:
            INPROGRESS.labels(message.queue_name, message.actor_name).dec()
        MESSAGES.labels(message.queue_name, message.actor_name, "skipped").inc()


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition for this process (or all processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
