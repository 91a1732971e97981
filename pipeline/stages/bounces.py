"""Recognizing delivery reports and complaints in received mail (pure: bytes in, a report out).

- RFC 3464 ``multipart/report; report-type=delivery-status``: one entry per recipient block of the
  ``message/delivery-status`` part whose ``Action`` is ``failed`` or ``delayed``; ``5.x.x`` (or
  ``failed`` without a status) is ``hard``, ``4.x.x`` or ``delayed`` is ``soft``.
- RFC 5965 ARF ``multipart/report; report-type=feedback-report`` with ``Feedback-Type: abuse``
  (or no type): a complaint by the original recipient.
- Other bounces (Exim, qmail, old Exchange, Yahoo...: no machine-readable part) are left to
  flufl.bounce's detectors, asked only when the message looks like a bounce (a null or daemon
  sender, or a bounce subject), so ordinary mail is never taken for one.

Matching to our sent email uses what the report returns of the original: ``X-Mailpipe-Email-Id``
and ``Message-ID`` from the ``message/rfc822`` or ``text/rfc822-headers`` part, and as a last
resort those headers quoted anywhere in the report's text.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal

from flufl.bounce import all_failures

from pipeline.stages.parse import normalize_message_id

__all__ = ["BounceRecipient", "Report", "detect_report"]

BounceType = Literal["hard", "soft"]


@dataclass(frozen=True, slots=True)
class BounceRecipient:
    recipient: str
    type: BounceType
    status: str
    diagnostic: str


@dataclass(frozen=True, slots=True)
class Report:
    """A delivery report (``bounce``) or a complaint (``complaint``) and what identifies the original."""

    kind: Literal["bounce", "complaint"]
    recipients: tuple[BounceRecipient, ...]
    email_ids: tuple[str, ...]
    message_ids: tuple[str, ...]
    feedback_type: str | None = None


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_EMAIL_ID_TEXT = re.compile(r"X-Mailpipe-Email-Id:\s*([A-Za-z0-9_-]{1,64})", re.I)
_MESSAGE_ID_TEXT = re.compile(r"^\s*Message-ID:\s*(<[^>\r\n]{1,995}>)", re.I | re.M)
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery (status )?(notification|failure|failed)|returned mail|failure notice|"
                             r"mail delivery (failed|system)|non[- ]?delivery|could not be delivered|delivery has failed", re.I)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.I)
_MAX_TEXT = 200_000
_MAX_HEAD = 256 * 1024
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _address(value: str | None) -> str | None:
    """``rfc822; a@b`` → ``a@b`` (lower-cased domain); None when it is no address."""
    if not value:
        return None
    text = " ".join(str(value).split())
    _, _, addr = text.rpartition(";")
    addr = addr.strip().strip("<>").strip()
    if "@" not in addr or len(addr) > 320 or any(c.isspace() for c in addr):
        return None
    local, _, domain = addr.rpartition("@")
    return f"{local}@{domain.lower()}"


def _text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # hostile transfer encodings: no text, no crash
        return ""
    if isinstance(payload, bytes):
        return payload[:_MAX_TEXT].decode("utf-8", "replace")
    return str(part.get_payload())[:_MAX_TEXT] if not part.is_multipart() else ""


def _split_blocks(text: str) -> list[Message]:
    return [message_from_bytes(block.encode("utf-8", "replace"), policy=policy.compat32)
            for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if block.strip()]


def _header_blocks(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report`` part
    (blank lines between blocks: one or several; a block's own base64 body decoded, as some MTAs write it)."""
    payload = part.get_payload()
    if not (isinstance(payload, list) and all(isinstance(p, Message) for p in payload)):
        return _split_blocks(_text(part))
    out: list[Message] = []
    for block in payload:
        if not isinstance(block, Message):
            continue
        if len(block.keys()):
            out.append(block)
        body = block.get_payload()
        if isinstance(body, str) and body.strip():
            out += _split_blocks(_text(block) if len(block.keys()) else _maybe_base64(body))
    return out


def _maybe_base64(body: str) -> str:
    """A header-less block: base64 of the recipient fields (when the encoding was declared in the block before), or text."""
    try:
        decoded = base64.b64decode("".join(body.split()), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return body
    return decoded if ":" in decoded else body


def _original_ids(msg: Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``X-Mailpipe-Email-Id`` values and Message-IDs of the returned original, in order found."""
    email_ids: list[str] = []
    message_ids: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        headers: Message | None = None
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                headers = inner[0]
        elif ctype == "text/rfc822-headers":
            headers = message_from_bytes(_text(part).encode("utf-8", "replace"), policy=policy.compat32)
        if headers is not None:
            eid = str(headers.get("X-Mailpipe-Email-Id") or "").strip()
            if eid and eid not in email_ids:
                email_ids.append(eid[:64])
            mid = normalize_message_id(str(headers.get("Message-ID") or "") or None)
            if mid and mid not in message_ids:
                message_ids.append(mid)
    if not email_ids and not message_ids:  # a non-standard bounce quoting the original in its text
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                body = _text(part)
                for m in _EMAIL_ID_TEXT.finditer(body):
                    if m.group(1) not in email_ids:
                        email_ids.append(m.group(1))
                for m in _MESSAGE_ID_TEXT.finditer(body):
                    mid = normalize_message_id(m.group(1))
                    if mid and mid not in message_ids:
                        message_ids.append(mid)
    return tuple(email_ids), tuple(message_ids)


def _delivery_status(msg: Message) -> list[BounceRecipient] | None:
    found: list[BounceRecipient] = []
    seen = False
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        seen = True
        for block in _header_blocks(part)[1:] or _header_blocks(part):
            rcpt = _address(block.get("Final-Recipient")) or _address(block.get("Original-Recipient"))
            action = str(block.get("Action") or "").strip().lower()
            status_m = _STATUS.search(str(block.get("Status") or "")) or _STATUS.search(str(block.get("Diagnostic-Code") or ""))
            if not action and status_m is not None:  # Action left out: the status class says it
                action = {"5": "failed", "4": "delayed"}.get(status_m.group(1), "")
            if rcpt is None or action not in ("failed", "delayed"):
                continue
            status = ".".join(status_m.groups()) if status_m else ("5.0.0" if action == "failed" else "4.0.0")
            kind: BounceType = "hard" if action == "failed" and status.startswith("5") else "soft"
            diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())[:1000]
            if rcpt not in {r.recipient for r in found}:
                found.append(BounceRecipient(rcpt, kind, status, diagnostic))
    return found if seen else None


def _complaint(msg: Message) -> Report | None:
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields: dict[str, str] = {}
        for block in _header_blocks(part):
            for k, v in block.items():
                fields.setdefault(k.lower(), str(v))
        ftype = fields.get("feedback-type", "abuse").strip().lower() or "abuse"
        if ftype not in ("abuse", "fraud", "virus", "other"):
            return None
        email_ids, message_ids = _original_ids(msg)
        rcpt = _address(fields.get("original-rcpt-to")) or _address(fields.get("removal-recipient"))
        if rcpt is None:
            for sub in msg.walk():
                inner = sub.get_payload() if sub.get_content_type() == "message/rfc822" else None
                if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                    rcpt = _address(str(inner[0].get("To") or "").split(",")[0])
                    break
        recipients = (BounceRecipient(rcpt, "hard", "complaint", f"feedback-type={ftype}"),) if rcpt else ()
        return Report("complaint", recipients, email_ids, message_ids, feedback_type=ftype)
    return None


def _looks_like_bounce(msg: Message) -> bool:
    sender = _address(str(msg.get("From") or "").split("<")[-1].rstrip(">")) or ""
    return_path = str(msg.get("Return-Path") or "").strip()
    return bool(_DAEMON.match(sender) or return_path in ("<>", "") and _BOUNCE_SUBJECT.search(str(msg.get("Subject") or ""))
                or _BOUNCE_SUBJECT.search(str(msg.get("Subject") or "")) and "auto" in str(msg.get("Auto-Submitted") or "").lower())


def _nonstandard(msg: Message) -> list[BounceRecipient]:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripping over hostile MIME: not a bounce
        return []
    text = " ".join(_text(p) for p in msg.walk() if p.get_content_maintype() == "text")[:_MAX_TEXT]
    status_m = _STATUS.search(text)
    out: list[BounceRecipient] = []
    for raw_addr, kind in [*((a, "hard") for a in sorted(permanent)), *((a, "soft") for a in sorted(temporary))]:
        addr = _address(raw_addr.decode("utf-8", "replace") if isinstance(raw_addr, bytes) else str(raw_addr))
        if addr and addr not in {r.recipient for r in out}:
            status = ".".join(status_m.groups()) if status_m and status_m.group(1) == ("5" if kind == "hard" else "4") else \
                ("5.0.0" if kind == "hard" else "4.0.0")
            out.append(BounceRecipient(addr, "hard" if kind == "hard" else "soft", status, ""))
    return out


def _maybe_report(raw: bytes) -> bool:
    """From the headers alone: could this be a report at all (most mail is not; no full parse for it)."""
    head_block = raw[:_MAX_HEAD]
    end = _BLANK_LINE.search(head_block)  # the header block ends at the first empty line: parse no body
    if end is not None:
        head_block = head_block[:end.end()]
    try:
        head = BytesHeaderParser(policy=policy.compat32).parsebytes(head_block)
    except Exception:  # hostile header block: let the full parse decide
        return True
    return head.get_content_type() == "multipart/report" or _looks_like_bounce(head)


def detect_report(raw: bytes) -> Report | None:
    """The delivery report or complaint ``raw`` is, or None for any other message."""
    if not _maybe_report(raw):
        return None
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
    except Exception:  # unparseable: the parse stage quarantines it, not this one
        return None
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    if report_type == "feedback-report":
        return _complaint(msg)
    recipients = _delivery_status(msg) if ctype == "multipart/report" else None
    if recipients is None:
        if not _looks_like_bounce(msg):
            return None
        recipients = _nonstandard(msg)
        if not recipients:
            return None
    email_ids, message_ids = _original_ids(msg)
    return Report("bounce", tuple(recipients), email_ids, message_ids)
