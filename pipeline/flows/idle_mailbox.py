"""One mailbox's IDLE connection (a thread of the watcher): connect, EXAMINE INBOX, IDLE, report.

The loop connects through :func:`pipeline.flows.connections.open_imap` (the connection guard, and an
OAuth mailbox's token refreshed before it is used), asks for one catch-up fetch on every (re)connect,
and hands what the server says to the watcher: new mail → a fetch, flag changes and expunges → the
stored state. IDLE is ended and issued again every ``reissue`` seconds (at most 25 minutes). A lost
connection is reconnected after a backoff with jitter. A server without IDLE is reported once, and
the mailbox keeps polling. The thread does I/O only; the watcher's dispatcher does the database and
broker work, so a thousand idle connections do not hold a thousand database or AMQP connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlmodel import Session

from models import EmailAccount
from models.db import get_engine
from ops import metrics
from pipeline.clients.imap import ImapError, ImapSession, MailboxEvent
from pipeline.flows.connections import open_imap
from pipeline.flows.tokens import CredentialsUnavailable, ReconnectRequired
from pipeline.stages.idle import MAX_REISSUE_SECONDS, EventActions, backoff_seconds, event_actions

__all__ = ["IdleHooks", "MailboxIdler"]

log = structlog.get_logger("mailpipe.watcher")

INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class IdleHooks:
    """What the watcher does with an idler's news (each called from the idler's thread; quick)."""

    fetch: Callable[[str], None]
    """New mail or a change only a fetch can place: queue a fetch of this mailbox (the fetch job reads
    through pipeline.clients.imap: EXAMINE and BODY.PEEK[], so nothing is marked \\Seen)."""
    state: Callable[[str, int, EventActions], None]
    """(account_id, INBOX's UIDVALIDITY, what changed): apply flag changes and expunges."""
    idling: Callable[[str, bool], None]
    """The connection entered IDLE (True) or left it (False)."""
    no_idle: Callable[[str], None]
    """The server offers no IDLE: stop holding this mailbox."""


class _NoIdle(Exception):
    """The server does not offer IDLE."""


class MailboxIdler(threading.Thread):
    """Holds one mailbox's INBOX in IDLE until :meth:`stop`."""

    def __init__(self, account_id: str, hooks: IdleHooks, *, reissue_seconds: float, connect_gate: threading.Semaphore) -> None:
        super().__init__(name=f"idle-{account_id}", daemon=True)
        self.account_id = account_id
        self.hooks = hooks
        self.reissue = min(reissue_seconds, MAX_REISSUE_SECONDS)
        self.gate = connect_gate
        self._stopping = threading.Event()
        self._session: ImapSession | None = None
        self._lock = threading.Lock()
        self._reached_idle = False

    def stop(self) -> None:
        """Stop idling (from any thread): the connection is cut under a blocked wait."""
        self._stopping.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.interrupt()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            reason = "connect"
            try:
                self._hold()
                return
            except _NoIdle:
                log.info("idle_unsupported", account_id=self.account_id)
                self.hooks.no_idle(self.account_id)
                return
            except ImapError as exc:
                reason = "bye" if "ended the session" in exc.message else exc.kind.value
                if self._stopping.is_set():
                    return
                log.info("idle_connection_lost", account_id=self.account_id, kind=exc.kind.value, error=exc.message[:200])
            except ReconnectRequired:
                reason = "token"
                log.info("idle_reconnect_required", account_id=self.account_id)
            except CredentialsUnavailable:
                reason = "token"
            except Exception as exc:  # a bug must not kill the watcher; count it and retry later
                reason = "internal"
                log.error("idle_failed", account_id=self.account_id, error=type(exc).__name__, exc_info=exc)
            finally:
                self._close()
            if self._reached_idle:  # it idled fine until now: this is a first failure again
                failures, self._reached_idle = 0, False
            failures += 1
            metrics.IDLE_RECONNECTS.labels(reason).inc()
            wait = backoff_seconds(failures, cap=300.0 if reason not in ("auth", "token") else 900.0)
            if self._stopping.wait(wait):
                return

    def _hold(self) -> None:
        """Connect, catch up, then IDLE until stopped; raises when the connection is lost."""
        with self.gate:  # a bounded number of logins at once, whatever the number of mailboxes
            if self._stopping.is_set():
                return
            account = self._account()
            if account is None:
                return
            session = open_imap(account)
            with self._lock:
                self._session = session
            if self._stopping.is_set():
                return
            if "IDLE" not in session.capabilities:
                raise _NoIdle()
            status = session.select(INBOX, readonly=True)
            session.idle_start()
        self._reached_idle = True
        self.hooks.idling(self.account_id, True)
        self.hooks.fetch(self.account_id)  # catch up on whatever arrived while nobody was idling
        self._idle(session, status.uidvalidity)

    def _idle(self, session: ImapSession, uidvalidity: int) -> None:
        started = time.monotonic()
        while not self._stopping.is_set():
            left = self.reissue - (time.monotonic() - started)
            if left <= 0:
                self._report(session.idle_done(), uidvalidity)
                session.idle_start()
                started = time.monotonic()
                continue
            self._report(session.idle_wait(left), uidvalidity)

    def _report(self, events: list[MailboxEvent], uidvalidity: int) -> None:
        if not events:
            return
        actions = event_actions(events)
        if actions.flags or actions.gone:
            self.hooks.state(self.account_id, uidvalidity, actions)
        if actions.fetch:
            self.hooks.fetch(self.account_id)

    def _account(self) -> EmailAccount | None:
        with Session(get_engine(), expire_on_commit=False) as s:
            account = s.get(EmailAccount, self.account_id)
        if account is None or account.deleted_at is not None:
            return None
        return account

    def _close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        self.hooks.idling(self.account_id, False)
        if session is not None:
            try:
                session.close()
            except ImapError:
                pass
