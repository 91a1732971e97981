"""What a server tells a client about the selected mailbox without being asked (pure parsing).

During IDLE (RFC 2177) and after commands, servers send untagged ``EXISTS`` (new mail),
``EXPUNGE`` (a sequence number gone), ``VANISHED`` (UIDs gone, with QRESYNC, RFC 7162),
``FETCH`` (flags changed; with QRESYNC it carries the UID) and ``BYE``. :func:`parse_event`
turns one response, as imaplib hands back its parts, into a :class:`MailboxEvent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pipeline.clients.imap_wire import ParseError, Value, fetch_items, parse_responses

__all__ = ["FlagChanges", "MailboxEvent", "parse_event", "parse_uid_set"]

EventKind = Literal["exists", "expunge", "vanished", "flags", "bye"]
_SESSION_FLAGS = frozenset({"\\Recent"})


@dataclass(frozen=True, slots=True)
class MailboxEvent:
    """One unsolicited report. ``number``: the message count (exists) or sequence number (expunge,
    flags); ``uids``: UIDs gone (vanished) or the one whose flags changed (flags, when the server
    names it); ``flags``/``modseq`` for flag changes; ``text`` for bye."""

    kind: EventKind
    number: int | None = None
    uids: tuple[int, ...] = ()
    flags: frozenset[str] | None = None
    modseq: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class FlagChanges:
    """Flags (and MODSEQs, under CONDSTORE) of the UIDs a ``UID FETCH (FLAGS)`` returned, the highest MODSEQ among them, and the UIDs
    the server said are gone (``VANISHED``); ``complete``: every UID in the range was listed, so a
    stored UID missing from ``flags`` is gone too (a plain window fetch, not ``CHANGEDSINCE``)."""

    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)
    vanished: frozenset[int] = frozenset()
    highestmodseq: int | None = None
    complete: bool = False


def parse_uid_set(text: str) -> list[int]:
    """A sequence set of UIDs such as ``3,5:7`` (no ``*``) as a sorted list."""
    uids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ParseError(f"bad UID set {text[:60]!r}")
        a, b = int(low), int(high or low)
        if a > b:
            a, b = b, a
        if b - a > 10_000_000:
            raise ParseError("UID range too large")
        uids.update(range(a, b + 1))
    return sorted(uids)


def _number(value: Value) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_event(parts: Sequence[object]) -> MailboxEvent | None:
    """One untagged response (imaplib's parts: bytes, or (text, literal) tuples, without the ``* ``)
    as an event; None for responses that are no mailbox event (OK, CAPABILITY, RECENT, ...)."""
    responses = parse_responses(parts)
    if not responses or not responses[0]:
        return None
    words = responses[0]
    head = words[0]
    if isinstance(head, str) and head.upper() == "BYE":
        text = " ".join(w if isinstance(w, str) else w.decode("utf-8", "replace") if isinstance(w, bytes) else "" for w in words[1:])
        return MailboxEvent("bye", text=text)
    if isinstance(head, str) and head.upper() == "VANISHED":
        rest = [w for w in words[1:] if not isinstance(w, list)]  # drop "(EARLIER)"
        if not rest or not isinstance(rest[-1], str):
            return None
        return MailboxEvent("vanished", uids=tuple(parse_uid_set(rest[-1])))
    number = _number(head)
    if number is None or len(words) < 2 or not isinstance(words[1], str):
        return None
    kind = words[1].upper()
    if kind == "EXISTS":
        return MailboxEvent("exists", number=number)
    if kind == "EXPUNGE":
        return MailboxEvent("expunge", number=number)
    if kind == "FETCH" and len(words) >= 3:
        items = fetch_items([words[0], words[2]])
        if items is None or "FLAGS" not in items or not isinstance(items["FLAGS"], list):
            return None
        flags = frozenset(f for f in items["FLAGS"] if isinstance(f, str)) - _SESSION_FLAGS
        uid = _number(items.get("UID"))
        modseq_value = items.get("MODSEQ")
        modseq = _number(modseq_value[0]) if isinstance(modseq_value, list) and modseq_value else None
        return MailboxEvent("flags", number=number, uids=(uid,) if uid is not None else (), flags=flags, modseq=modseq)
    return None
