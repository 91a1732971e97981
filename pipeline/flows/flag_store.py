"""API → server flags: a user marks an email read/unread or flagged in the CRM, and every location of
it on the server gets the same flags (``UID STORE``), so every mail client shows it.

:func:`request_flag_change` records the change (a ``flag_changes`` row) and shows it on the email in
one transaction, then enqueues ``flags.store``. :func:`run_flag_change` writes it to each location
whose folder still has the UIDVALIDITY it was stored under; a later change of the same email
supersedes an earlier one that has not run yet (so a retried old change never undoes a new one).
Failures are retried by Dramatiq; the sweep re-sends changes whose message was lost, and a change
still failing after :data:`MAX_ATTEMPTS` is recorded as failed (the next sync shows the server's flags).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlmodel import Session, col

from models import Email, EmailAccount, EmailLocation, FlagChange, utcnow
from models.db import get_engine
from ops import metrics
from pipeline import jobs
from pipeline.clients.imap import ImapError
from pipeline.flows.connections import open_imap
from pipeline.flows.tokens import CredentialsUnavailable
from pipeline.scheduler import register_sweep
from pipeline.stages.mailbox_state import store_actions

__all__ = ["MAX_ATTEMPTS", "request_flag_change", "run_flag_change", "sweep_flag_changes"]

log = structlog.get_logger("mailpipe.flags")

MAX_ATTEMPTS = 8
RESEND_AFTER = timedelta(minutes=5)


def request_flag_change(org_id: str, email_id: str, *, seen: bool | None, flagged: bool | None, user_id: str | None = None) -> bool:
    """Record the change and show it on the email; False when the email is not the org's (or deleted).
    Nothing to change (both None): True, nothing recorded."""
    with Session(get_engine()) as s:
        email = s.get(Email, email_id)
        if email is None or email.org_id != org_id or email.deleted_at is not None:
            return False
        if seen is None and flagged is None:
            return True
        change = FlagChange(org_id=org_id, email_id=email.id, account_id=email.account_id, seen=seen, flagged=flagged,
                            user_id=user_id)
        s.add(change)
        values = {name: value for name, value in (("seen", seen), ("flagged", flagged)) if value is not None}
        s.execute(update(Email).where(col(Email.id) == email.id).values(**values))
        s.commit()
        change_id = change.id
    jobs.FLAG_STORE.send(change_id)
    return True


def run_flag_change(change_id: str) -> None:
    """Write one recorded change to the server; raises (for a retry) while attempts remain."""
    with Session(get_engine(), expire_on_commit=False) as s:
        change = s.get(FlagChange, change_id)
        if change is None or change.state != "pending":
            return
        newer = s.execute(select(col(FlagChange.id)).where(col(FlagChange.email_id) == change.email_id,
                                                      col(FlagChange.created_at) > change.created_at).limit(1)).first()
        if newer is not None:
            _finish(s, change, "superseded")
            return
        account = s.get(EmailAccount, change.account_id)
        if account is None or account.deleted_at is not None:
            _finish(s, change, "failed", error="the mailbox is no longer connected")
            return
        locations = list(s.execute(select(EmailLocation).where(col(EmailLocation.email_id) == change.email_id)).scalars())
        change.attempts += 1
        change.attempted_at = utcnow()
        s.add(change)
        s.commit()
    add, remove = store_actions(change.seen, change.flagged)
    try:
        written = _store(account, locations, add, remove)
    except (ImapError, CredentialsUnavailable) as exc:
        _failed_attempt(change, str(exc))
        raise
    with Session(get_engine()) as s:
        for location in written:
            flags = (set(location.flags) | set(add)) - set(remove)
            s.execute(update(EmailLocation).where(col(EmailLocation.id) == location.id).values(flags=sorted(flags)))
        _finish(s, change, "done", locations=len(written))
    log.info("flags_stored", email_id=change.email_id, locations=len(written), add=add, remove=remove)


def _store(account: EmailAccount, locations: list[EmailLocation], add: list[str], remove: list[str]) -> list[EmailLocation]:
    """UID STORE on every location whose folder still has its UIDVALIDITY; the locations written."""
    if not locations:
        return []
    by_folder: dict[str, list[EmailLocation]] = defaultdict(list)
    for location in locations:
        by_folder[location.folder].append(location)
    written: list[EmailLocation] = []
    imap = open_imap(account)
    try:
        for folder, here in sorted(by_folder.items()):
            status = imap.select(folder, readonly=False)
            current = [loc for loc in here if loc.uidvalidity == status.uidvalidity]  # other UIDs name other messages now
            uids = [loc.uid for loc in current]
            if add:
                imap.add_flags(folder, uids, add)
            if remove:
                imap.remove_flags(folder, uids, remove)
            written += current
    finally:
        imap.close()
    return written


def _failed_attempt(change: FlagChange, error: str) -> None:
    with Session(get_engine()) as s:
        if change.attempts >= MAX_ATTEMPTS:
            _finish(s, change, "failed", error=error)
            return
        s.execute(update(FlagChange).where(col(FlagChange.id) == change.id).values(error=error[:2000]))
        s.commit()
    metrics.FLAG_STORES.labels("retry").inc()
    log.warning("flags_store_failed", email_id=change.email_id, attempts=change.attempts, error=error[:200])


def _finish(s: Session, change: FlagChange, state: str, *, error: str | None = None, locations: int = 0) -> None:
    s.execute(update(FlagChange).where(col(FlagChange.id) == change.id, col(FlagChange.state) == "pending").values(
        state=state, done_at=utcnow(), error=error[:2000] if error else None, locations=locations))
    s.commit()
    metrics.FLAG_STORES.labels(state).inc()


@register_sweep("flag_changes")
def sweep_flag_changes(session: Session, now: datetime) -> int:
    """Re-send pending changes whose last attempt (or creation) is older than :data:`RESEND_AFTER`."""
    stale = now - RESEND_AFTER
    ids = list(session.execute(select(col(FlagChange.id)).where(
        col(FlagChange.state) == "pending", col(FlagChange.created_at) < stale,
        (col(FlagChange.attempted_at).is_(None)) | (col(FlagChange.attempted_at) < stale)).limit(200)).scalars())
    if not ids:
        return 0
    session.execute(update(FlagChange).where(col(FlagChange.id).in_(ids)).values(attempted_at=now))
    session.commit()
    for change_id in ids:
        jobs.FLAG_STORE.send(change_id)
    return len(ids)
