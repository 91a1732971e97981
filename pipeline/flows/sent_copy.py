"""An outbound email's Sent copy: the untracked message APPENDed to the account's ``\\Sent`` folder.

The intent (``appending``) is recorded before the APPEND; a run that finds ``appending`` looks for
the message (by Message-ID) before appending again, so a crash never files it twice. Network-type
failures are retried with backoff; others fail the copy (the email itself was sent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import col

from models import Email, EmailAccount, EmailLocation, Outbox, utcnow
from models.upsert import insert_ignore
from ops.settings import Settings
from pipeline.clients.imap import ImapError, ImapErrorKind, ImapSession
from pipeline.clients.storage import get_storage
from pipeline.flows.connections import open_imap
from pipeline.flows.send_due import enqueue_send
from pipeline.flows.send_lease import guard, tx
from pipeline.flows.tokens import CredentialsUnavailable
from pipeline.stages import outbound as plan

__all__ = ["SENT_COPY_ATTEMPTS", "SentCopy", "in_sent_folder", "sent_folder"]

log = structlog.get_logger("mailpipe.send")

SENT_COPY_ATTEMPTS = 5


def sent_folder(session: ImapSession) -> str | None:
    """The folder with the RFC 6154 ``\\Sent`` attribute (names are never guessed)."""
    for f in session.list_folders():
        if "\\Sent" in f.special_use:
            return str(f.name)
    return None


def in_sent_folder(account: EmailAccount, message_id: str | None) -> bool | None:
    """Whether the provider's Sent folder holds our Message-ID (None when it cannot be checked)."""
    try:
        session = open_imap(account)
    except (ImapError, ValueError, CredentialsUnavailable):
        return None
    try:
        folder = sent_folder(session)
        if folder is None or not message_id:
            return None
        return bool(session.search_header(folder, "Message-ID", message_id))
    except ImapError:
        return None
    finally:
        session.close()


class SentCopy:
    """The Sent-copy step of one claimed send run (``hand_back``: the outbox values that give the
    run's lease back in the step's last write)."""

    def __init__(self, email_id: str, owner: str, outbox: Outbox, email: Email, account: EmailAccount,
                 settings: Settings, hand_back: Callable[[], dict[str, Any]]) -> None:
        self.email_id, self.owner, self.outbox, self.email, self.account = email_id, owner, outbox, email, account
        self.settings, self.hand_back = settings, hand_back

    def run(self) -> None:
        """APPEND the untracked message to the \\Sent folder with \\Seen and record its location."""
        was_appending = self.outbox.sent_copy == "appending"
        with tx() as s:
            guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(sent_copy="appending"))
            s.commit()
        raw = get_storage().get(self.outbox.base_key)
        try:
            session = open_imap(self.account)
        except ImapError as exc:
            self._retry(exc)
            return
        except ValueError as exc:
            self.done("failed", f"configuration: {exc}")
            return
        except CredentialsUnavailable as exc:  # sent already; the copy waits like a network failure
            self._retry(ImapError(ImapErrorKind.CONNECT, f"no OAuth token: {exc}"))
            return
        try:
            folder = sent_folder(session)
            if folder is None:
                self.done("failed", "no folder has the \\Sent special-use attribute")
                return
            uids = session.search_header(folder, "Message-ID", self.email.message_id or "") if was_appending else []
            status = session.status(folder)
            if uids:
                where: tuple[int, int] | None = (status.uidvalidity, uids[-1])
            else:
                where = session.append(folder, raw, ["\\Seen"], self.email.sent_at or utcnow())
                if where is None:  # no UIDPLUS: find what we just appended
                    found = session.search_header(folder, "Message-ID", self.email.message_id or "")
                    where = (session.status(folder).uidvalidity, found[-1]) if found else None
        except ImapError as exc:
            self._retry(exc)
            return
        finally:
            session.close()
        with tx() as s:
            guard(s, self.email_id, self.owner)
            if where is not None:
                insert_ignore(s, EmailLocation, [{"email_id": self.email_id, "account_id": self.account.id, "folder": folder,
                                                  "uidvalidity": where[0], "uid": where[1], "flags": ["\\Seen"]}],
                              ["account_id", "folder", "uidvalidity", "uid"])
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(sent_copy="done", sent_copy_error=None,
                                                                                    **self.hand_back()))
            s.commit()
        log.info("sent_copy_saved", email_id=self.email_id, folder=folder, uid=where[1] if where else None)

    def _retry(self, exc: ImapError) -> None:
        """A network-type IMAP failure is retried with backoff (the sweep brings it back); others fail."""
        reason = f"{exc.kind.value}: {exc.message}"
        tries = self.outbox.sent_copy_attempts + 1
        transient = exc.kind in (ImapErrorKind.CONNECT, ImapErrorKind.TIMEOUT, ImapErrorKind.DNS, ImapErrorKind.PROTOCOL)
        if not transient or tries >= SENT_COPY_ATTEMPTS + 1:
            self.done("failed", f"{reason} (after {tries} attempts)" if transient else reason)
            return
        wait = plan.backoff(tries, max(self.settings.send_retry_base_seconds, 1.0))
        with tx() as s:
            guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(
                sent_copy="appending", sent_copy_error=reason, sent_copy_attempts=tries,
                next_attempt_at=utcnow() + wait, enqueued_at=utcnow()))
            s.commit()
        enqueue_send(self.email_id, delay_ms=int(wait.total_seconds() * 1000))
        log.warning("sent_copy_retry", email_id=self.email_id, error=reason, wait=wait.total_seconds())

    def done(self, state: str, error: str | None) -> None:
        with tx() as s:
            guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(sent_copy=state, sent_copy_error=error))
            s.commit()
        log.warning("sent_copy_failed", email_id=self.email_id, error=error)
