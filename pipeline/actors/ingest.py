"""The ingest chain's five stage actors (:func:`pipeline.jobs.ingest_chain` strings them together).

Each takes a batch of email ids and runs its stage's flow, which handles only the emails waiting in
that stage's input state (:mod:`pipeline.flows.chain`): a redelivered message is a no-op.
"""

from __future__ import annotations

from pipeline import jobs
from pipeline.broker import actor
from pipeline.flows import chain, ingest_attachments, ingest_leads, ingest_link, ingest_notify, ingest_parse

__all__ = ["create_leads", "link_emails", "notify_emails", "parse_emails", "relink_record", "start_sent", "store_attachments"]


@actor(jobs.INGEST_SENT, max_retries=3)
def start_sent(account_id: str) -> None:
    """The chain for a mailbox's sent emails, several at once (:func:`pipeline.flows.chain.start_sent_chains`)."""
    chain.start_sent_chains(account_id)


@actor(jobs.INGEST_PARSE, max_retries=3)
def parse_emails(email_ids: list[str]) -> list[str]:
    """fetched → parsed (or quarantined with the reason)."""
    return ingest_parse.parse_batch(email_ids)


@actor(jobs.INGEST_ATTACHMENTS, max_retries=3)
def store_attachments(email_ids: list[str]) -> None:
    """parsed → stored: attachments in storage, Documents rows."""
    ingest_attachments.store_batch(email_ids)


@actor(jobs.INGEST_LINK, max_retries=3)
def link_emails(email_ids: list[str]) -> None:
    """stored → linked: links to contacts, leads and accounts."""
    ingest_link.link_batch(email_ids)


@actor(jobs.INGEST_LEADS, max_retries=3)
def create_leads(email_ids: list[str]) -> None:
    """linked → leads: a lead for an unknown human sender (when the organization wants it)."""
    ingest_leads.create_batch(email_ids)


@actor(jobs.INGEST_NOTIFY, max_retries=3)
def notify_emails(email_ids: list[str]) -> None:
    """leads → done: the mailbox owner's notification for new linked mail."""
    ingest_notify.notify_batch(email_ids)


@actor(jobs.LINK_RETRO, max_retries=3)
def relink_record(org_id: str, entity_type: str, entity_id: str) -> None:
    """Earlier unlinked mail linked to a contact, lead or account the CRM just wrote."""
    ingest_link.relink_record(org_id, entity_type, entity_id)
