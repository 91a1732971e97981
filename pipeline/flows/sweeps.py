"""Every scheduler sweep in one place. Importing this module registers them all with
:func:`pipeline.scheduler.register_sweep`; each one finds due work in the database (the source of
truth) and hands it to the broker, so a lost message or a restarted broker only delays work."""

from __future__ import annotations

from pipeline.flows.account_risk import sweep_account_risk
from pipeline.flows.chain import resume_ingest
from pipeline.flows.conversations import sweep_legacy_threads
from pipeline.flows.flag_store import sweep_flag_changes
from pipeline.flows.fleet import sweep_fleet_gauges
from pipeline.flows.ingest_link import sweep_relinks
from pipeline.flows.ingest_sentiment import sweep_unclassified
from pipeline.flows.notify_email import sweep_pending_notification_emails
from pipeline.flows.notion_save import sweep_notion_saves
from pipeline.flows.privacy import sweep_privacy_jobs
from pipeline.flows.retention import sweep_retention
from pipeline.flows.search_index import sweep_search_backfill
from pipeline.flows.send_due import sweep_send_due
from pipeline.flows.sync import sweep_due_accounts
from pipeline.flows.tracking_record import sweep_unsettled_clicks
from pipeline.flows.webhooks import sweep_webhooks

__all__ = ["SWEEPS"]

SWEEPS = (sweep_due_accounts, resume_ingest, sweep_relinks, sweep_send_due, sweep_unsettled_clicks, sweep_notion_saves,
          sweep_pending_notification_emails, sweep_flag_changes, sweep_fleet_gauges, sweep_unclassified, sweep_account_risk,
          sweep_webhooks, sweep_privacy_jobs, sweep_retention, sweep_legacy_threads, sweep_search_backfill)
