"""The IDLE watcher (``mailpipe watcher``, or a thread of ``serve``): holds one IMAP connection in IDLE
on INBOX for each mailbox of its share, so new mail is fetched within seconds instead of at the next poll.

Every round (a quarter of the lease period) it heartbeats, renews its leases, claims or gives back
mailboxes toward its fair share (:mod:`pipeline.flows.idle_leases`), and starts or stops one
:class:`pipeline.flows.idle_mailbox.MailboxIdler` thread per mailbox. A thread per connection keeps
the one IMAP client the rest of mailpipe uses (connection guard, literal LOGIN, XOAUTH2); an idle
thread sits in ``poll()`` and costs no CPU (README "Real time" has the measurements).

One dispatcher thread does all the database and broker work the idlers ask for: "fetch this
mailbox now" (:func:`pipeline.flows.sync.fetch_now`, the same fetch the scheduler and the API run,
one per mailbox at a time; a fetch already running is asked again when it ends) and applying flag
changes and expunges (:func:`pipeline.flows.server_state.apply_server_changes`).
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import structlog
from sqlalchemy import select
from sqlmodel import Session, col

from models import EmailAccount, utcnow
from models.db import get_engine
from ops import metrics
from pipeline.flows.idle_leases import give_back, mark_idling, mark_no_idle, retire, round_trip
from pipeline.flows.idle_mailbox import IdleHooks, MailboxIdler
from pipeline.flows.server_state import ServerReport, apply_server_changes
from pipeline.flows.sync import fetch_now
from pipeline.stages.idle import EventActions, fair_share

__all__ = ["Watcher", "WatcherConfig"]

log = structlog.get_logger("mailpipe.watcher")

INBOX = "INBOX"
RETRY_BUSY_SECONDS = 0.5
RETRY_FAILED_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class WatcherConfig:
    """``capacity``: mailboxes this watcher holds at most; ``lease_seconds``: how long a dead watcher's
    mailboxes stay unheld; ``reissue_seconds``: IDLE is renewed this often (at most 25 minutes)."""

    capacity: int = 2000
    lease_seconds: float = 60.0
    reissue_seconds: float = 25 * 60.0
    connect_concurrency: int = 16


class Watcher:
    """Holds a fair share of the mailboxes in IDLE until :meth:`stop`."""

    def __init__(self, config: WatcherConfig) -> None:
        self.config = config
        self.id = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
        self.idlers: dict[str, MailboxIdler] = {}
        self._idlers_lock = threading.Lock()
        self._idling: set[str] = set()
        self._idling_news: dict[str, bool] = {}
        self._news_lock = threading.Lock()
        self._work: queue.Queue[tuple[str, str, int, EventActions | None]] = queue.Queue()
        self._busy: dict[str, float] = {}
        self._stop = threading.Event()
        self._gate = threading.Semaphore(config.connect_concurrency)
        self._threads: list[threading.Thread] = []
        self.hooks = IdleHooks(fetch=lambda acc: self._work.put(("fetch", acc, 0, None)),
                               state=lambda acc, uv, actions: self._work.put(("state", acc, uv, actions)),
                               idling=self._note_idling,
                               no_idle=lambda acc: self._work.put(("no_idle", acc, 0, None)))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the rounds and the dispatcher on background threads."""
        for target, name in ((self._rounds, "watcher-rounds"), (self._dispatch, "watcher-dispatch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("watcher_started", watcher=self.id, capacity=self.config.capacity, lease_seconds=self.config.lease_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection, give every mailbox back (others claim them at once), stop."""
        self._stop.set()
        with self._idlers_lock:
            idlers = list(self.idlers.values())
        for idler in idlers:
            idler.stop()
        deadline = time.monotonic() + timeout
        for idler in idlers:
            idler.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            retire(self.id)
        except Exception as exc:  # the database being away only delays the hand-over to the lease period
            log.warning("watcher_retire_failed", error=type(exc).__name__)
        metrics.IDLE_CONNECTIONS.set(0)
        metrics.IDLE_HELD.set(0)
        log.info("watcher_stopped", watcher=self.id)

    def wait(self) -> None:
        """Block until :meth:`stop` was called."""
        self._stop.wait()

    # -- rounds --------------------------------------------------------------------------------

    def _rounds(self) -> None:
        interval = max(0.5, self.config.lease_seconds / 4)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._round()
            except Exception as exc:  # the database away: keep the connections, try again next round
                log.warning("watcher_round_failed", error=type(exc).__name__, exc_info=exc)
            self._stop.wait(max(0.05, interval - (time.monotonic() - started)))

    def _round(self) -> None:
        with self._idlers_lock:
            held = set(self.idlers)
        r = round_trip(self.id, socket.gethostname(), os.getpid(), held, len(self._idling), self.config.capacity,
                       timedelta(seconds=self.config.lease_seconds), partial(_share, capacity=self.config.capacity))
        lost = held - r.kept
        for account_id in sorted(lost | set(r.give_back)):
            self._drop(account_id)
        give_back(self.id, r.give_back)
        if self._stop.is_set():
            return
        for account_id in r.claimed:
            idler = MailboxIdler(account_id, self.hooks, reissue_seconds=self.config.reissue_seconds, connect_gate=self._gate)
            with self._idlers_lock:
                self.idlers[account_id] = idler
            idler.start()
        if lost or r.claimed or r.give_back:
            log.info("watcher_round", watcher=self.id, held=len(self.idlers), claimed=len(r.claimed), lost=len(lost),
                     gave_back=len(r.give_back), share=r.share, due=r.due, watchers=r.live)
        metrics.IDLE_HELD.set(len(self.idlers))

    def _note_idling(self, account_id: str, idling: bool) -> None:
        with self._news_lock:
            if (account_id in self._idling) == idling:
                return
            if idling:
                self._idling.add(account_id)
            else:
                self._idling.discard(account_id)
            self._idling_news[account_id] = idling
            metrics.IDLE_CONNECTIONS.set(len(self._idling))

    # -- dispatcher ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            try:
                kind, account_id, uidvalidity, actions = self._work.get(timeout=self._next_wait())
            except queue.Empty:
                kind = ""
            try:
                if kind == "fetch":
                    self._fetch(account_id)
                elif kind == "state" and actions is not None:
                    apply_server_changes(account_id, INBOX, uidvalidity, ServerReport(actions.flags, actions.modseqs, actions.gone))
                elif kind == "no_idle":
                    self._drop_no_idle(account_id)
                self._retry_busy()
                self._flush_idling()
            except Exception as exc:  # the database or broker away: ask again shortly (a fetch is never dropped)
                log.warning("watcher_dispatch_failed", kind=kind, error=type(exc).__name__, detail=str(exc)[:300])
                if kind == "fetch":
                    self._busy[account_id] = time.monotonic() + RETRY_FAILED_SECONDS

    def _next_wait(self) -> float:
        if not self._busy:
            return 0.25
        return max(0.01, min(0.25, min(self._busy.values()) - time.monotonic()))

    def _fetch(self, account_id: str) -> None:
        """The one ingest path: fetch now; if a fetch is running, ask again when it has ended."""
        if fetch_now(account_id):
            self._busy.pop(account_id, None)
        elif _fetch_running(account_id):
            self._busy[account_id] = time.monotonic() + RETRY_BUSY_SECONDS
        else:
            self._busy.pop(account_id, None)

    def _retry_busy(self) -> None:
        now = time.monotonic()
        for account_id in [a for a, due in self._busy.items() if due <= now]:
            try:
                self._fetch(account_id)
            except Exception:  # still away: try again later
                self._busy[account_id] = now + RETRY_FAILED_SECONDS
                raise

    def _flush_idling(self) -> None:
        with self._news_lock:
            news, self._idling_news = self._idling_news, {}
        if not news:
            return
        try:
            mark_idling(self.id, [a for a, on in news.items() if on], [a for a, on in news.items() if not on])
        except Exception:
            with self._news_lock:  # written next time, unless something newer came meanwhile
                self._idling_news = {**news, **self._idling_news}
            raise

    def _drop(self, account_id: str) -> None:
        with self._idlers_lock:
            idler = self.idlers.pop(account_id, None)
        if idler is not None:
            idler.stop()

    def _drop_no_idle(self, account_id: str) -> None:
        self._drop(account_id)
        mark_no_idle(self.id, account_id)


def _share(due: int, live: int, *, capacity: int) -> int:
    return fair_share(due, live, capacity)


def _fetch_running(account_id: str) -> bool:
    with Session(get_engine()) as s:
        until = s.execute(select(col(EmailAccount.fetch_lease_until)).where(col(EmailAccount.id) == account_id)).scalar_one_or_none()
    return until is not None and until > utcnow()
