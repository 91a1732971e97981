"""Syncing a mailbox (the ``fetch.account`` job): one run, "fetch this mailbox now", and the
scheduler sweep that hands due mailboxes to the broker.

:func:`run_fetch` claims the mailbox's fetch lease (:mod:`pipeline.flows.mailbox_lease`), walks its
folders (:class:`pipeline.flows.mailbox_sync.MailboxSync`) and records the outcome on the account.
A run that used up its time budget says so (``more``) and the actor hands the rest to a fresh
message. Connection failures are counted on the account; the ones worth retrying soon are raised
for Dramatiq's backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_
from sqlmodel import Session, col, select

from models import EmailAccount, new_id, utcnow
from models.db import get_engine, is_postgres
from models.lease import LeaseLost
from ops import metrics
from ops.settings import get_settings
from pipeline import jobs
from pipeline.clients.imap import ImapError, ImapErrorKind
from pipeline.flows.connections import open_imap
from pipeline.flows.mailbox_lease import ERROR_AFTER_FAILURES, FETCH_LEASE, claim, failures, record_failure, release
from pipeline.flows.mailbox_sync import MailboxSync
from pipeline.flows.tokens import ReconnectRequired, TokenUnavailable
from pipeline.scheduler import register_sweep

__all__ = ["FetchOutcome", "fetch_now", "run_fetch", "sweep_due_accounts"]

log = structlog.get_logger("mailpipe.fetch")


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """What one run did: whether it ran at all, and whether the mailbox has more to fetch now."""

    ran: bool
    more: bool = False
    stored: int = 0


def run_fetch(account_id: str, token: str, owner: str) -> FetchOutcome:
    """Sync one mailbox under the fetch lease (``owner``: :func:`models.lease.run_owner` of the message).

    A stale token, a busy, disabled or deleted mailbox: nothing is done. Raises ``ImapError`` for
    Dramatiq to retry while a connection failure is worth retrying soon (the account records each).
    """
    claimed = claim(account_id, token, owner)
    if claimed is None:
        with Session(get_engine()) as s:
            row = s.get(EmailAccount, account_id)
            reason = ("account deleted" if row is None or row.deleted_at is not None
                      else "stale token" if row.fetch_token != token else "another fetch holds the lease")
        log.info("fetch_dropped", account_id=account_id, reason=reason)
        return FetchOutcome(ran=False)
    started = time.monotonic()
    claimed.account.consecutive_failures = failures(account_id)
    try:
        session = open_imap(claimed.account)
        walk = MailboxSync(claimed, session)
        try:
            walk.run()
        finally:
            session.close()
    except LeaseLost:
        log.info("fetch_superseded", account_id=account_id, reason="taken over, disabled or deleted")
        return FetchOutcome(ran=True)
    except ImapError as err:
        count = record_failure(claimed.account, owner, err.kind.value, err.message)
        if err.kind != ImapErrorKind.AUTH and count < ERROR_AFTER_FAILURES:
            raise  # Dramatiq retries with backoff; the same message id may re-take the lease
        return FetchOutcome(ran=True)
    except ReconnectRequired as err:  # the token manager has set the state and told the owner
        release(account_id, owner, sync_state="reconnect_required", last_error=str(err)[:2000], last_error_code="auth")
        log.warning("fetch_needs_reconnect", account_id=account_id)
        return FetchOutcome(ran=True)
    except TokenUnavailable as err:  # the provider's token endpoint is down: back off like a network error
        record_failure(claimed.account, owner, "connect", f"token endpoint: {err}")
        return FetchOutcome(ran=True)
    except Exception as exc:
        record_failure(claimed.account, owner, "internal", f"{type(exc).__name__} (see worker logs)")
        raise
    now = utcnow()
    done: dict[str, Any] = dict(sync_state="idle", last_synced_at=now, last_error=None, last_error_code=None,
                                consecutive_failures=0, deferred_until=None)
    if walk.rate_limited and walk.window.start is not None:
        done["deferred_until"] = walk.window.start + timedelta(hours=1)
        done["next_fetch_at"] = done["deferred_until"]
    release(account_id, owner, **done)
    metrics.SYNC_SECONDS.observe(time.monotonic() - started)
    log.info("fetch_done", account_id=account_id, stored=walk.stored, more=walk.more, rate_limited=walk.rate_limited)
    return FetchOutcome(ran=True, more=walk.more, stored=walk.stored)


def fetch_now(account_id: str) -> bool:
    """Fetch this mailbox now (a manual sync, a reconnected account, a send that wants its Sent copy
    seen): a fresh fetch token and next due time, committed, then the job. False when the mailbox is
    disabled, gone, or being fetched right now. The hourly sync budget still holds (``deferred_until``)."""
    with Session(get_engine()) as s:
        acct = s.get(EmailAccount, account_id)
        if acct is None or acct.deleted_at is not None or acct.sync_state == "disabled":
            return False
        if acct.fetch_lease_until is not None and acct.fetch_lease_until > utcnow():
            return False
        token = new_id()
        acct.fetch_token = token
        acct.next_fetch_at = utcnow() + timedelta(seconds=acct.poll_seconds or get_settings().poll_seconds)
        s.add(acct)
        s.commit()
    jobs.FETCH_ACCOUNT.send(account_id, token)
    return True


@register_sweep("fetch_due_accounts")
def sweep_due_accounts(session: Session, now: datetime) -> int:
    """Enqueue one fetch per due account and advance its next-fetch time in the same transaction."""
    default = get_settings().poll_seconds
    stmt = (
        select(EmailAccount)
        .where(col(EmailAccount.deleted_at).is_(None),
               col(EmailAccount.sync_state).not_in(("disabled", "reconnect_required")),
               or_(col(EmailAccount.next_fetch_at).is_(None), col(EmailAccount.next_fetch_at) <= now),
               FETCH_LEASE.free(now),
               or_(col(EmailAccount.deferred_until).is_(None), col(EmailAccount.deferred_until) <= now))
        .order_by(col(EmailAccount.next_fetch_at))
        .limit(500)
    )
    if is_postgres(session.get_bind()):
        stmt = stmt.with_for_update(skip_locked=True, key_share=True)  # FOR NO KEY UPDATE: FK checks do not block it
    accounts = list(session.execute(stmt).scalars())
    due = []
    for acct in accounts:
        acct.fetch_token = new_id()
        acct.next_fetch_at = now + timedelta(seconds=acct.poll_seconds or default)
        session.add(acct)
        due.append((acct.id, acct.fetch_token))
    # Commit the new tokens before sending: a worker must see the token its message carries.
    # Dying between the two only delays that fetch to its next due time; nothing is lost.
    session.commit()
    for account_id, token in due:
        jobs.FETCH_ACCOUNT.send(account_id, token)
    return len(due)
