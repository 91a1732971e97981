"""Outbound decisions (pure; no sockets, no sessions, no clock): how to split a send into SMTP
transactions, what a reply means for a delivery, when to try again, whether the daily cap allows
another message, what a half-finished delivery found after a crash means, and the email's status.

The send run (:mod:`pipeline.flows.send_run`) is the I/O shell around these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.stages.smtp_reply import SmtpOutcome

__all__ = [
    "DEFAULT_DAILY_CAPS",
    "MAX_ATTEMPTS",
    "CapDecision",
    "DeliveryPlan",
    "SendWindow",
    "Summary",
    "attempt_outcome",
    "backoff",
    "daily_cap",
    "plan_deliveries",
    "reconcile",
    "reserve",
    "summarize",
]

#: Messages per 24-hour window the big providers allow a mailbox (Gmail 500, Outlook.com / M365 300).
DEFAULT_DAILY_CAPS: dict[str, int] = {"gmail": 500, "outlook": 300}
#: One first attempt plus three retries for 4xx replies and network errors.
MAX_ATTEMPTS = 4
WINDOW = timedelta(hours=24)
FINAL_DELIVERY_STATES = frozenset({"sent", "failed", "unconfirmed", "suppressed"})


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """One SMTP transaction: its RCPT TO list and, for a per-recipient copy, whose copy it is."""

    recipients: tuple[str, ...]
    tracked_for: str | None


def plan_deliveries(to: Sequence[str], cc: Sequence[str], bcc: Sequence[str], *, per_recipient: bool) -> list[DeliveryPlan]:
    """Split recipients (addr-specs) into transactions.

    ``per_recipient`` (tracking on, or marketing mail with a personal unsubscribe link): one
    transaction per distinct address, so an open or unsubscribe is attributed to one person.
    Otherwise one transaction for everyone. Duplicates (case-insensitive) are sent once.
    """
    seen: dict[str, str] = {}
    for address in (*to, *cc, *bcc):
        seen.setdefault(address.lower(), address)
    unique = tuple(seen.values())
    if not unique:
        return []
    if per_recipient:
        return [DeliveryPlan((a,), a) for a in unique]
    return [DeliveryPlan(unique, None)]


def attempt_outcome(outcome: SmtpOutcome, attempts: int, *, max_attempts: int = MAX_ATTEMPTS) -> str:
    """What a finished attempt (the ``attempts``-th) means: "sent", "retry" or "failed".

    The SMTP reply code alone decides: 2xx sent, 5xx failed at once, 4xx and network errors are
    retried until ``max_attempts`` attempts have been made.
    """
    if outcome is SmtpOutcome.SENT:
        return "sent"
    if outcome is SmtpOutcome.FAIL:
        return "failed"
    return "retry" if attempts < max_attempts else "failed"


def backoff(attempts: int, base_seconds: float, *, cap_seconds: float = 3600.0) -> timedelta:
    """Exponential wait after the ``attempts``-th failed attempt: base, 2×base, 4×base … (capped)."""
    return timedelta(seconds=min(cap_seconds, base_seconds * (2 ** max(0, attempts - 1))))


def daily_cap(provider: str, override: int | None, default_other: int) -> int:
    """The account's messages-per-window cap: its own setting, else the provider's, else the default."""
    if override is not None:
        return override
    return DEFAULT_DAILY_CAPS.get(provider, default_other)


@dataclass(frozen=True, slots=True)
class SendWindow:
    """A 24-hour sending window: when it opened (None: none yet) and how many messages it holds."""

    start: datetime | None
    count: int


@dataclass(frozen=True, slots=True)
class CapDecision:
    """Either a slot was taken (``window`` is the new state) or the send waits until ``deferred_until``."""

    allowed: bool
    window: SendWindow
    deferred_until: datetime | None = None


def reserve(window: SendWindow, *, now: datetime, cap: int, n: int = 1) -> CapDecision:
    """Take ``n`` message slots (one per SMTP transaction) in the window, all or none, opening a new
    window when the old one has passed. More than a whole window's worth is allowed into an empty
    window, so a large email is never deferred forever."""
    if window.start is None or now >= window.start + WINDOW:
        window = SendWindow(now, 0)
    if window.count > 0 and window.count + n > cap:
        assert window.start is not None
        return CapDecision(False, window, window.start + WINDOW)
    return CapDecision(True, SendWindow(window.start, window.count + n))


def reconcile(state: str, *, found_in_sent: bool | None) -> str:
    """What to do with a delivery a crashed run left behind: "resend", "sent" or "unconfirmed".

    ``sending``/``retry``/``pending``: the DATA command was never issued, so the server cannot have
    the message: send it. ``data``: DATA was issued and its reply never recorded, so the server may
    have delivered it. Only a positive answer is trusted: a provider that files accepted mail in
    Sent itself and shows our Message-ID there (``found_in_sent``) confirms it was sent. Absence
    proves nothing (the copy may not be indexed yet), so the delivery is recorded as "unconfirmed"
    (shown as sent with a warning) and never resent.
    """
    if state != "data":
        return "resend"
    return "sent" if found_in_sent else "unconfirmed"


@dataclass(frozen=True, slots=True)
class Summary:
    """The email's status once its deliveries are final, and an error when something went wrong."""

    status: str
    error: dict[str, object] | None


def summarize(deliveries: Sequence[tuple[str, int | None, str | None, str | None, Sequence[str]]],
              refused: Sequence[str] = ()) -> Summary | None:
    """Status from (state, smtp_code, smtp_message, error_code, recipients) per delivery; None while any is open.

    All delivered → "sent". None delivered → "failed" with the first failure's code and text.
    Some delivered → "sent" with ``error.code = "partial_failure"`` naming who did not get it
    (failed transactions plus ``refused``: recipients a server turned away for good inside a
    transaction that others got).
    Unconfirmed deliveries count as sent and add ``delivery_unconfirmed`` when nothing failed.
    """
    if any(state not in FINAL_DELIVERY_STATES for state, *_ in deliveries):
        return None
    delivered = [d for d in deliveries if d[0] in ("sent", "unconfirmed")]
    failed = [d for d in deliveries if d[0] == "failed"]
    suppressed = [d for d in deliveries if d[0] == "suppressed"]
    if not delivered:
        if failed:
            state, code, message, error_code, _ = failed[0]
            return Summary("failed", {"code": error_code or "send_failed", "message": message or "the server refused the message",
                                      "smtp_code": code})
        return Summary("failed", {"code": "all_suppressed", "smtp_code": None,
                                  "message": "every recipient is on the suppression list (unsubscribed, bounced or complained)"})
    if failed or refused:
        who = [r for d in failed for r in d[4]] + [r for r in refused if r not in {x for d in failed for x in d[4]}]
        state, code, message, error_code, _ = failed[0] if failed else ("failed", None, "recipient refused", None, ())
        return Summary("sent", {"code": "partial_failure", "message": f"not delivered to {', '.join(who)}: {message or error_code}",
                                "smtp_code": code, "failed_recipients": who})
    unconfirmed = [r for d in delivered if d[0] == "unconfirmed" for r in d[4]]
    if unconfirmed:
        return Summary("sent", {"code": "delivery_unconfirmed", "smtp_code": None, "unconfirmed_recipients": unconfirmed,
                                "message": "the worker stopped after handing the message to the server; it was most "
                                           "likely delivered and was not sent again"})
    if suppressed:
        return Summary("sent", {"code": "partially_suppressed", "smtp_code": None,
                                "message": "skipped unsubscribed recipients: " + ", ".join(r for d in suppressed for r in d[4])})
    return Summary("sent", None)
