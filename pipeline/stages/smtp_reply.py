"""What an SMTP reply or failure means for a message: sent, retry later, or give up (pure; no sockets).

The outcome follows the reply's first digit (RFC 5321 §4.2.1): 2xx sent, 4xx retry, 5xx fail.
``error_code`` names the reason in snake_case, taken from the RFC 3463 enhanced status code when
there is one (``5.1.1``) and from well-known server wording otherwise. Connection-level failures
(DNS, connect, TLS, timeout, auth) are classified by :func:`classify_error` from the client's kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ERROR_CODES",
    "SmtpOutcome",
    "SmtpVerdict",
    "classify_error",
    "classify_reply",
    "enhanced_code",
    "overall_verdict",
    "per_recipient",
]

ERROR_CODES = frozenset(
    {
        "mailbox_unavailable",
        "auth_failed",
        "rate_limited",
        "message_too_large",
        "insufficient_storage",
        "relay_denied",
        "greylisted",
        "temporary_failure",
        "permanent_failure",
        "connection_failed",
        "timeout",
        "tls_failed",
        "dns_failed",
    }
)

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
_GREYLIST_WORDS = ("greylist", "graylist", "grey-list", "gray-list")
_RATE_WORDS = (
    "rate limit",
    "rate-limit",
    "ratelimit",
    "too many",
    "throttl",
    "unusual rate",
    "at a rate",
    "sending limit",
    "sending quota",
    "limit exceeded",
)
_STORAGE_WORDS = ("quota", "mailbox full", "mailbox is full", "storage", "disk full", "out of space")
_SIZE_WORDS = ("too large", "too big", "size limit", "exceeds size", "message size", "maximum size")
_MAILBOX_WORDS = (
    "user unknown",
    "unknown user",
    "no such user",
    "does not exist",
    "doesn't exist",
    "mailbox unavailable",
    "mailbox not found",
    "recipient not found",
    "address rejected",
    "invalid recipient",
)
_TLS_WORDS = ("starttls", "encryption required", "must use tls", "tls required")
_RATE_ENHANCED = frozenset({"4.5.3", "4.7.28", "5.4.5", "5.5.3", "5.7.28"})
_AUTH_ENHANCED = frozenset({"5.7.8", "5.7.9", "5.7.14"})
_TLS_ENHANCED = frozenset({"5.7.10", "5.7.11"})
_SIZE_ENHANCED = frozenset({"5.3.4", "5.2.3"})
_MAILBOX_REPLIES = frozenset({550, 551, 553})
_CONNECTION_ERRORS = {
    "dns": ("retry", "dns_failed"),
    "connect": ("retry", "connection_failed"),
    "timeout": ("retry", "timeout"),
    "tls": ("fail", "tls_failed"),
    "auth": ("fail", "auth_failed"),
}


class SmtpOutcome(str, Enum):
    """What to do with the message: it went out, try again later, or give up."""

    SENT = "sent"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class SmtpVerdict:
    """A classified reply: outcome, reply code, enhanced code ("5.1.1"), server text and reason."""

    outcome: SmtpOutcome
    code: int | None
    enhanced: str | None
    message: str
    error_code: str

    @property
    def reply(self) -> str:
        """The reply as the server said it ("550 5.1.1 no such user"), or just the message."""
        return f"{self.code} {self.message}" if self.code is not None else self.message


def enhanced_code(code: int, text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of text, if its class matches code."""
    match = _ENHANCED.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return None
    return ".".join(str(int(part)) for part in match.groups())


def classify_reply(code: int, text: str) -> SmtpVerdict:
    """Classify one SMTP reply (code and text as the server sent them)."""
    message = text.strip()
    enhanced = enhanced_code(code, message)
    lowered = message.lower()
    if 200 <= code < 300:
        return SmtpVerdict(SmtpOutcome.SENT, code, enhanced, message, "")
    if 500 <= code < 600:
        return SmtpVerdict(SmtpOutcome.FAIL, code, enhanced, message, _permanent_reason(code, enhanced, lowered))
    if 400 <= code < 500:
        return SmtpVerdict(SmtpOutcome.RETRY, code, enhanced, message, _transient_reason(code, enhanced, lowered))
    # Not a final reply (1xx/3xx) or garbage: not a refusal, so worth another attempt.
    return SmtpVerdict(SmtpOutcome.RETRY, code, enhanced, message, "temporary_failure")


def _transient_reason(code: int, enhanced: str | None, lowered: str) -> str:
    """The error_code of a 4xx reply."""
    if any(word in lowered for word in _GREYLIST_WORDS) or (enhanced == "4.7.1" and code in (450, 451)):
        return "greylisted"
    if enhanced in _RATE_ENHANCED or any(word in lowered for word in _RATE_WORDS):
        return "rate_limited"
    if code == 452 or enhanced in ("4.2.2", "4.3.1") or any(word in lowered for word in _STORAGE_WORDS):
        return "insufficient_storage"
    return "temporary_failure"


def _permanent_reason(code: int, enhanced: str | None, lowered: str) -> str:
    """The error_code of a 5xx reply; the order settles replies that fit several reasons."""
    if code in (534, 535) or enhanced in _AUTH_ENHANCED:
        return "auth_failed"
    if code == 538 or enhanced in _TLS_ENHANCED or (code == 530 and any(word in lowered for word in _TLS_WORDS)):
        return "tls_failed"
    if code == 530:
        return "auth_failed"
    if enhanced in _RATE_ENHANCED or any(word in lowered for word in _RATE_WORDS):
        return "rate_limited"
    if enhanced in _SIZE_ENHANCED or any(word in lowered for word in _SIZE_WORDS):
        return "message_too_large"
    if enhanced == "5.2.2" or any(word in lowered for word in _STORAGE_WORDS):
        return "insufficient_storage"
    if code == 552:
        return "message_too_large"
    if enhanced == "5.7.1" or "relay" in lowered:
        return "relay_denied"
    if (enhanced is not None and (enhanced.startswith("5.1.") or enhanced == "5.2.1")) or any(
        word in lowered for word in _MAILBOX_WORDS
    ):
        return "mailbox_unavailable"
    if code in _MAILBOX_REPLIES and enhanced is None:
        return "mailbox_unavailable"
    return "permanent_failure"


def per_recipient(refused: Mapping[str, tuple[int, str]]) -> dict[str, SmtpVerdict]:
    """Classify each refused recipient's (code, text)."""
    return {address: classify_reply(code, text) for address, (code, text) in refused.items()}


def classify_error(kind: str, message: str, code: int | None = None) -> SmtpVerdict:
    """Classify a failure that happened before any message was handed over.

    kind is the client's error kind (dns/connect/tls/auth/timeout/protocol). A protocol failure with
    a reply code is classified like that reply; without one it is permanent.
    """
    if kind in _CONNECTION_ERRORS:
        outcome, reason = _CONNECTION_ERRORS[kind]
        if kind == "auth" and code is not None and 400 <= code < 500:
            return classify_reply(code, message)
        return SmtpVerdict(SmtpOutcome(outcome), code, _enhanced_or_none(code, message), message, reason)
    if code is not None:
        return classify_reply(code, message)
    return SmtpVerdict(SmtpOutcome.FAIL, None, None, message, "permanent_failure")


def overall_verdict(refused: Mapping[str, SmtpVerdict]) -> SmtpVerdict:
    """One verdict for a message nobody accepted: retry if any refusal was transient, else fail."""
    if not refused:
        raise ValueError("no refusals to summarise")
    verdicts = list(refused.values())
    return next((v for v in verdicts if v.outcome is SmtpOutcome.RETRY), verdicts[0])


def _enhanced_or_none(code: int | None, message: str) -> str | None:
    """enhanced_code when there is a reply code."""
    return enhanced_code(code, message) if code is not None else None
