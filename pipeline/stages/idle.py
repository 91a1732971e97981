"""IMAP IDLE watcher decisions (pure): each watcher's share of the mailboxes, reconnect backoff with
jitter, when to re-issue IDLE, and what a batch of server events asks for."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["MAX_REISSUE_SECONDS", "EventActions", "backoff_seconds", "event_actions", "fair_share", "share_change"]

MAX_REISSUE_SECONDS = 25 * 60
"""IDLE is ended and issued again at most this often: servers drop an IDLE after 29 minutes (RFC 2177)."""


def fair_share(due: int, live_watchers: int, capacity: int) -> int:
    """How many mailboxes one watcher should hold: an even split of those due, within its capacity."""
    if due <= 0 or capacity <= 0:
        return 0
    return min(capacity, math.ceil(due / max(1, live_watchers)))


def share_change(held: int, share: int) -> int:
    """Mailboxes to claim (positive) or give back (negative). A watcher gives back only what is
    clearly above its share (a tenth, at least one), so two watchers never trade mailboxes back and forth."""
    if held < share:
        return share - held
    slack = max(1, share // 10)
    if held > share + slack:
        return share - held
    return 0


def backoff_seconds(failures: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> float:
    """Wait before reconnect number ``failures`` (1, 2, ...): exponential up to ``cap``, with jitter
    (half to all of it), so a server that dropped every session is not hit by all of them at once."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2 ** (min(failures, 30) - 1))
    return ceiling * (rng or random).uniform(0.5, 1.0)


@dataclass(slots=True)
class EventActions:
    """What to do about a batch of events: run a fetch (new mail, or a change only a fetch can place)
    and/or apply flag changes (by UID, with MODSEQs) and expunged UIDs directly."""

    fetch: bool = False
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)


class _Event(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def uids(self) -> tuple[int, ...]: ...
    @property
    def flags(self) -> frozenset[str] | None: ...
    @property
    def modseq(self) -> int | None: ...


def event_actions(events: Iterable[_Event]) -> EventActions:
    """EXISTS → fetch; FETCH naming its UID (QRESYNC) → flags; VANISHED → gone; a FETCH or EXPUNGE
    with only a sequence number → a fetch, whose flag comparison finds what changed."""
    out = EventActions()
    for event in events:
        if event.kind == "exists":
            out.fetch = True
        elif event.kind == "flags" and event.uids and event.flags is not None:
            uid = event.uids[0]
            out.flags[uid] = event.flags
            out.gone.discard(uid)
            if event.modseq is not None:
                out.modseqs[uid] = event.modseq
        elif event.kind == "vanished":
            out.gone.update(event.uids)
            for uid in event.uids:
                out.flags.pop(uid, None)
                out.modseqs.pop(uid, None)
        elif event.kind in ("flags", "expunge"):
            out.fetch = True
    return out
