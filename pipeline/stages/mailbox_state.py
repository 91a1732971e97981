"""Two-way mailbox state decisions (pure): how to learn a folder's flag changes and expunges, what a
server report changes on the stored locations and emails, and what a user's change writes back.

Emails show ``seen``/``flagged``/``answered`` as the server has them on any of their locations, and
``deleted_on_server`` once a server-side expunge took the last location away.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FLAG_WINDOW",
    "EmailFlags",
    "FlagCheck",
    "LocationUpdate",
    "email_flags",
    "location_updates",
    "plan_flag_check",
    "store_actions",
]

FLAG_WINDOW = 500
"""Without CONDSTORE, each fetch compares the flags of this many most recent stored messages per folder."""

SEEN, FLAGGED, ANSWERED = "\\Seen", "\\Flagged", "\\Answered"


@dataclass(frozen=True, slots=True)
class EmailFlags:
    """The flags the API shows for an email."""

    seen: bool = False
    flagged: bool = False
    answered: bool = False


def email_flags(location_flags: Iterable[Collection[str]]) -> EmailFlags:
    """An email's flags from its locations' flags: set where any location has it (INBOX and Sent
    copies of one message may differ; read anywhere is read)."""
    union: set[str] = set()
    for flags in location_flags:
        union.update(f.lower() for f in flags)
    return EmailFlags(seen=SEEN.lower() in union, flagged=FLAGGED.lower() in union, answered=ANSWERED.lower() in union)


@dataclass(frozen=True, slots=True)
class FlagCheck:
    """How to learn a folder's changes this run.

    ``changedsince``: ask for flags changed after that MODSEQ (CONDSTORE; with QRESYNC the expunges
    come along as VANISHED). ``window_from``: list the flags of every UID from there up and treat a
    stored UID that is not listed as expunged (servers without QRESYNC). Both None: nothing changed.
    """

    method: Literal["none", "changedsince", "window", "both"]
    changedsince: int | None = None
    window_from: int | None = None


def plan_flag_check(enabled: Collection[str], stored_modseq: int | None, server_modseq: int | None,
                    recent_uids: Collection[int]) -> FlagCheck:
    """Decide the cheapest check that finds this folder's flag changes and expunges.

    ``stored_modseq``: the folder's HIGHESTMODSEQ when its flags were last brought up to date;
    ``server_modseq``: the one STATUS reports now; ``recent_uids``: the UIDs of the most recent stored
    locations of the folder (at most :data:`FLAG_WINDOW`).
    """
    condstore = "CONDSTORE" in enabled and stored_modseq is not None and server_modseq is not None
    window_from = min(recent_uids) if recent_uids else None
    if condstore and server_modseq == stored_modseq:
        return FlagCheck("none")  # every flag change and expunge raises HIGHESTMODSEQ
    if condstore and "QRESYNC" in enabled:
        return FlagCheck("changedsince", changedsince=stored_modseq)
    if condstore:
        if window_from is None:
            return FlagCheck("changedsince", changedsince=stored_modseq)
        return FlagCheck("both", changedsince=stored_modseq, window_from=window_from)
    if window_from is None:
        return FlagCheck("none")
    return FlagCheck("window", window_from=window_from)


@dataclass(frozen=True, slots=True)
class LocationUpdate:
    """New flags (and their MODSEQ) for one stored location."""

    uid: int
    flags: tuple[str, ...]
    modseq: int | None


def location_updates(stored: Mapping[int, tuple[Collection[str], int | None]], reported: Mapping[int, Collection[str]],
                     modseqs: Mapping[int, int]) -> list[LocationUpdate]:
    """The locations whose flags the server reports differently. A report older than what is stored
    (a lower MODSEQ: another path already wrote a newer state) changes nothing."""
    out = []
    for uid, flags in reported.items():
        if uid not in stored:
            continue
        current, current_modseq = stored[uid]
        modseq = modseqs.get(uid)
        if modseq is not None and current_modseq is not None and modseq < current_modseq:
            continue
        wanted = tuple(sorted(set(flags)))
        if wanted != tuple(sorted(set(current))) or (modseq is not None and modseq != current_modseq):
            out.append(LocationUpdate(uid, wanted, modseq))
    return out


def store_actions(seen: bool | None, flagged: bool | None) -> tuple[list[str], list[str]]:
    """The flags a user's change adds and removes on the server (None: leave that flag alone)."""
    add, remove = [], []
    for value, flag in ((seen, SEEN), (flagged, FLAGGED)):
        if value is True:
            add.append(flag)
        elif value is False:
            remove.append(flag)
    return add, remove
