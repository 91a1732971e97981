"""The fetch lease on a mailbox: one sync run at a time, and how a run's failures show on the account.

A run claims the lease with the fetch token its message carries (a stale token, a disabled or
deleted mailbox, or a lease held by another run: nothing to do), renews it in every write it makes
(:func:`renew`: a run that lost it stops without writing), and gives it back with its outcome
(:func:`release`, :func:`record_failure`). See :mod:`models.lease`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlmodel import Session, col, select

from models import EmailAccount, Organization, utcnow
from models.db import get_engine
from models.lease import Lease
from ops import metrics
from ops.settings import get_settings
from pipeline.clients.imap import ImapErrorKind
from pipeline.flows.events_outbox import note_sync_state

__all__ = ["ERROR_AFTER_FAILURES", "FETCH_LEASE", "Claim", "claim", "record_failure", "release", "renew"]

log = structlog.get_logger("mailpipe.fetch")

FETCH_LEASE = Lease(EmailAccount, "id", "fetch_owner", "fetch_lease_until", timedelta(minutes=5))
MAX_BACKOFF = timedelta(hours=1)
ERROR_AFTER_FAILURES = 3
_LIVE = (col(EmailAccount.deleted_at).is_(None),)


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed mailbox: its rows as they were when claimed, and the run that holds the lease."""

    account: EmailAccount
    org: Organization
    owner: str


def claim(account_id: str, token: str, owner: str) -> Claim | None:
    """Take the account's fetch lease if ``token`` is current, the mailbox syncs, and nobody else holds it."""
    with Session(get_engine(), expire_on_commit=False) as s:
        taken = FETCH_LEASE.claim(s, account_id, owner, where=(
            col(EmailAccount.fetch_token) == token, *_LIVE,
            col(EmailAccount.sync_state).not_in(("disabled", "reconnect_required"))),
            sync_state="syncing")
        if not taken:
            s.rollback()
            return None
        s.commit()
        account = s.get(EmailAccount, account_id)
        assert account is not None
        org = s.get(Organization, account.org_id)
        assert org is not None
        return Claim(account, org, owner)


def renew(s: Session, account_id: str, owner: str, **values: Any) -> None:
    """Extend the lease inside the caller's transaction (writing ``values``); LeaseLost if this run lost it."""
    FETCH_LEASE.renew(s, account_id, owner, where=_LIVE, **values)


def release(account_id: str, owner: str, **values: Any) -> None:
    """Give the lease back with the run's outcome ``values``."""
    with Session(get_engine()) as s:
        if FETCH_LEASE.release(s, account_id, owner, **values) and "sync_state" in values:
            note_sync_state(s, account_id, values["sync_state"], error=values.get("last_error"), error_code=values.get("last_error_code"))
        s.commit()


def failures(account_id: str) -> int:
    """The account's consecutive failures as stored now."""
    with Session(get_engine()) as s:
        return int(s.execute(select(EmailAccount.consecutive_failures).where(EmailAccount.id == account_id)).scalar_one())


def record_failure(account: EmailAccount, owner: str, kind: str, message: str) -> int:
    """Count a failure and release the lease; after a few (at once for auth) show the account in error."""
    count = account.consecutive_failures + 1
    interval = timedelta(seconds=account.poll_seconds or get_settings().poll_seconds)
    backoff = min(interval * (2 ** min(count, 10)), MAX_BACKOFF)
    state = "error" if kind == ImapErrorKind.AUTH.value or count >= ERROR_AFTER_FAILURES else "idle"
    reason = f"{kind}: reconnect needed: {message}" if kind == ImapErrorKind.AUTH.value else f"{kind}: {message}"
    release(account.id, owner, consecutive_failures=count, sync_state=state, last_error=reason[:2000],
            last_error_code=kind, next_fetch_at=utcnow() + backoff)
    metrics.FETCH_ERRORS.labels(kind).inc()
    log.warning("fetch_failed", account_id=account.id, kind=kind, failures=count, state=state)
    return count
