"""Applying what a server reports about a folder (flag changes, expunges) to the stored locations and
their emails, in one transaction.

Called by the fetch run (CHANGEDSINCE/VANISHED or the recent-window comparison) and by the IDLE
watcher (untagged FETCH and VANISHED). An email's ``seen``/``flagged``/``answered`` follow its
locations, except the flags a user's pending change through the API is still writing to the server;
an email whose last location was expunged gets ``deleted_on_server`` (it stays in the CRM's record).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import structlog
from sqlalchemy import delete, select, update
from sqlmodel import Session, col

from models import Email, EmailLocation, FlagChange, utcnow
from models.db import get_engine
from ops import metrics
from pipeline.stages.mailbox_state import email_flags, location_updates

__all__ = ["ServerReport", "apply_server_changes"]

log = structlog.get_logger("mailpipe.state")


@dataclass(frozen=True, slots=True)
class ServerReport:
    """One folder's news: flags by UID (with MODSEQs under CONDSTORE) and UIDs gone."""

    flags: Mapping[int, Collection[str]]
    modseqs: Mapping[int, int]
    gone: Collection[int]


def apply_server_changes(account_id: str, folder: str, uidvalidity: int, report: ServerReport) -> int:
    """Write the report; returns how many emails changed (flags or deleted_on_server)."""
    uids = set(report.flags) | set(report.gone)
    if not uids:
        return 0
    now = utcnow()
    with Session(get_engine()) as s:
        rows = list(s.execute(select(EmailLocation).where(
            col(EmailLocation.account_id) == account_id, col(EmailLocation.folder) == folder, col(EmailLocation.uidvalidity) == uidvalidity,
            col(EmailLocation.uid).in_(sorted(uids)))).scalars())
        if not rows:
            return 0
        by_uid = {row.uid: row for row in rows}
        touched = {row.email_id for row in rows if row.uid in report.gone}
        stored = {row.uid: (row.flags, row.modseq) for row in rows if row.uid not in report.gone}
        for change in location_updates(stored, report.flags, report.modseqs):
            row = by_uid[change.uid]
            s.execute(update(EmailLocation).where(col(EmailLocation.id) == row.id).values(flags=list(change.flags), modseq=change.modseq))
            touched.add(row.email_id)
        gone_ids = [by_uid[uid].id for uid in report.gone if uid in by_uid]
        if gone_ids:
            s.execute(delete(EmailLocation).where(col(EmailLocation.id).in_(gone_ids)))
        changed = _refresh_emails(s, sorted(touched), lost_location=bool(gone_ids), now=now)
        s.commit()
    if gone_ids:
        metrics.SERVER_STATE.labels("expunged").inc(len(gone_ids))
    if changed:
        metrics.SERVER_STATE.labels("emails_changed").inc(changed)
        log.info("server_state_applied", account_id=account_id, folder=folder, emails=changed, expunged=len(gone_ids))
    return changed


def _refresh_emails(s: Session, email_ids: list[str], *, lost_location: bool, now: object) -> int:
    """Recompute the emails' flags from their locations; mark those left without one deleted."""
    if not email_ids:
        return 0
    remaining: dict[str, list[list[str]]] = {eid: [] for eid in email_ids}
    rows = s.execute(select(col(EmailLocation.email_id), col(EmailLocation.flags)).where(col(EmailLocation.email_id).in_(email_ids))).all()
    for eid, flags in rows:
        remaining[eid].append(flags)
    pending: dict[str, FlagChange] = {}
    for change in s.execute(select(FlagChange).where(col(FlagChange.email_id).in_(email_ids), col(FlagChange.state) == "pending")
                            .order_by(col(FlagChange.created_at))).scalars():
        pending[change.email_id] = change  # the newest pending change wins
    changed = 0
    for email in s.execute(select(Email).where(col(Email.id).in_(email_ids))).scalars():
        locations = remaining[email.id]
        values: dict[str, object] = {}
        if locations:
            flags = email_flags(locations)
            wish = pending.get(email.id)
            seen = wish.seen if wish is not None and wish.seen is not None else flags.seen
            flagged = wish.flagged if wish is not None and wish.flagged is not None else flags.flagged
            for name, value in (("seen", seen), ("flagged", flagged), ("answered", flags.answered)):
                if getattr(email, name) != value:
                    values[name] = value
            if email.deleted_on_server:
                values.update(deleted_on_server=False, deleted_on_server_at=None)
        elif lost_location and not email.deleted_on_server:
            values.update(deleted_on_server=True, deleted_on_server_at=now)
        if values:
            s.execute(update(Email).where(col(Email.id) == email.id).values(**values))
            changed += 1
    return changed
