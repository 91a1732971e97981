"""Derive a stable thread key for a message without touching a database.

Gmail's ``X-GM-THRID`` wins when present (``gm:<thrid>``). Otherwise the message joins the thread of
the nearest already-known message it references, and failing that starts the thread named after its
root, ``mid:<first References id>``. A message without references is its own root, ``mid:<its id>``,
so a reply that arrives before its parent and the parent arriving later agree on the same key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["normalize_message_id", "parse_references", "thread_key"]

_BRACKETED = re.compile(r"<([^<>\s]+)>")


def normalize_message_id(raw: str | None) -> str:
    """Return the Message-ID without angle brackets or surrounding text, or "" when there is none."""
    if not raw:
        return ""
    match = _BRACKETED.search(raw)
    if match:
        return match.group(1)
    words = raw.strip().strip("<>").split()
    return words[0].strip("<>") if words else ""


def parse_references(header: str | None) -> list[str]:
    """Split a References header into normalized ids, oldest first, without duplicates."""
    if not header:
        return []
    ids = _BRACKETED.findall(header) or [normalize_message_id(w) for w in header.replace(",", " ").split()]
    return list(dict.fromkeys(i for i in ids if i))


def thread_key(
    *,
    message_id: str | None,
    in_reply_to: str | None,
    references: Sequence[str],
    gm_thrid: int | None,
    known_threads: Callable[[Sequence[str]], str | None],
    fallback: str,
) -> str:
    """Return the message's thread key.

    1. ``gm:<gm_thrid>`` when Gmail supplied a thread id (``known_threads`` is not called).
    2. The thread of a known related message: ``known_threads`` is called once with the normalized ids
       in priority order (References last to first, i.e. nearest parent first, then In-Reply-To, then
       the message's own id to catch a copy of it stored earlier) and must return the thread key of
       the first id it knows, or None.
    3. ``mid:<root>``: the first References id, else In-Reply-To, else the message's own id.
    4. ``fallback`` (caller-chosen, deterministic, e.g. ``"sha256:<digest of the raw message>"``).

    ``references`` may be a list of ids or the raw header string. A message listing its own id as a
    reference has that entry ignored.
    """
    if gm_thrid is not None:
        return f"gm:{gm_thrid}"
    own = normalize_message_id(message_id)
    if isinstance(references, str):
        refs = parse_references(references)
    else:
        refs = [normalize_message_id(r) for r in references]
    refs = [r for r in dict.fromkeys(refs) if r and r != own]
    parent = normalize_message_id(in_reply_to)
    if parent == own:
        parent = ""

    related = list(dict.fromkeys([*reversed(refs), *([parent] if parent else []), *([own] if own else [])]))
    if related:
        known = known_threads(related)
        if known:
            return known
    root = refs[0] if refs else parent or own
    if root:
        return f"mid:{root}"
    if not fallback:
        raise ValueError("message has no Message-ID, In-Reply-To or References and fallback is empty")
    return fallback
