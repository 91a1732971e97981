"""A send run (the ``send.email`` job): deliver one outbound email over SMTP exactly once, copy it to
Sent, start its ingest.

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

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from models import Delivery, Email, EmailAccount, Outbox, Suppression, TrackedLink, normalize_email, utcnow
from models.lease import LeaseLost
from models.upsert import insert_ignore
from ops import metrics
from ops.crypto import DecryptError
from ops.settings import get_settings
from pipeline.clients.errors import ConnErrorKind
from pipeline.clients.smtp import SmtpError
from pipeline.clients.storage import StorageError
from pipeline.flows.chain import chain_sent
from pipeline.flows.connections import smtp_settings, smtp_transport
from pipeline.flows.delivery_copy import DeliveryCopies
from pipeline.flows.events_outbox import email_payloads, record_event, wants
from pipeline.flows.send_due import enqueue_send
from pipeline.flows.send_lease import SEND_LEASE, Loaded, claim, guard, load, release, tx
from pipeline.flows.sent_copy import SentCopy, in_sent_folder
from pipeline.flows.sync import fetch_now
from pipeline.flows.tokens import CredentialsUnavailable, ReconnectRequired
from pipeline.stages import outbound as plan
from pipeline.stages.compose import ComposeError
from pipeline.stages.smtp_reply import SmtpVerdict

__all__ = ["MAX_RUNS", "SendRun", "run_send"]

log = structlog.get_logger("mailpipe.send")

MAX_RUNS = 12  # runs that crash on something unexpected before the email is failed (not retried forever)
RECONNECT_HOLD = timedelta(minutes=15)  # an OAuth account needing reconnect: look again this often
TOKEN_HOLD = timedelta(minutes=1)  # the token endpoint was unreachable
RECONNECT_GIVE_UP = timedelta(days=3)  # mail waiting this long for a reconnect fails


class SendRun:
    """One claimed run over an email: cap, reconcile, deliver, finish, Sent copy."""

    def __init__(self, email_id: str, owner: str, loaded: Loaded) -> None:
        self.email_id = email_id
        self.owner = owner
        self.settings = get_settings()
        self.outbox, self.email, self.account, self.deliveries = loaded.outbox, loaded.email, loaded.account, loaded.deliveries
        self.copies = DeliveryCopies(email_id, self.outbox, self.settings.public_url)
        self._smtp: Any = None  # SMTP settings of this run (replaced when a refused token is renewed)
        self.settled = False  # the email's final state was written (with its last delivery's reply)
        self.released = False  # the lease was given back in the run's last write
        self.started = False  # the claim-time writes (:meth:`start`) were made
        self.deferred: datetime | None = None  # over the cap: the window opens then (written by start)
        self._marked: Delivery | None = None  # a delivery whose `sending` mark an earlier write already made

    def _let_go(self) -> dict[str, Any]:
        """Outbox values that give the lease back in the same write that ends the run."""
        self.released = True
        return SEND_LEASE.handing_back()

    # -- the steps -------------------------------------------------------------------------------

    def start(self, s: Session) -> None:
        """The run's first writes, made in the claiming transaction (no round trips of their own): the
        cap slot, recipients suppressed since the email was accepted, and the first delivery's
        ``sending`` mark (still before any connection opens)."""
        self.started = True
        if self.outbox.state not in ("queued", "sending") or self.account is None or self.account.deleted_at is not None:
            return
        if not self._take_slot(s):
            return
        self._suppress(s)
        if any(d.state == "data" for d in self.deliveries):  # reconcile those first (maybe later): mark nothing
            return
        first = next((d for d in self.deliveries if d.state in ("pending", "sending", "retry")), None)
        if first is not None:
            self._mark_sending(s, first)

    def run(self) -> None:
        if not self.started:  # not started by the claim (a run built some other way): its own transaction
            with tx() as s:
                guard(s, self.email_id, self.owner)
                self.start(s)
                s.commit()
        if self.outbox.state in ("queued", "sending"):
            if self.account is None or self.account.deleted_at is not None:
                self._fail_all("account_deleted", "the sending account was deleted before the email went out")
            elif self.deferred is not None:
                metrics.SEND_DEFERRED.inc()
                log.info("send_deferred", email_id=self.email_id, until=str(self.deferred))
                return
            else:
                if self._reconcile():
                    self._deliver()
        if self.outbox.state == "sent" and self.outbox.sent_copy in ("pending", "appending"):
            assert self.account is not None  # a sent email's account (deleted ones fail before sending)
            SentCopy(self.email_id, self.owner, self.outbox, self.email, self.account, self.settings, self._let_go).run()

    def _take_slot(self, s: Session) -> bool:
        """Reserve one message of the account's 24-hour cap (once per email) in the run's claiming
        transaction; False when over the cap (the email is queued until the window opens, the lease given back)."""
        if self.outbox.cap_reserved:
            return True
        assert self.account is not None
        cap = plan.daily_cap(self.account.provider, self.account.send_cap_per_day, self.settings.send_cap_per_day)
        # The window as the claim read it; read again after a lost race: each statement sees the winner's
        # commit (READ COMMITTED; SQLite holds the write lock since the claim, so there it never loses).
        row: Any = self.account
        for _ in range(20):  # compare-and-set on the window: concurrent sends never overshoot the cap
            now = utcnow()
            decision = plan.reserve(plan.SendWindow(row.send_window_start, row.send_window_count), now=now, cap=cap,
                                    n=max(1, sum(1 for d in self.deliveries if d.state != "suppressed")))
            if not decision.allowed:
                s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(
                    state="queued", deferred_until=decision.deferred_until, next_attempt_at=decision.deferred_until,
                    enqueued_at=None, **self._let_go()))  # the sweep hands it over again when the window opens
                s.execute(update(Email).where(col(Email.id) == self.email_id).values(status="queued"))
                self.deferred = decision.deferred_until
                return False
            cond = [col(EmailAccount.id) == self.account.id, col(EmailAccount.send_window_count) == row.send_window_count]
            cond.append(col(EmailAccount.send_window_start).is_(None) if row.send_window_start is None
                        else col(EmailAccount.send_window_start) == row.send_window_start)
            res = s.exec(update(EmailAccount).where(*cond).values(
                send_window_start=decision.window.start, send_window_count=decision.window.count))
            if res.rowcount != 1:
                row = s.execute(select(EmailAccount.send_window_start, EmailAccount.send_window_count)
                                .where(EmailAccount.id == self.account.id)).one()
                continue
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(
                cap_reserved=True, state="sending", deferred_until=None))
            s.execute(update(Email).where(col(Email.id) == self.email_id).values(status="sending"))
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
        recent = [d for d in open_data if d.updated_at > now - grace]
        if recent:
            wait_until = max(d.updated_at for d in recent) + grace
            with tx() as s:
                guard(s, self.email_id, self.owner)
                s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(next_attempt_at=wait_until))
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
        return in_sent_folder(self.account, self.email.message_id)

    def _deliver(self) -> None:
        assert self.account is not None
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
                for i, d in enumerate(todo):
                    copy = self.copies.copy_for(d)
                    self._attempt(d, transport, copy.raw, copy.links, todo[i + 1] if i + 1 < len(todo) else None)
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
        with tx() as s:
            guard(s, self.email_id, self.owner)
            if (d := self._marked) is not None:  # its `sending` mark counted an attempt that never happened
                self._marked = None
                self._write(s, d, state="pending" if d.attempts <= 1 else "retry", attempts=d.attempts - 1,
                            entry={"event": "held", "n": d.attempts, "reason": code})
            s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(
                state="queued", deferred_until=until, next_attempt_at=until, enqueued_at=None, **self._let_go()))
            s.execute(update(Email).where(col(Email.id) == self.email_id).values(
                status="queued", error={"code": code, "message": str(exc)[:500]}))
            s.commit()
        metrics.SEND_DEFERRED.inc()
        log.warning("send_held", email_id=self.email_id, reason=code, until=str(until))

    def _suppress(self, s: Session) -> None:
        """Skip recipients suppressed after the email was accepted (scheduled or retried mail): for
        marketing mail every entry, for other mail hard bounces, complaints and manual entries
        (unsubscribes block marketing mail only). In the claiming transaction."""
        wanted = {normalize_email(d.tracked_for) or d.tracked_for: d for d in self.deliveries
                  if d.tracked_for and d.state in ("pending", "sending", "retry")}
        if not wanted:
            return
        marketing = self.outbox.category == "marketing"
        gone = s.execute(select(Suppression.address_norm, Suppression.reason).where(
            Suppression.org_id == self.outbox.org_id, col(Suppression.address_norm).in_(list(wanted)))).all()
        for address, reason in gone:
            if marketing or reason != "unsubscribe":
                self._write(s, wanted[address], state="suppressed",
                            entry={"event": "suppressed", "reason": "unsubscribed" if reason == "unsubscribe" else reason})

    def _mark_sending(self, s: Session, d: Delivery) -> None:
        """``d``'s ``sending`` mark (an attempt counted, no connection yet) inside the caller's transaction:
        the claim's for the first delivery, the previous delivery's reply for the next one."""
        attempt = d.attempts + 1
        self._write(s, d, state="sending", attempts=attempt, entry={"event": "attempt", "n": attempt})
        self._marked = d

    def _attempt(self, d: Delivery, transport: Any, raw: bytes, links: list[dict[str, Any]],
                 following: Delivery | None = None) -> None:
        if self._marked is d:  # its `sending` mark was written with the claim or the previous reply
            self._marked = None
            attempt = d.attempts
            data_links = links
        else:
            attempt = d.attempts + 1
            self._record(d, state="sending", attempts=attempt, entry={"event": "attempt", "n": attempt}, links=links)
            data_links = []
        data_started = False

        def before_data() -> None:
            nonlocal data_started
            # The click map commits before DATA at the latest: a redirect must resolve before the mail is out.
            self._record(d, state="data", entry={"event": "data", "n": attempt}, links=data_links)
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
        values: dict[str, Any] = {"smtp_code": verdict.code, "smtp_message": verdict.message[:4000],
                                  "error_code": verdict.error_code or None, "accepted": accepted, "refused": refused}
        summary = self._summary_if(d, outcome, values)
        now = utcnow()
        also: Callable[[Session], None] | None = None
        final: dict[str, Any] | None = None
        if summary is not None:  # the outbox's final values go with the lease renewal, the email's after the reply
            final = self._final_outbox(summary)
            also = lambda s: self._finish_writes(s, summary, now)  # noqa: E731
        elif following is not None:  # the next delivery's `sending` mark rides on this reply's transaction
            also = lambda s: self._mark_sending(s, following)  # noqa: E731
        self._record(d, state=outcome, entry={"event": "reply", "n": attempt, "outcome": outcome, "code": verdict.code,
                                              "message": verdict.message[:500]}, also=also, outbox=final, **values)
        if summary is not None:  # the reply and the email's final state went out in one transaction
            self.settled = True
            self._finished(summary, now)
        log.info("send_attempt", email_id=self.email_id, delivery=d.seq, attempt=attempt, outcome=outcome, code=verdict.code)

    def _send_once(self, transport: Any, d: Delivery, raw: bytes, before_data: Any, data_started: Any) -> Any:
        """One SMTP transaction; a refused OAuth token gets one refresh and one retry (before DATA only).

        Raises ``CredentialsUnavailable`` when no fresh token can be had (the caller holds the email).
        """
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
        with tx() as s:
            guard(s, self.email_id, self.owner)
            s.add(row)
            s.commit()
        self.deliveries.append(row)

    def _reconcile_now(self, d: Delivery, exc: SmtpError) -> None:
        verdict = plan.reconcile("data", found_in_sent=self._confirmed_in_sent())
        self._record(d, state=verdict, smtp_message=exc.message[:4000], accepted=list(d.recipients),
                     entry={"event": "connection_lost_after_data", "outcome": verdict, "message": exc.message[:500]})

    def _summary_if(self, d: Delivery, state: str, values: dict[str, Any]) -> plan.Summary | None:
        """The email's final status if ``d`` took ``state`` and ``values`` and every other delivery stays as it is."""
        rows = []
        refused: list[str] = []
        for x in self.deliveries:
            st, code, msg, err, rcpts, ref = ((state, values["smtp_code"], values["smtp_message"], values["error_code"],
                                               x.recipients, values["refused"]) if x is d else
                                              (x.state, x.smtp_code, x.smtp_message, x.error_code, x.recipients, x.refused))
            rows.append((st, code, msg, err, rcpts))
            if st == "sent":
                refused += list(ref)
        return plan.summarize(rows, refused=refused)

    def _settle(self) -> None:
        """Final status when every delivery is final; otherwise schedule the next retry."""
        if self.settled:
            return
        rows = [(d.state, d.smtp_code, d.smtp_message, d.error_code, d.recipients) for d in self.deliveries]
        summary = plan.summarize(rows, refused=[r for d in self.deliveries if d.state == "sent" for r in d.refused])
        now = utcnow()
        if summary is None:
            attempts = max((d.attempts for d in self.deliveries if d.state == "retry"), default=1)
            wait = plan.backoff(attempts, self.settings.send_retry_base_seconds)
            with tx() as s:
                guard(s, self.email_id, self.owner)
                s.execute(update(Outbox).where(col(Outbox.email_id) == self.email_id).values(
                    next_attempt_at=now + wait, enqueued_at=now, **self._let_go()))
                s.commit()
            enqueue_send(self.email_id, delay_ms=max(1, int(wait.total_seconds() * 1000)))
            return
        self._finish(summary, now)

    def _finish(self, summary: plan.Summary, now: datetime) -> None:
        with tx() as s:
            guard(s, self.email_id, self.owner, **self._final_outbox(summary))
            self._finish_writes(s, summary, now)
            s.commit()
        self._finished(summary, now)

    def _final_outbox(self, summary: plan.Summary) -> dict[str, Any]:
        """The outbox's final values, written with the lease guard of the run's last transaction (which
        gives the lease back unless the Sent copy is still to be made)."""
        sent = summary.status == "sent"
        copy_next = sent and self.outbox.sent_copy in ("pending", "appending")
        return {"state": summary.status, "next_attempt_at": None, "sent_copy": self.outbox.sent_copy if sent else "skipped",
                **({} if copy_next else self._let_go())}

    def _finish_writes(self, s: Session, summary: plan.Summary, now: datetime) -> None:
        """The email's final state and its event (in the caller's transaction, whose guard wrote the outbox's)."""
        sent = summary.status == "sent"
        values: dict[str, Any] = {"status": summary.status, "error": summary.error}
        if sent:
            # Stored and linked like inbound mail: the chain parses the untracked copy.
            values.update(sent_at=now, pipeline_state="fetched", stage_at=now, raw_key=self.outbox.base_key)
        s.execute(update(Email).where(col(Email.id) == self.email_id).values(**values))
        kind = "email.sent" if sent else "email.failed"
        if wants(s, self.outbox.org_id, kind):
            data = email_payloads(s, [self.email_id]).get(self.email_id, {"email_id": self.email_id})
            record_event(s, self.outbox.org_id, kind, {**data, "status": summary.status, "error": summary.error,
                                                       "recipients": [r for d in self.deliveries for r in d.recipients]},
                         dedupe_key=f"{kind}:{self.email_id}")

    def _finished(self, summary: plan.Summary, now: datetime) -> None:
        """After the final state committed: metrics, log, the ingest chain and the Sent copy's turn."""
        sent = summary.status == "sent"
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
            chain_sent(self.outbox.account_id)  # the ingest chain, shared with the mailbox's other sends
            if self.outbox.sync_after:
                fetch_now(self.outbox.account_id)

    # -- helpers ---------------------------------------------------------------------------------

    def _record(self, d: Delivery, *, state: str, entry: dict[str, Any], links: list[dict[str, Any]] | None = None,
                also: Callable[[Session], None] | None = None, outbox: dict[str, Any] | None = None, **values: Any) -> None:
        """Write a delivery's new state (and an attempt-log entry) before acting on it; ``outbox`` values
        go with the lease guard (one statement), ``also`` adds more writes to the same transaction (the
        email's final status with its last delivery's reply, or the next delivery's ``sending`` mark)."""
        with tx(durable=state == "data") as s:
            guard(s, self.email_id, self.owner, **(outbox or {}))
            if links:
                insert_ignore(s, TrackedLink, links, ["email_id", "link_hash"])
            self._write(s, d, state=state, entry=entry, **values)
            if also is not None:
                also(s)
            s.commit()

    def _write(self, s: Session, d: Delivery, *, state: str, entry: dict[str, Any], **values: Any) -> None:
        """A delivery's new state and attempt-log entry in the caller's transaction (and on ``d``)."""
        now = utcnow()
        log_ = [*d.log, {"at": now.isoformat(), **entry}]
        s.execute(update(Delivery).where(col(Delivery.id) == d.id).values(state=state, updated_at=now, log=log_, **values))
        d.state = state
        d.log = log_
        for k, v in values.items():
            setattr(d, k, v)

    def _fail_all(self, code: str, message: str) -> None:
        for d in self.deliveries:
            if d.state == "data":  # the server may have it: never claim it failed
                self._record(d, state="unconfirmed", accepted=list(d.recipients), entry={"event": "unconfirmed", "reason": message})
            elif d.state not in plan.FINAL_DELIVERY_STATES:
                # A `sending` mark made ahead (with the claim or the previous reply) counted an attempt that never began.
                uncount: dict[str, Any] = {"attempts": d.attempts - 1} if d is self._marked else {}
                self._record(d, state="failed", error_code=code, smtp_message=message, entry={"event": "failed", "reason": message},
                             **uncount)
        self._marked = None
        self._settle()


def run_send(email_id: str, owner: str) -> None:
    """Run one email's due send work under its lease (``owner``: :func:`models.lease.run_owner` of the
    message); nothing due, or another run holding it: a no-op. Raises what a retry can help with."""
    started: list[SendRun] = []

    def start(s: Session, loaded: Loaded) -> None:  # in the claiming transaction
        started.append(SendRun(email_id, owner, loaded))
        started[-1].start(s)

    loaded = claim(email_id, owner, utcnow(), then=start)
    if loaded is None:
        log.debug("send_dropped", email_id=email_id, reason="nothing due or another run holds it")
        return
    run: SendRun | None = started[-1]
    try:
        assert run is not None
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
            release(email_id, owner)


def _give_up(run: SendRun | None, email_id: str, owner: str, code: str, message: str) -> None:
    """Fail an email's open deliveries (possibly-delivered ones become unconfirmed) and log why."""
    log.error("send_gave_up", email_id=email_id, code=code, reason=message)
    try:
        if run is None:
            with tx() as s:
                run = SendRun(email_id, owner, load(s, email_id))
        if run.outbox.state in ("queued", "sending"):
            run._fail_all(code, message)
        elif run.outbox.state == "sent":
            assert run.account is not None
            SentCopy(email_id, owner, run.outbox, run.email, run.account, run.settings, run._let_go).done("failed", message)
    except LeaseLost:
        pass
