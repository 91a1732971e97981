"""What a message joins a conversation by, without touching a database.

A message carries keys: ``m:<id>`` for its own Message-ID and every id it names in In-Reply-To and
References, ``t:<root>`` for the first 22 bytes of Outlook's ``Thread-Index`` (the conversation's
root: one reserved byte, a FILETIME, a GUID; every reply appends 5 bytes) and ``g:<thrid>`` for
Gmail's ``X-GM-THRID``. Two messages sharing any key are one conversation, whichever arrives first.
Mail without matching keys (an Outlook reply to a message sent by another client, a forward from a
phone) falls back to the normalized subject with an overlapping participant within
:data:`SUBJECT_WINDOW`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.stages.threads import normalize_message_id

__all__ = ["SUBJECT_WINDOW", "Candidate", "message_keys", "normalize_subject", "participants", "pick_by_subject",
           "search_text", "thread_index_root"]

SUBJECT_WINDOW = timedelta(days=30)
MAX_KEY = 1000
MAX_PARTICIPANTS = 50

# Reply and forward prefixes in the languages mail clients write them in (Re, AW, SV, Fwd, WG, TR, ...),
# with an optional counter ("Re[2]:", "RE(3):") and either colon; and leading [tags] such as "[EXTERNAL]".
_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|vs|fw|fwd|wg|tr|antw|rif|ref|odp|enc)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]|\[[^\]]{0,80}\])\s*",
                     re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalize_subject(subject: str | None) -> str:
    """The subject without reply/forward prefixes and [tags], whitespace collapsed, lower case
    ("RE: AW: [Support] Invoice  42" → "invoice 42"); at most 500 characters."""
    text = (subject or "")[:2000]
    for _ in range(20):  # each pass strips one prefix; bounded for hostile subjects
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _SPACE.sub(" ", text).strip().casefold()[:500]


def search_text(subject: str | None, people: Sequence[str]) -> str:
    """What the conversation list's ``q`` matches: the subject and the participants, lower case."""
    return " ".join([(subject or "")[:2000], *people]).casefold()


def thread_index_root(value: str | None) -> str | None:
    """The conversation root of an Outlook ``Thread-Index`` header (base64 of at least 22 bytes), or None."""
    if not value:
        return None
    compact = "".join(value.split())[:4000]
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 22:
        return None
    return base64.b64encode(raw[:22]).decode("ascii")


def message_keys(*, message_id: str | None, in_reply_to: str | None, references: Sequence[str],
                 thread_index: str | None, gm_thrid: int | None) -> list[str]:
    """Every key of a message, own id first (see the module docstring)."""
    keys: list[str] = []
    for mid in (message_id, in_reply_to, *references):
        norm = normalize_message_id(mid)
        if norm:
            keys.append(f"m:{norm}"[:MAX_KEY])
    root = thread_index_root(thread_index)
    if root:
        keys.append(f"t:{root}")
    if gm_thrid is not None:
        keys.append(f"g:{gm_thrid}")
    return list(dict.fromkeys(keys))


def participants(addresses: Iterable[str | None], own: Iterable[str | None]) -> list[str]:
    """The normalized (lower-cased) addresses other than the mailbox's own, sorted, at most 50."""
    mine = {a.strip().lower() for a in own if a}
    found = {a.strip().lower() for a in addresses if a and "@" in a} - mine
    return sorted(found)[:MAX_PARTICIPANTS]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A conversation with the same normalized subject in the same mailbox."""

    id: str
    participants: Sequence[str]
    first_message_at: datetime | None
    last_message_at: datetime | None


def pick_by_subject(candidates: Sequence[Candidate], people: Sequence[str], at: datetime) -> str | None:
    """The conversation a message without matching keys joins: one sharing a participant, whose
    messages are within 30 days of ``at``; the most recent such. None: start a new conversation."""
    if not people:
        return None
    mine = set(people)
    best: Candidate | None = None
    for c in candidates:
        last, first = c.last_message_at or c.first_message_at, c.first_message_at or c.last_message_at
        if last is None or first is None or not mine.intersection(c.participants):
            continue
        if at - last > SUBJECT_WINDOW or first - at > SUBJECT_WINDOW:
            continue
        best_last = (best.last_message_at or best.first_message_at) if best is not None else None
        if best is None or best_last is None or (last, c.id) > (best_last, best.id):
            best = c
    return best.id if best is not None else None
