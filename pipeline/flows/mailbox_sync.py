"""Walking one mailbox's folders by UIDVALIDITY/UID cursors and storing what is new, batch by batch.

Reading never changes the mailbox (EXAMINE + BODY.PEEK[]); ``\\Seen`` is set only when the
organization turned ``mark_seen`` on. Each batch is stored in one transaction (raw bytes first,
then email rows, locations and the advanced cursor), guarded by the fetch lease, so a killed worker
repeats at most one batch and the unique keys turn the repeat into a no-op. New email ids go down
the ingest chain.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import structlog
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from models import Email, EmailAccount, EmailLocation, FolderState, utcnow
from models.db import get_engine
from models.upsert import insert_ignore
from ops import metrics
from ops.settings import get_settings
from pipeline.clients.imap import FetchedMessage, ImapSession
from pipeline.clients.storage import put_raw
from pipeline.flows.chain import FINAL_STATES, raw_digest, start_chain
from pipeline.flows.flag_sync import sync_folder_flags
from pipeline.flows.mailbox_lease import Claim, renew
from pipeline.flows.purge import erased_filter, identity_parts
from pipeline.stages import sync
from pipeline.stages.identity import message_identity
from pipeline.stages.mailbox_state import email_flags

__all__ = ["JOB_BUDGET_SECONDS", "STORE_BATCH", "MailboxSync", "adopt_known", "adopt_sent"]

log = structlog.get_logger("mailpipe.fetch")

STORE_BATCH = 100           # messages per transaction
JOB_BUDGET_SECONDS = 120.0  # then continue in a fresh message (stay far below the time limit)


class MailboxSync:
    """One fetch job: walks the chosen folders, storing batches until done, budget or rate limit."""

    def __init__(self, claim: Claim, session: ImapSession) -> None:
        self.account = claim.account
        self.org = claim.org
        self.imap = session
        self.owner = claim.owner
        self.settings = get_settings()
        self.deadline = time.monotonic() + JOB_BUDGET_SECONDS
        self.more = False
        now = utcnow()
        with Session(get_engine()) as s:  # the hourly budget is shared by all of the user's mailboxes
            siblings = [sync.RateWindow(start, n) for start, n in s.execute(
                select(EmailAccount.rate_window_start, EmailAccount.rate_window_count).where(
                    EmailAccount.org_id == self.account.org_id, EmailAccount.user_id == self.account.user_id,
                    EmailAccount.id != self.account.id)).all()]
        allowance, window = sync.rate_allowance(
            sync.RateWindow(self.account.rate_window_start, self.account.rate_window_count),
            now=now, limit=self.settings.sync_rate_per_hour, siblings=siblings)
        self.allowance = allowance
        self.window = window
        self.rate_limited = False
        self.stored = 0

    def run(self) -> None:
        folders = self.imap.list_folders()
        gmail = sync.is_gmail(self.imap.capabilities, folders)
        for choice in sync.choose_folders(self.imap.capabilities, folders):
            if not self._folder(choice, gmail):
                break

    def _folder(self, choice: sync.FolderChoice, gmail: bool) -> bool:
        """Sync one folder; False when the job must stop (budget or rate limit)."""
        status = self.imap.status(choice.name)
        with Session(get_engine(), expire_on_commit=False) as s:
            state = s.execute(select(FolderState).where(FolderState.account_id == self.account.id,
                                                        FolderState.name == choice.name)).scalar_one_or_none()
            if state is None:
                insert_ignore(s, FolderState, [{"account_id": self.account.id, "name": choice.name, "role": choice.role}],
                              ["account_id", "name"])
                s.commit()
                state = s.execute(select(FolderState).where(FolderState.account_id == self.account.id,
                                                            FolderState.name == choice.name)).scalar_one()
        cursor = None if state.uidvalidity is None else sync.FolderCursor(
            state.uidvalidity, state.uidnext, state.highestmodseq, state.last_uid, state.backfill_low_uid, state.backfill_done)
        plan = sync.plan_folder(cursor, status, now=utcnow(), backfill_days=self.settings.backfill_days)
        if cursor is not None and not plan.reset:  # flags changed and messages expunged on the server
            sync_folder_flags(self.imap, self.account.id, choice.name, status.uidvalidity, stored_modseq=cursor.highestmodseq,
                              server_modseq=status.highestmodseq, readonly=not self.org.mark_seen)
        if plan.reset:
            self._reset_folder(state, plan, status.messages)
        if plan.action == "noop":
            self._save_cursor(state.id, plan.cursor, full=True)
            return True
        self.imap.select(choice.name, readonly=not self.org.mark_seen)
        new_uids = self.imap.search_uids(uid_from=plan.new_from) if plan.new_from is not None else []
        backfill_uids: list[int] = []
        if plan.backfill_below is not None and plan.backfill_below > 1:
            backfill_uids = [u for u in self.imap.search_uids(since=plan.backfill_since) if u < plan.backfill_below]
        if plan.reset:
            with Session(get_engine()) as s:
                renew(s, self.account.id, self.owner, backfill_total=EmailAccount.backfill_total + len(backfill_uids))
                s.commit()
        cursor = plan.cursor
        pending_new = sorted(u for u in set(new_uids) if u > cursor.last_uid)
        pending_old = sorted(set(backfill_uids), reverse=True)
        if not pending_old and not cursor.backfill_done:
            cursor = sync.advance(cursor, fetched_new=[], fetched_backfill=[], backfill_exhausted=True)
        while pending_new or pending_old:
            if self.allowance <= 0:
                self.rate_limited = True
                self._save_cursor(state.id, cursor)
                return False
            if time.monotonic() > self.deadline:
                self.more = True
                self._save_cursor(state.id, cursor)
                return False
            take = min(STORE_BATCH, self.allowance)
            fresh, older = sync.select_batch(pending_new, pending_old, last_uid=cursor.last_uid,
                                             backfill_below=cursor.backfill_low_uid if not cursor.backfill_done else None, limit=take)
            if not fresh and not older:
                break
            fetched = list(self.imap.fetch_peek(sorted(fresh + older)))
            taken = set(fresh) | set(older)
            pending_new = [u for u in pending_new if u not in taken]
            pending_old = [u for u in pending_old if u not in taken]
            cursor = sync.advance(cursor, fetched_new=fresh, fetched_backfill=older, backfill_exhausted=not pending_old)
            self._store_batch(state.id, choice, fetched, cursor, new_uids=set(fresh), backfill_count=len(older),
                              silent=plan.reindex, gmail=gmail)
            if self.org.mark_seen and fetched:
                self.imap.add_flags(choice.name, [m.uid for m in fetched], ["\\Seen"])
        self._save_cursor(state.id, cursor, full=True)
        return True

    def _reset_folder(self, state: FolderState, plan: sync.FolderPlan, messages: int) -> None:
        """A first sync or a UIDVALIDITY change: stored UIDs are void; drop the folder's stale locations."""
        with Session(get_engine()) as s:
            s.execute(delete(EmailLocation).where(col(EmailLocation.account_id) == self.account.id,
                                                  col(EmailLocation.folder) == state.name,
                                                  col(EmailLocation.uidvalidity) != plan.cursor.uidvalidity))
            s.commit()
        if plan.reindex:
            log.info("folder_reindex", account_id=self.account.id, folder=state.name, reason=plan.reason)
        self._save_cursor(state.id, plan.cursor)

    def _save_cursor(self, state_id: str, cursor: sync.FolderCursor, *, full: bool = False) -> None:
        values: dict[str, Any] = dict(
            uidvalidity=cursor.uidvalidity, uidnext=cursor.uidnext, highestmodseq=cursor.highestmodseq,
            last_uid=cursor.last_uid, backfill_low_uid=cursor.backfill_low_uid, backfill_done=cursor.backfill_done,
            updated_at=utcnow())
        if full:
            values["last_full_sync"] = utcnow()
        with Session(get_engine()) as s:
            renew(s, self.account.id, self.owner)
            s.execute(update(FolderState).where(col(FolderState.id) == state_id).values(**values))
            s.commit()

    def _store_batch(self, state_id: str, choice: sync.FolderChoice, fetched: list[FetchedMessage],
                     cursor: sync.FolderCursor, *, new_uids: set[int], backfill_count: int, silent: bool, gmail: bool) -> None:
        """Raw bytes to storage, then rows + cursor in one transaction, then the ingest chain."""
        acct = self.account
        rows, locations, legacy = [], [], []
        idents = [message_identity(m.raw, m.gm_msgid if gmail else None) for m in fetched]
        with Session(get_engine()) as s:  # erased or purged by retention: never imported again
            erased = erased_filter(s, acct.id, [identity_parts(i.dedupe_key, i.message_id, [(choice.name, cursor.uidvalidity or 0, m.uid)])
                                                for i, m in zip(idents, fetched, strict=True)])
        for m, ident, gone in zip(fetched, idents, erased, strict=True):
            if gone:
                continue
            legacy.append(ident.legacy_key)
            raw_key = f"raw/{acct.id}/{raw_digest(m.raw)}.eml"
            # Raw bytes are a cache of what the server holds: atomic but not fsynced; if a power
            # cut loses one, the parse stage fetches it again by its location. The bytes are also
            # kept in this process's memory, so a parse running here does not read them back.
            put_raw(raw_key, m.raw)
            rows.append({
                "org_id": acct.org_id, "account_id": acct.id, "dedupe_key": ident.dedupe_key,
                "message_id": ident.message_id, "gm_msgid": m.gm_msgid, "gm_thrid": m.gm_thrid,
                "direction": "outbound" if choice.role == "sent" else "inbound",
                "status": "sent" if choice.role == "sent" else "received",
                "size": m.size or len(m.raw), "raw_key": raw_key, "received_at": m.internaldate,
                "pipeline_state": "fetched", "silent": silent, "stage_at": utcnow(),
                **asdict(email_flags([m.flags])),
            })
            locations.append((ident.dedupe_key, m))
        now = utcnow()
        with Session(get_engine()) as s:
            renew(s, acct.id, self.owner)  # first, so a deleted/disabled/taken-over mailbox stores nothing
            adopt_known(s, acct.id, choice.name, cursor.uidvalidity, rows, locations, legacy)
            if gmail:
                adopt_sent(s, acct.id, rows, locations)
            created = insert_ignore(s, Email, rows, ["account_id", "dedupe_key"])
            keys = [r["dedupe_key"] for r in rows]
            ids = dict(s.execute(select(Email.dedupe_key, Email.id).where(Email.account_id == acct.id,
                                                                          col(Email.dedupe_key).in_(keys))).all())
            insert_ignore(s, EmailLocation, [
                {"email_id": ids[key], "account_id": acct.id, "folder": choice.name, "uidvalidity": cursor.uidvalidity,
                 "uid": m.uid, "flags": sorted(m.flags)} for key, m in locations
            ], ["account_id", "folder", "uidvalidity", "uid"])
            s.execute(update(FolderState).where(col(FolderState.id) == state_id).values(
                last_uid=cursor.last_uid, backfill_low_uid=cursor.backfill_low_uid, backfill_done=cursor.backfill_done,
                uidvalidity=cursor.uidvalidity, updated_at=now))
            self.window = sync.RateWindow(self.window.start, self.window.count + len(fetched))
            renew(s, acct.id, self.owner, messages_synced=EmailAccount.messages_synced + created,
                   backfill_done=EmailAccount.backfill_done + backfill_count,
                   rate_window_start=self.window.start, rate_window_count=self.window.count)
            pending = list(s.execute(select(Email.id).where(Email.account_id == acct.id, col(Email.dedupe_key).in_(keys),
                                                            col(Email.pipeline_state).not_in(FINAL_STATES))).scalars())
            s.commit()
        for m in fetched:
            if m.internaldate is not None and m.uid in new_uids:
                metrics.SYNC_LAG.observe(max(0.0, (now - m.internaldate).total_seconds()))
        self.allowance -= len(fetched)
        self.stored += created
        metrics.EMAILS_SYNCED.labels(choice.role).inc(created)
        if pending:
            start_chain(pending)


def adopt_known(s: Session, account_id: str, folder: str, uidvalidity: int | None, rows: list[dict[str, Any]],
                 locations: list[tuple[str, FetchedMessage]], legacy: list[str | None]) -> None:
    """Give a message the key its stored copy already has, so a change in how keys are computed never
    imports it twice: first by location (this folder, UIDVALIDITY and UID already belong to an email),
    then by the key earlier releases computed for the same bytes (``Identity.legacy_key``), taken only
    when that row holds these very bytes, since the old header-only key also matched other messages."""
    by_uid = dict(s.execute(
        select(EmailLocation.uid, Email.dedupe_key).join(Email, col(Email.id) == EmailLocation.email_id)
        .where(EmailLocation.account_id == account_id, EmailLocation.folder == folder,
               EmailLocation.uidvalidity == uidvalidity, col(EmailLocation.uid).in_([m.uid for _, m in locations]))).all())
    old = sorted({k for k in legacy if k})
    stored = dict(s.execute(select(Email.dedupe_key, Email.raw_key).where(
        Email.account_id == account_id, col(Email.dedupe_key).in_(old))).all()) if old else {}
    for i, (row, (key, m)) in enumerate(zip(rows, locations, strict=True)):
        adopted = by_uid.get(m.uid)
        if adopted is None and legacy[i] in stored and stored[legacy[i]] == row["raw_key"]:
            adopted = legacy[i]
        if adopted is not None and adopted != key:
            row["dedupe_key"] = adopted
            locations[i] = (adopted, m)


def adopt_sent(s: Session, account_id: str, rows: list[dict[str, Any]], locations: list[tuple[str, FetchedMessage]]) -> None:
    """Gmail files what we sent in its own Sent/All Mail copy, keyed by X-GM-MSGID; give such a copy
    the key of the outbound email we already have (same Message-ID), so it becomes a location of
    that email instead of a second one."""
    mids = [r["message_id"] for r in rows if r["message_id"] and r["dedupe_key"].startswith("gm:")]
    if not mids:
        return
    ours = dict(s.execute(select(Email.message_id, Email.dedupe_key).where(
        Email.account_id == account_id, Email.direction == "outbound", col(Email.message_id).in_(mids),
        col(Email.dedupe_key).not_like("gm:%"))).all())
    for i, row in enumerate(rows):
        key = ours.get(row["message_id"])
        if key is not None and row["dedupe_key"].startswith("gm:"):
            locations[i] = (key, locations[i][1])
            row["dedupe_key"] = key
