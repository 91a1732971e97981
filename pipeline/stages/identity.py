"""A message's identity for deduplication, from its headers alone (pure, cheap).

The fetch step computes this before the full parse so the same message seen twice (INBOX and
Sent, a redelivered batch, a re-index after a UIDVALIDITY change) becomes one email row.
Order of preference: Gmail's X-GM-MSGID, the normalized Message-ID, a hash of stable headers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from pipeline.stages.parse import normalize_message_id

__all__ = ["Identity", "message_identity"]

_STABLE_HEADERS = ("date", "from", "to", "cc", "subject", "in-reply-to")
_HEADER_LIMIT = 256 * 1024
_MAX_MESSAGE_ID = 995  # emails.message_id
_MAX_KEY = 600  # emails.dedupe_key


@dataclass(frozen=True, slots=True)
class Identity:
    """``dedupe_key`` is unique per account; ``message_id`` is the normalized Message-ID or None."""

    dedupe_key: str
    message_id: str | None


def _header_block(raw: bytes) -> bytes:
    head = raw[:_HEADER_LIMIT]
    for sep in (b"\r\n\r\n", b"\n\n"):
        cut = head.find(sep)
        if cut != -1:
            return head[: cut + len(sep)]
    return head


def message_identity(raw: bytes, gm_msgid: int | None = None) -> Identity:
    """Identity of a raw message; never raises."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(_header_block(raw))
        message_id = normalize_message_id(str(headers.get("message-id") or "") or None)
        stable = "\x1f".join(" ".join(str(headers.get(h, "")).split()).lower() for h in _STABLE_HEADERS)
    except Exception:  # headers so broken the parser gave up: fall back to the bytes
        message_id, stable = None, ""
    if message_id is not None and len(message_id) > _MAX_MESSAGE_ID:
        message_id = message_id[:_MAX_MESSAGE_ID]  # the column's size; the key below stays unique by hash
    if gm_msgid is not None:
        return Identity(f"gm:{gm_msgid}", message_id)
    if message_id and len(message_id) <= _MAX_KEY - 4:
        return Identity(f"mid:{message_id}", message_id)
    if message_id:
        return Identity(f"mid#{hashlib.sha256(message_id.encode('utf-8', 'replace')).hexdigest()}", message_id)
    if stable.strip("\x1f"):
        return Identity(f"hdr:{hashlib.sha256(stable.encode('utf-8', 'replace')).hexdigest()}", None)
    return Identity(f"raw:{hashlib.sha256(raw).hexdigest()}", None)
