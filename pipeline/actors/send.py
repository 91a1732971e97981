"""``send.email``: deliver one outbound email over SMTP exactly once, copy it to Sent, start ingest.

Every step is written to the database before it happens: the delivery is ``sending`` before the
connection opens and ``data`` right before the DATA command (``before_data`` hook). A redelivered
message after a crash therefore knows what the server can have seen: a delivery still in
``sending`` is sent (the server never got DATA); one in ``data`` is reconciled
(:func:`pipeline.stages.outbound.reconcile`: the provider's own Sent copy decides, else it is
recorded as sent-but-unconfirmed) and never blindly resent. 4xx replies and network errors retry
with exponential backoff (DB clock + a delayed message + the ``send_due`` sweep); a 5xx reply
fails the delivery at once. The Sent copy (IMAP APPEND of the untracked message with ``\\Seen``)
records intent (``appending``) first and looks for the message before appending again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from dramatiq.middleware import CurrentMessage
from sqlalchemy import or_, select, text, update
from sqlmodel import Session

from models import Delivery, Email, EmailAccount, EmailLocation, Outbox, TrackedLink, new_id, utcnow
from models.db import get_engine, is_postgres
from models.upsert import insert_ignore
from ops import metrics
from ops.keys import get_keyring
from ops.settings import get_settings
from pipeline.actors import ingest
from pipeline.broker import actor
from pipeline.clients.smtp import SmtpError
from ops.crypto import DecryptError
from pipeline.clients.storage import StorageError, get_storage
from pipeline.oauth import CredentialsUnavailable, ReconnectRequired
from pipeline.outbound import draft_from_json, load_attachments
from pipeline.scheduler import register_sweep
from pipeline.stages import outbound as plan
from pipeline.stages.compose import ComposeError, compose
from pipeline.stages.smtp_reply import SmtpVerdict
from pipeline.stages.tracking import inject, recipient_hash

__all__ = ["enqueue_send", "send_email", "sweep_send_due"]

log = structlog.get_logger("mailpipe.send")

LEASE = timedelta(minutes=5)
REQUEUE_AFTER = timedelta(minutes=2)  # a queued email not claimed by then is handed to the broker again
EARLY_TOLERANCE = timedelta(seconds=1)  # a delayed retry message may arrive a hair before its time
MAX_RUNS = 12  # runs that crash on something unexpected before the email is failed (not retried forever)
SENT_COPY_ATTEMPTS = 5
RECONNECT_HOLD = timedelta(minutes=15)  # an OAuth account needing reconnect: look again this often
TOKEN_HOLD = timedelta(minutes=1)  # the token endpoint was unreachable
RECONNECT_GIVE_UP = timedelta(days=3)  # mail waiting this long for a reconnect fails


class LeaseLost(Exception):
    """Another run took this email over: stop without writing."""


def _message_id() -> str:
    msg = CurrentMessage.get_current_message()
    return msg.message_id if msg is not None else new_id()


def enqueue_send(email_id: str, delay_ms: int | None = None) -> None:
    """Hand an email to the send actor (best effort: the sweep re-sends what the broker lost)."""
    try:
        if delay_ms:
            send_email.send_with_options(args=(email_id,), delay=delay_ms)
        else:
            send_email.send(email_id)
    except Exception as exc:  # broker down: the database still has it; the sweep will enqueue it
        log.warning("send_enqueue_failed", email_id=email_id, error=type(exc).__name__)


@dataclass
class _Loaded:
    """The rows a run works on, read in the claiming transaction."""

    outbox: Outbox
    email: Email
    account: EmailAccount | None
    deliveries: list[Delivery]


def _claim(email_id: str, owner: str, now: datetime) -> _Loaded | None:
    """Take the email's lease when it has work due and nobody else (but a redelivery of us) holds it,
    and read what the run needs in the same transaction."""
    message_id = owner.rsplit(":", 1)[0]
    with _tx() as s:
        res = s.execute(update(Outbox).where(
            Outbox.email_id == email_id,
            or_(
                Outbox.state.in_(("queued", "sending"))  # type: ignore[attr-defined]
                & or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now + EARLY_TOLERANCE)  # type: ignore[union-attr,operator]
                & or_(Outbox.deferred_until.is_(None), Outbox.deferred_until <= now + EARLY_TOLERANCE),  # type: ignore[union-attr,operator]
                (Outbox.state == "sent") & Outbox.sent_copy.in_(("pending", "appending"))  # type: ignore[attr-defined]
                & or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now + EARLY_TOLERANCE),  # type: ignore[union-attr,operator]
            ),
            or_(Outbox.lease_until.is_(None), Outbox.lease_until < now,  # type: ignore[union-attr]
                Outbox.lease_owner.startswith(f"{message_id}:", autoescape=True)),  # type: ignore[union-attr]
        ).values(lease_until=now + LEASE, lease_owner=owner, runs=Outbox.runs + 1, updated_at=now))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            return None
        loaded = _load(s, email_id)
        s.commit()
        return loaded


def _load(s: Session, email_id: str) -> _Loaded:
    outbox, email = s.get(Outbox, email_id), s.get(Email, email_id)
    assert outbox is not None and email is not None
    return _Loaded(outbox, email, s.get(EmailAccount, outbox.account_id),
                   list(s.execute(select(Delivery).where(Delivery.email_id == email_id).order_by(Delivery.seq)).scalars()))


@contextmanager
def _tx(*, durable: bool = False) -> Iterator[Session]:
    """A session for one of the send's bookkeeping transactions.

    On PostgreSQL only the ``data`` mark is committed synchronously: it is the one fact a database
    crash must not lose (DATA may follow). WAL order makes every earlier commit durable with it, and
    losing a later one to a database crash at worst turns "sent" back into "data" — reconciled as
    unconfirmed, never resent. A worker crash loses nothing either way.
    """
    with Session(get_engine(), expire_on_commit=False) as s:
        if not durable and is_postgres():
            s.execute(text("SET LOCAL synchronous_commit TO OFF"))
        yield s


def _guard(s: Session, email_id: str, owner: str) -> None:
    """Renew the lease inside the caller's transaction; LeaseLost when this run no longer owns it."""
    res = s.execute(update(Outbox).where(Outbox.email_id == email_id, Outbox.lease_owner == owner)
                    .values(lease_until=utcnow() + LEASE, updated_at=utcnow()))
    if res.rowcount != 1:  # type: ignore[attr-defined]
        s.rollback()
        raise LeaseLost(email_id)


def _release(email_id: str, owner: str) -> None:
    with _tx() as s:
        s.execute(update(Outbox).where(Outbox.email_id == email_id, Outbox.lease_owner == owner)
                  .values(lease_until=None, lease_owner=None))
        s.commit()


@dataclass
class _Copy:
    """The bytes of one delivery's copy and the tracked links it points at."""

    raw: bytes
    links: list[dict[str, Any]]


class _Run:
    """One claimed run over an email: cap, reconcile, deliver, finish, Sent copy."""

    def __init__(self, email_id: str, owner: str, loaded: _Loaded) -> None:
        self.email_id = email_id
        self.owner = owner
        self.settings = get_settings()
        self.outbox, self.email, self.account, self.deliveries = loaded.outbox, loaded.email, loaded.account, loaded.deliveries
        self._attachments: list[Any] | None = None
        self._text: str | None = None  # the text part derived from the draft's HTML, once per run
        self._smtp: Any = None  # SMTP settings of this run (replaced when a refused token is renewed)
        self.released = False  # the lease was given back in the run's last write

    def _let_go(self) -> dict[str, Any]:
        """Outbox values that give the lease back in the same write that ends the run."""
        self.released = True
        return {"lease_owner": None, "lease_until": None}

    # -- the steps -------------------------------------------------------------------------------

    def run(self) -> None:
        if self.outbox.state in ("queued", "sending"):
            if self.account is None or self.account.deleted_at is not None:
                self._fail_all("account_deleted", "the sending account was deleted before the email went out")
            elif not self._take_slot():
                return
            else:
                if self._reconcile():
                    self._deliver()
        if self.outbox.state == "sent" and self.outbox.sent_copy in ("pending", "appending"):
            self._sent_copy()

    def _take_slot(self) -> bool:
        """Reserve one message of the account's 24-hour cap (once per email); False when over the cap."""
        if self.outbox.cap_reserved:
            return True
        assert self.account is not None
        cap = plan.daily_cap(self.account.provider, self.account.send_cap_per_day, self.settings.send_cap_per_day)
        for _ in range(20):  # compare-and-set on the window: concurrent sends never overshoot the cap
            now = utcnow()
            with _tx() as s:
                row = s.execute(select(EmailAccount.send_window_start, EmailAccount.send_window_count)
                                .where(EmailAccount.id == self.account.id)).one()
                decision = plan.reserve(plan.SendWindow(row.send_window_start, row.send_window_count), now=now, cap=cap,
                                        n=max(1, sum(1 for d in self.deliveries if d.state != "suppressed")))
                _guard(s, self.email_id, self.owner)
                if not decision.allowed:
                    s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                        state="queued", deferred_until=decision.deferred_until, next_attempt_at=decision.deferred_until,
                        enqueued_at=None, **self._let_go()))  # the sweep hands it over again when the window opens
                    s.execute(update(Email).where(Email.id == self.email_id).values(status="queued"))
                    s.commit()
                    metrics.SEND_DEFERRED.inc()
                    log.info("send_deferred", email_id=self.email_id, until=str(decision.deferred_until), cap=cap)
                    return False
                cond = [EmailAccount.id == self.account.id, EmailAccount.send_window_count == row.send_window_count]
                cond.append(EmailAccount.send_window_start.is_(None) if row.send_window_start is None  # type: ignore[union-attr]
                            else EmailAccount.send_window_start == row.send_window_start)
                res = s.execute(update(EmailAccount).where(*cond).values(
                    send_window_start=decision.window.start, send_window_count=decision.window.count))
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    s.rollback()
                    continue
                s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                    cap_reserved=True, state="sending", deferred_until=None))
                s.execute(update(Email).where(Email.id == self.email_id).values(status="sending"))
                s.commit()
                self.outbox.cap_reserved, self.outbox.state = True, "sending"
                return True
        raise RuntimeError("could not reserve a send slot (contention)")

    def _reconcile(self) -> bool:
        """Settle deliveries a crashed run left in ``data``: never resend what the server may have.

        False when one is too recent to judge: the run that issued DATA may still be waiting for the
        reply (a redelivery can overlap a live run), so this run steps back until the grace passes.
        """
        open_data = [d for d in self.deliveries if d.state == "data"]
        if not open_data:
            return True
        now = utcnow()
        grace = timedelta(seconds=self.settings.send_data_grace_seconds)
        recent = [d for d in open_data if d.updated_at is not None and d.updated_at > now - grace]
        if recent:
            wait_until = max(d.updated_at for d in recent) + grace
            with _tx() as s:
                _guard(s, self.email_id, self.owner)
                s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(next_attempt_at=wait_until))
                s.commit()
            enqueue_send(self.email_id, delay_ms=int((wait_until - now).total_seconds() * 1000) + 50)
            log.info("send_reconcile_later", email_id=self.email_id, until=str(wait_until))
            return False
        found = self._confirmed_in_sent()
        for d in open_data:
            verdict = plan.reconcile(d.state, found_in_sent=found)
            self._record(d, state=verdict, entry={"event": "reconciled", "outcome": verdict,
                                                  "reason": "found in the provider's Sent folder" if found
                                                  else "outcome unknown after a crash during DATA"},
                         accepted=list(d.recipients))
            log.warning("send_reconciled", email_id=self.email_id, delivery=d.seq, outcome=verdict)
        return True

    def _confirmed_in_sent(self) -> bool | None:
        """Whether the provider's own Sent copy proves delivery (only meaningful for a single copy:
        per-recipient copies share one Message-ID)."""
        assert self.account is not None
        if not self.account.saves_sent_copy or len(self.deliveries) != 1:
            return None
        return self._in_sent_folder()

    def _in_sent_folder(self) -> bool | None:
        """Whether the provider's Sent folder holds our Message-ID (None when it cannot be checked)."""
        from pipeline.clients.imap import ImapError
        from pipeline.connections import open_imap

        assert self.account is not None
        try:
            session = open_imap(self.account)
        except (ImapError, ValueError, CredentialsUnavailable):
            return None
        try:
            folder = _sent_folder(session)
            if folder is None or not self.email.message_id:
                return None
            return bool(session.search_header(folder, "Message-ID", self.email.message_id))
        except ImapError:
            return None
        finally:
            session.close()

    def _deliver(self) -> None:
        from pipeline.connections import smtp_settings, smtp_transport

        assert self.account is not None
        if self.outbox.category == "marketing":
            self._suppress()
        todo = [d for d in self.deliveries if d.state in ("pending", "sending", "retry")]
        if todo:
            try:
                self._smtp = smtp_settings(self.account)
            except ValueError as exc:
                self._fail_all("configuration", str(exc))
                return
            except CredentialsUnavailable as exc:
                self._hold(exc)
                return
            transport = smtp_transport()
            try:
                for d in todo:
                    copy = self._copy(d)
                    self._attempt(d, transport, copy.raw, copy.links)
            except CredentialsUnavailable as exc:  # a refused token could not be renewed
                self._hold(exc)
                return
        self._settle()

    def _hold(self, exc: CredentialsUnavailable) -> None:
        """No OAuth token now: wait (no attempt counted) for the user to reconnect or the provider to answer.

        The reconnect callback releases held mail at once; mail held for RECONNECT_GIVE_UP fails.
        """
        now = utcnow()
        reconnect = isinstance(exc, ReconnectRequired)
        code = "reconnect_required" if reconnect else "token_unavailable"
        due = max(filter(None, (self.outbox.send_at, self.outbox.created_at)), default=now)  # scheduled mail waits from its time
        if reconnect and now - due > RECONNECT_GIVE_UP:
            self._fail_all(code, f"the account was not reconnected within {RECONNECT_GIVE_UP.days} days: {exc}")
            return
        until = now + (RECONNECT_HOLD if reconnect else TOKEN_HOLD)
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                state="queued", deferred_until=until, next_attempt_at=until, enqueued_at=None, **self._let_go()))
            s.execute(update(Email).where(Email.id == self.email_id).values(
                status="queued", error={"code": code, "message": str(exc)[:500]}))
            s.commit()
        metrics.SEND_DEFERRED.inc()
        log.warning("send_held", email_id=self.email_id, reason=code, until=str(until))

    def _suppress(self) -> None:
        """Skip recipients who unsubscribed after the email was accepted (scheduled or retried mail)."""
        from models import Suppression, normalize_email

        wanted = {normalize_email(d.tracked_for) or d.tracked_for: d for d in self.deliveries
                  if d.tracked_for and d.state in ("pending", "sending", "retry")}
        if not wanted:
            return
        with _tx() as s:
            gone = set(s.execute(select(Suppression.address_norm).where(
                Suppression.org_id == self.outbox.org_id, Suppression.address_norm.in_(list(wanted)))).scalars())  # type: ignore[attr-defined]
        for address in gone:
            self._record(wanted[address], state="suppressed", entry={"event": "suppressed", "reason": "unsubscribed"})

    def _attempt(self, d: Delivery, transport: Any, raw: bytes, links: list[dict[str, Any]]) -> None:
        attempt = d.attempts + 1
        # The click map commits with the attempt: a redirect must resolve before the mail is out.
        self._record(d, state="sending", attempts=attempt, entry={"event": "attempt", "n": attempt}, links=links)
        data_started = False

        def before_data() -> None:
            nonlocal data_started
            self._record(d, state="data", entry={"event": "data", "n": attempt})
            data_started = True

        try:
            result = self._send_once(transport, d, raw, before_data, lambda: data_started)
            verdict: SmtpVerdict = result.verdict
            refused = {r: {"code": v.code, "message": v.message, "error_code": v.error_code} for r, v in result.refused.items()}
            accepted = list(result.accepted)
        except CredentialsUnavailable:  # the token was refused and none could be had: this was no attempt
            self._record(d, state="pending" if attempt == 1 else "retry", attempts=attempt - 1,
                         entry={"event": "held", "n": attempt, "reason": "no OAuth token"})
            raise
        except SmtpError as exc:
            metrics.SMTP_ERRORS.labels(exc.kind.value).inc()
            if data_started:  # the connection broke after DATA began: the server may have it
                self._reconcile_now(d, exc)
                return
            verdict, refused, accepted = exc.verdict, {}, []
        outcome = plan.attempt_outcome(verdict.outcome, attempt)
        if outcome == "sent":
            later = [r for r, v in result.refused.items() if plan.attempt_outcome(v.outcome, attempt) == "retry"]
            if later:  # accepted for some; the temporarily refused get a transaction of their own
                self._split(d, later, attempt)
                refused = {r: v for r, v in refused.items() if r not in later}
        metrics.SEND_ATTEMPTS.labels(outcome).inc()
        self._record(d, state=outcome, smtp_code=verdict.code, smtp_message=verdict.message[:4000],
                     error_code=verdict.error_code or None, accepted=accepted, refused=refused,
                     entry={"event": "reply", "n": attempt, "outcome": outcome, "code": verdict.code,
                            "message": verdict.message[:500]})
        log.info("send_attempt", email_id=self.email_id, delivery=d.seq, attempt=attempt, outcome=outcome, code=verdict.code)

    def _send_once(self, transport: Any, d: Delivery, raw: bytes, before_data: Any, data_started: Any) -> Any:
        """One SMTP transaction; a refused OAuth token gets one refresh and one retry (before DATA only).

        Raises ``CredentialsUnavailable`` when no fresh token can be had (the caller holds the email).
        """
        from pipeline.clients.errors import ConnErrorKind
        from pipeline.connections import smtp_settings

        assert self.account is not None
        settings = self._smtp
        try:
            return transport.send(settings, self.account.email, d.recipients, raw, before_data=before_data)
        except SmtpError as exc:
            if exc.kind != ConnErrorKind.AUTH or settings.oauth_token is None or data_started():
                raise
            renewed = smtp_settings(self.account, rejected=settings.oauth_token)
            if renewed.oauth_token == settings.oauth_token:  # a token given as is (no grant): nothing to renew
                raise
            log.info("send_token_refused", email_id=self.email_id, delivery=d.seq)
            self._smtp = renewed
            return transport.send(self._smtp, self.account.email, d.recipients, raw, before_data=before_data)

    def _split(self, d: Delivery, recipients: list[str], attempts: int) -> None:
        """A new delivery for recipients a server deferred (4xx) inside an accepted transaction."""
        seq = max(x.seq for x in self.deliveries) + 1
        now = utcnow()
        row = Delivery(email_id=self.email_id, seq=seq, recipients=recipients, tracked_for=d.tracked_for, state="retry",
                       attempts=attempts, updated_at=now,
                       log=[{"at": now.isoformat(), "event": "split", "from": d.seq, "reason": "deferred by the server"}])
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.add(row)
            s.commit()
        self.deliveries.append(row)

    def _reconcile_now(self, d: Delivery, exc: SmtpError) -> None:
        verdict = plan.reconcile("data", found_in_sent=self._confirmed_in_sent())
        self._record(d, state=verdict, smtp_message=exc.message[:4000], accepted=list(d.recipients),
                     entry={"event": "connection_lost_after_data", "outcome": verdict, "message": exc.message[:500]})

    def _settle(self) -> None:
        """Final status when every delivery is final; otherwise schedule the next retry."""
        rows = [(d.state, d.smtp_code, d.smtp_message, d.error_code, d.recipients) for d in self.deliveries]
        summary = plan.summarize(rows, refused=[r for d in self.deliveries if d.state == "sent" for r in d.refused])
        now = utcnow()
        if summary is None:
            attempts = max((d.attempts for d in self.deliveries if d.state == "retry"), default=1)
            wait = plan.backoff(attempts, self.settings.send_retry_base_seconds)
            with _tx() as s:
                _guard(s, self.email_id, self.owner)
                s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                    next_attempt_at=now + wait, enqueued_at=now, **self._let_go()))
                s.commit()
            enqueue_send(self.email_id, delay_ms=max(1, int(wait.total_seconds() * 1000)))
            return
        self._finish(summary, now)

    def _finish(self, summary: plan.Summary, now: datetime) -> None:
        sent = summary.status == "sent"
        copy_next = sent and self.outbox.sent_copy in ("pending", "appending")
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                state=summary.status, next_attempt_at=None, sent_copy=self.outbox.sent_copy if sent else "skipped",
                **({} if copy_next else self._let_go())))
            values: dict[str, Any] = {"status": summary.status, "error": summary.error}
            if sent:
                # Stored and linked like inbound mail: the chain parses the untracked copy.
                values.update(sent_at=now, pipeline_state="fetched", stage_at=now, raw_key=self.outbox.base_key)
            s.execute(update(Email).where(Email.id == self.email_id).values(**values))
            if sent and self.outbox.sync_after:
                from pipeline.actors.fetch import request_sync

                request_sync(s, self.outbox.account_id)
            s.commit()
        self.outbox.state = summary.status
        metrics.SENT.labels(summary.status).inc()
        if sent:
            due = max(filter(None, (self.outbox.send_at, self.outbox.created_at)))
            metrics.SEND_LATENCY.observe(max(0.0, (now - due).total_seconds()))
        if summary.error:
            metrics.EMAILS_FAILED.labels(str(summary.error.get("code") or "unknown")[:40]).inc()
        log.info("send_finished", email_id=self.email_id, status=summary.status,
                 error=(summary.error or {}).get("code"))
        if sent:
            ingest.start_chain([self.email_id])

    def _sent_copy(self) -> None:
        """APPEND the untracked message to the \\Sent folder with \\Seen and record its location."""
        from pipeline.clients.imap import ImapError
        from pipeline.connections import open_imap

        assert self.account is not None
        was_appending = self.outbox.sent_copy == "appending"
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(sent_copy="appending"))
            s.commit()
        raw = get_storage().get(self.outbox.base_key)
        try:
            session = open_imap(self.account)
        except ImapError as exc:
            self._sent_copy_retry(exc)
            return
        except ValueError as exc:
            self._sent_copy_done("failed", f"configuration: {exc}")
            return
        except CredentialsUnavailable as exc:  # sent already; the copy waits like a network failure
            from pipeline.clients.imap import ImapError as _E, ImapErrorKind

            self._sent_copy_retry(_E(ImapErrorKind.CONNECT, f"no OAuth token: {exc}"))
            return
        try:
            folder = _sent_folder(session)
            if folder is None:
                self._sent_copy_done("failed", "no folder has the \\Sent special-use attribute")
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
            self._sent_copy_retry(exc)
            return
        finally:
            session.close()
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            if where is not None:
                insert_ignore(s, EmailLocation, [{"email_id": self.email_id, "account_id": self.account.id, "folder": folder,
                                                  "uidvalidity": where[0], "uid": where[1], "flags": ["\\Seen"]}],
                              ["account_id", "folder", "uidvalidity", "uid"])
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(sent_copy="done", sent_copy_error=None,
                                                                                    **self._let_go()))
            s.commit()
        log.info("sent_copy_saved", email_id=self.email_id, folder=folder, uid=where[1] if where else None)

    def _sent_copy_retry(self, exc: Any) -> None:
        """A network-type IMAP failure is retried with backoff (the sweep brings it back); others fail."""
        from pipeline.clients.imap import ImapErrorKind

        reason = f"{exc.kind.value}: {exc.message}"
        tries = self.outbox.sent_copy_attempts + 1
        transient = exc.kind in (ImapErrorKind.CONNECT, ImapErrorKind.TIMEOUT, ImapErrorKind.DNS, ImapErrorKind.PROTOCOL)
        if not transient or tries >= SENT_COPY_ATTEMPTS + 1:
            self._sent_copy_done("failed", f"{reason} (after {tries} attempts)" if transient else reason)
            return
        wait = plan.backoff(tries, max(self.settings.send_retry_base_seconds, 1.0))
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(
                sent_copy="appending", sent_copy_error=reason, sent_copy_attempts=tries,
                next_attempt_at=utcnow() + wait, enqueued_at=utcnow()))
            s.commit()
        enqueue_send(self.email_id, delay_ms=int(wait.total_seconds() * 1000))
        log.warning("sent_copy_retry", email_id=self.email_id, error=reason, wait=wait.total_seconds())

    def _sent_copy_done(self, state: str, error: str | None) -> None:
        with _tx() as s:
            _guard(s, self.email_id, self.owner)
            s.execute(update(Outbox).where(Outbox.email_id == self.email_id).values(sent_copy=state, sent_copy_error=error))
            s.commit()
        log.warning("sent_copy_failed", email_id=self.email_id, error=error)

    # -- helpers ---------------------------------------------------------------------------------

    def _copy(self, d: Delivery) -> _Copy:
        """Compose this delivery's copy: the stored draft, with its recipient's pixel and tracked links.

        A copy for nobody in particular (tracking off) is the canonical message itself, byte for byte.
        """
        if d.tracked_for is None:
            return _Copy(get_storage().get(self.outbox.base_key), [])
        if self._attachments is None:
            self._attachments = load_attachments(self.outbox.attachments)
        draft = self.outbox.draft
        changes: dict[str, Any] = {}
        links: list[dict[str, Any]] = []
        public = self.settings.public_url
        keyring = get_keyring()
        if d.tracked_for is not None:
            if self.outbox.category == "marketing":
                uhash = recipient_hash(partial(keyring.sign, "unsubscribe"), self.email_id, d.tracked_for)
                changes["unsubscribe_url"] = f"{public.rstrip('/')}/unsubscribe/{self.email_id}/{uhash}"
            if draft.get("html") is not None and (self.outbox.track_opens or self.outbox.track_clicks):
                injected = inject(
                    draft["html"], email_id=self.email_id, recipient=d.tracked_for, public_url=public,
                    open_signer=partial(keyring.sign, "open") if self.outbox.track_opens else None,
                    click_signer=partial(keyring.sign, "click") if self.outbox.track_clicks else None,
                    skip_urls=(changes["unsubscribe_url"],) if "unsubscribe_url" in changes else (),
                )
                changes["html"] = injected.html
                if draft.get("text") is None:  # the text part shows the original links, not tracking URLs
                    if self._text is None:
                        from pipeline.stages.compose import html_to_text

                        self._text = html_to_text(draft["html"])
                    changes["text"] = self._text
                links = [{"email_id": self.email_id, "link_hash": spec.link_hash, "url": spec.url, "position": spec.position,
                          "text": spec.text[:500]} for spec in injected.links]
        raw, _ = compose(draft_from_json(draft, tuple(self._attachments), **changes))
        return _Copy(raw, links)

    def _record(self, d: Delivery, *, state: str, entry: dict[str, Any], links: list[dict[str, Any]] | None = None,
                **values: Any) -> None:
        """Write a delivery's new state (and an attempt-log entry) before acting on it."""
        now = utcnow()
        entry = {"at": now.isoformat(), **entry}
        with _tx(durable=state == "data") as s:
            _guard(s, self.email_id, self.owner)
            if links:
                insert_ignore(s, TrackedLink, links, ["email_id", "link_hash"])
            s.execute(update(Delivery).where(Delivery.id == d.id).values(
                state=state, updated_at=now, log=[*d.log, entry], **values))
            s.commit()
        d.state = state
        d.log = [*d.log, entry]
        for k, v in values.items():
            setattr(d, k, v)

    def _fail_all(self, code: str, message: str) -> None:
        for d in self.deliveries:
            if d.state == "data":  # the server may have it: never claim it failed
                self._record(d, state="unconfirmed", accepted=list(d.recipients), entry={"event": "unconfirmed", "reason": message})
            elif d.state not in plan.FINAL_DELIVERY_STATES:
                self._record(d, state="failed", error_code=code, smtp_message=message, entry={"event": "failed", "reason": message})
        self._settle()


def _sent_folder(session: Any) -> str | None:
    """The folder with the RFC 6154 ``\\Sent`` attribute (names are never guessed)."""
    for f in session.list_folders():
        if "\\Sent" in f.special_use:
            return str(f.name)
    return None


@actor(actor_name="send.email", queue_name="send", max_retries=5, min_backoff=2_000, max_backoff=60_000,
       time_limit=10 * 60_000)
def send_email(email_id: str) -> None:
    """Run one email's due send work under its lease; a message with nothing due is a no-op."""
    owner = f"{_message_id()}:{new_id()[-8:]}"
    loaded = _claim(email_id, owner, utcnow())
    if loaded is None:
        log.debug("send_dropped", email_id=email_id, reason="nothing due or another run holds it")
        return
    run: _Run | None = None
    try:
        run = _Run(email_id, owner, loaded)
        run.run()
    except LeaseLost:
        log.info("send_superseded", email_id=email_id)
    except (StorageError, DecryptError, ComposeError) as exc:  # retrying cannot help: fail with the reason
        _give_up(run, email_id, owner, "internal_error", f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        if run is not None and run.outbox.runs >= MAX_RUNS:
            _give_up(run, email_id, owner, "internal_error", f"gave up after {run.outbox.runs} runs: {type(exc).__name__}")
        else:
            raise  # Dramatiq retries; the sweep hands it over again later
    finally:
        if run is None or not run.released:
            _release(email_id, owner)


def _give_up(run: _Run | None, email_id: str, owner: str, code: str, message: str) -> None:
    """Fail an email's open deliveries (possibly-delivered ones become unconfirmed) and log why."""
    log.error("send_gave_up", email_id=email_id, code=code, reason=message)
    try:
        if run is None:
            with _tx() as s:
                run = _Run(email_id, owner, _load(s, email_id))
        if run.outbox.state in ("queued", "sending"):
            run._fail_all(code, message)
        elif run.outbox.state == "sent":
            run._sent_copy_done("failed", message)
    except LeaseLost:
        pass


def release_held(account_id: str) -> int:
    """An account was (re)connected: its mail held for a token goes now (cap-deferred mail re-checks its window)."""
    now = utcnow()
    with Session(get_engine()) as s:
        held = list(s.execute(select(Outbox.email_id).where(
            Outbox.account_id == account_id, Outbox.state == "queued", Outbox.deferred_until > now)).scalars())  # type: ignore[operator]
        if not held:
            return 0
        s.execute(update(Outbox).where(Outbox.email_id.in_(held), Outbox.state == "queued")  # type: ignore[attr-defined]
                  .values(deferred_until=None, next_attempt_at=None, enqueued_at=now))
        s.commit()
    for email_id in held:
        enqueue_send(email_id)
    log.info("send_released", account_id=account_id, emails=len(held))
    return len(held)


@register_sweep("send_due")
def sweep_send_due(session: Session, now: datetime) -> int:
    """Release scheduled sends that are due, and hand every email with due send work to the broker.

    Work is due when it is queued or mid-send with its retry time reached and no live lease (a
    killed worker's lease runs out), or sent with the Sent copy unfinished. An email handed over
    less than :data:`REQUEUE_AFTER` ago is left alone so a backlog is not enqueued twice.
    """
    released = list(session.execute(select(Outbox.email_id).where(
        Outbox.state == "scheduled", Outbox.send_at <= now).limit(1000)).scalars())  # type: ignore[operator]
    if released:
        session.execute(update(Outbox).where(Outbox.email_id.in_(released), Outbox.state == "scheduled")  # type: ignore[attr-defined]
                        .values(state="queued", next_attempt_at=None, updated_at=now))
        session.execute(update(Email).where(Email.id.in_(released), Email.status == "scheduled")  # type: ignore[attr-defined]
                        .values(status="queued"))
    stmt = select(Outbox.email_id).where(
        or_(
            Outbox.state.in_(("queued", "sending"))  # type: ignore[attr-defined]
            & or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now)  # type: ignore[union-attr,operator]
            & or_(Outbox.deferred_until.is_(None), Outbox.deferred_until <= now),  # type: ignore[union-attr,operator]
            (Outbox.state == "sent") & Outbox.sent_copy.in_(("pending", "appending"))  # type: ignore[attr-defined]
            & or_(Outbox.next_attempt_at.is_(None), Outbox.next_attempt_at <= now),  # type: ignore[union-attr,operator]
        ),
        or_(Outbox.lease_until.is_(None), Outbox.lease_until < now),  # type: ignore[union-attr]
        or_(Outbox.enqueued_at.is_(None), Outbox.enqueued_at < now - REQUEUE_AFTER, Outbox.email_id.in_(released)),  # type: ignore[union-attr,operator,attr-defined]
    ).order_by(Outbox.created_at).limit(1000)
    if is_postgres(session.get_bind()):  # type: ignore[arg-type]
        stmt = stmt.with_for_update(skip_locked=True, key_share=True)
    due = list(session.execute(stmt).scalars())  # ids only: drafts can be megabytes
    if due:
        session.execute(update(Outbox).where(Outbox.email_id.in_(due)).values(enqueued_at=now))  # type: ignore[attr-defined]
    session.commit()  # the hand-off time is durable before the messages exist
    for email_id in due:
        enqueue_send(email_id)
    return len(due)
