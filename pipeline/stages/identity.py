"""A message's identity for deduplication, from its bytes alone (pure, cheap).

The fetch step computes this before the full parse so the same message seen twice (INBOX and
Sent, a redelivered batch, a re-index after a UIDVALIDITY change) becomes one email row.
Order of preference: Gmail's X-GM-MSGID, the normalized Message-ID, then for mail without a
Message-ID a hash of the stable headers *and the body* (``hb:``): two messages with the same
Date/From/To/Subject but different bodies are two emails.

Keys change only in new prefixes. ``legacy_key`` is what the previous rules (``hdr:``, a hash of the
headers alone, no obsolete header syntax, no leading byte-order mark) gave the same bytes, so the fetch step can find a row
stored before the change instead of importing the message a second time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from pipeline.stages.parse import normalize_message_id, repair_header_block

__all__ = ["Identity", "message_identity"]

_STABLE_HEADERS = ("date", "from", "to", "cc", "subject", "in-reply-to")
_EVERY_OCCURRENCE = frozenset(("to", "cc"))
_HEADER_LIMIT = 256 * 1024
_MAX_MESSAGE_ID = 995  # emails.message_id
_MAX_KEY = 600  # emails.dedupe_key


@dataclass(frozen=True, slots=True)
class Identity:
    """``dedupe_key`` is unique per account; ``message_id`` is the normalized Message-ID or None;
    ``legacy_key`` is the key earlier releases stored for the same bytes, when it differs."""

    dedupe_key: str
    message_id: str | None
    legacy_key: str | None = None


def _header_block(raw: bytes) -> bytes:
    head = raw[:_HEADER_LIMIT]
    for sep in (b"\r\n\r\n", b"\n\n"):
        cut = head.find(sep)
        if cut != -1:
            return head[: cut + len(sep)]
    return head


def _body(raw: bytes, block: bytes) -> bytes:
    """The body with line ends and trailing whitespace normalized (servers may serve LF or CRLF)."""
    return raw[len(block):].replace(b"\r\n", b"\n").rstrip()


def _headers(block: bytes) -> Message | None:
    try:
        return BytesHeaderParser(policy=compat32).parsebytes(block)
    except Exception:  # headers so broken the parser gave up: fall back to the bytes
        return None


def _stable(headers: Message, every: bool) -> str:
    def value(name: str) -> str:
        found = headers.get_all(name, []) if every and name in _EVERY_OCCURRENCE else [headers.get(name, "")]
        return ", ".join(" ".join(str(v).split()) for v in found).lower()
    return "\x1f".join(value(h) for h in _STABLE_HEADERS)


def _message_id(headers: Message | None) -> str | None:
    if headers is None:
        return None
    try:
        message_id = normalize_message_id(str(headers.get("message-id") or "") or None)
    except Exception:
        return None
    if message_id is not None and len(message_id) > _MAX_MESSAGE_ID:
        message_id = message_id[:_MAX_MESSAGE_ID]  # the column's size; the key below stays unique by hash
    return message_id


def _mid_key(message_id: str) -> str:
    if len(message_id) <= _MAX_KEY - 4:
        return f"mid:{message_id}"
    return f"mid#{hashlib.sha256(message_id.encode('utf-8', 'replace')).hexdigest()}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _legacy_key(raw: bytes) -> str:
    """The key of the rules before body hashing and obsolete-syntax headers (kept for old rows)."""
    headers = _headers(_header_block(raw))
    message_id = _message_id(headers)
    if message_id:
        return _mid_key(message_id)
    try:
        stable = "\x1f".join(" ".join(str(headers.get(h, "")).split()).lower() for h in _STABLE_HEADERS) if headers else ""
    except Exception:
        stable = ""
    if stable.strip("\x1f"):
        return f"hdr:{_sha(stable)}"
    return f"raw:{hashlib.sha256(raw).hexdigest()}"


def message_identity(raw: bytes, gm_msgid: int | None = None) -> Identity:
    """Identity of a raw message; never raises."""
    fixed = repair_header_block(raw)
    block = _header_block(fixed)
    headers = _headers(block)
    message_id = _message_id(headers)
    if gm_msgid is not None:
        return Identity(f"gm:{gm_msgid}", message_id)
    if message_id:
        key = _mid_key(message_id)
    else:
        try:
            stable = _stable(headers, every=True) if headers is not None else ""
        except Exception:
            stable = ""
        if stable.strip("\x1f"):
            digest = hashlib.sha256(stable.encode("utf-8", "replace"))
            digest.update(b"\x1e")
            digest.update(_body(fixed, block))
            key = f"hb:{digest.hexdigest()}"
        else:
            key = f"raw:{hashlib.sha256(raw).hexdigest()}"
    legacy = _legacy_key(raw) if (fixed is not raw or key.startswith("hb:")) else key
    return Identity(key, message_id, legacy if legacy != key else None)
