"""An in-memory SmtpTransport that records what it sends and can be told to refuse or fail.

``FakeSmtpTransport`` answers like the real transport on the aiosmtpd test server: ``fail_with``
has the harness's signature (a reply code at the MAIL, RCPT or DATA stage, counted per command),
``refuse`` turns one address away for good, ``raise_error`` makes the next sends raise an
``SmtpError`` of any kind, and ``probe_result`` is what ``probe`` answers. Thread-safe, so it can
stand in for the real transport under a Dramatiq worker.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.clients.smtp import (
    ProbeResult,
    SendResult,
    SmtpError,
    SmtpErrorKind,
    SmtpSettings,
    envelope_recipients,
    send_result,
)
from pipeline.stages.smtp_reply import SmtpVerdict, classify_reply

__all__ = ["DEFAULT_CAPABILITIES", "FakeSmtpTransport", "SentMail"]

DEFAULT_CAPABILITIES = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "AUTH", "ENHANCEDSTATUSCODES"})
STAGES = ("mail", "rcpt", "data")
FAKE_GREETING = "220 fake.smtp.test ESMTP ready"

SentMail = tuple[str, str, tuple[str, ...], bytes]


@dataclass
class _Script:
    """A scripted reply (code/text at stage) or error (kind), for `remaining` more uses (None: forever)."""

    remaining: int | None
    code: int = 0
    text: str = ""
    stage: str = ""
    kind: SmtpErrorKind | None = None

    def take(self) -> bool:
        """Count one use; True when the script is now used up."""
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining <= 0


class FakeSmtpTransport:
    """SmtpTransport that keeps accepted mail in ``sends`` as (host, mail_from, rcpts, raw)."""

    def __init__(self, capabilities: frozenset[str] = DEFAULT_CAPABILITIES) -> None:
        self.sends: list[SentMail] = []
        self.probes: list[SmtpSettings] = []
        self.attempts = 0
        self.probe_result = ProbeResult(True, None, f"{FAKE_GREETING} (fake)", capabilities)
        self._refusals: dict[str, tuple[int, str]] = {}
        self._reply: _Script | None = None
        self._error: _Script | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def refuse(self, address: str, code: int = 550, text: str = "5.1.1 Mailbox unavailable") -> None:
        """Refuse RCPT for address (case-insensitive) with code/text until accept() is called."""
        with self._lock:
            self._refusals[address.lower()] = (code, text)

    def accept(self, address: str) -> None:
        """Stop refusing address."""
        with self._lock:
            self._refusals.pop(address.lower(), None)

    def fail_with(self, code: int, text: str, stage: str = "rcpt", times: int | None = None) -> None:
        """Answer `code text` at stage ("mail", "rcpt" or "data"), `times` commands or until cleared."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        with self._lock:
            self._reply = _Script(times, code=code, text=text, stage=stage)

    def raise_error(
        self, kind: SmtpErrorKind, message: str = "", code: int | None = None, times: int | None = 1
    ) -> None:
        """Make the next `times` sends (None: all, until cleared) raise SmtpError(kind, message, code)."""
        with self._lock:
            self._error = _Script(times, code=code or 0, text=message or f"scripted {kind.value} failure", kind=kind)

    def fail_probe(self, kind: SmtpErrorKind, message: str) -> None:
        """Make probe() report a failure of kind with message."""
        with self._lock:
            self.probe_result = ProbeResult(False, kind.value, message, self.probe_result.capabilities)

    def clear_failure(self) -> None:
        """Forget scripted replies, errors and refusals; probes succeed again."""
        with self._lock:
            self._reply = self._error = None
            self._refusals.clear()
            self.probe_result = ProbeResult(True, None, f"{FAKE_GREETING} (fake)", self.probe_result.capabilities)

    def probe(self, settings: SmtpSettings) -> ProbeResult:
        """Record settings and answer probe_result."""
        with self._lock:
            self.probes.append(settings)
            return self.probe_result

    def send(self, settings: SmtpSettings, mail_from: str, rcpt_to: Sequence[str], raw: bytes,
             before_data: Callable[[], None] | None = None) -> SendResult:
        """Run the scripted transaction; record the message when DATA is accepted."""
        recipients = envelope_recipients(mail_from, rcpt_to)
        with self._lock:
            self.attempts += 1
            self._raise_scripted_error()
            mail_reply = self._scripted("mail")
            if mail_reply is not None:
                return send_result(recipients, {}, mail_reply)
            refused: dict[str, SmtpVerdict] = {}
            for address in recipients:
                verdict = self._scripted("rcpt") or self._refusal(address)
                if verdict is not None:
                    refused[address] = verdict
                    if verdict.code == 421:
                        return send_result(recipients, refused, verdict)
            if len(refused) == len(recipients):
                return send_result(recipients, refused, None)
            if before_data is not None:
                before_data()
            data_reply = self._scripted("data")
            if data_reply is not None:
                return send_result(recipients, refused, data_reply)
            accepted = tuple(r for r in recipients if r not in refused)
            self.sends.append((settings.host, mail_from, accepted, raw))
            final = classify_reply(250, f"2.0.0 OK queued as fake-{next(self._ids)}")
            return send_result(recipients, refused, final)

    def _raise_scripted_error(self) -> None:
        """Raise the scripted SmtpError, if any, counting it down."""
        script = self._error
        if script is None or script.kind is None:
            return
        if script.take():
            self._error = None
        raise SmtpError(script.kind, script.text, script.code or None)

    def _scripted(self, stage: str) -> SmtpVerdict | None:
        """The scripted reply for stage as a verdict, counting it down, or None."""
        script = self._reply
        if script is None or script.stage != stage:
            return None
        if script.take():
            self._reply = None
        return classify_reply(script.code, script.text)

    def _refusal(self, address: str) -> SmtpVerdict | None:
        """The standing refusal for address as a verdict, or None."""
        found = self._refusals.get(address.lower())
        return classify_reply(*found) if found is not None else None
