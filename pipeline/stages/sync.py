"""IMAP sync decisions: which folders to sync and what to fetch from each (pure; no sockets).

Per folder we keep a cursor (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the highest UID processed and
how far the newest-first backfill has got). Given the cursor and a fresh STATUS, :func:`plan_folder`
says what to do; the fetch actor carries it out and stores the new cursor it returns.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal, Protocol

__all__ = [
    "FolderCursor",
    "FolderChoice",
    "FolderPlan",
    "RateWindow",
    "advance",
    "choose_folders",
    "is_gmail",
    "plan_folder",
    "rate_allowance",
    "select_batch",
]


class _Folder(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def special_use(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class FolderChoice:
    """A folder to sync and its role: ``inbox``, ``sent`` or ``all`` (Gmail's All Mail)."""

    name: str
    role: Literal["inbox", "sent", "all"]


def is_gmail(capabilities: Collection[str], folders: Sequence[_Folder]) -> bool:
    """Gmail = X-GM-EXT-1 advertised *and* an ``\\All`` folder visible (else treat as generic)."""
    caps = {c.upper() for c in capabilities}
    return "X-GM-EXT-1" in caps and any("\\All" in f.special_use for f in folders)


def choose_folders(capabilities: Collection[str], folders: Sequence[_Folder]) -> list[FolderChoice]:
    """INBOX plus the ``\\Sent`` special-use folder; on Gmail, only All Mail (labels are views).

    Folder names are never assumed: the Sent folder is found by its RFC 6154 attribute only.
    """
    if is_gmail(capabilities, folders):
        return [FolderChoice(next(f.name for f in folders if "\\All" in f.special_use), "all")]
    chosen = [FolderChoice(f.name, "inbox") for f in folders if f.name.upper() == "INBOX"][:1]
    sent = [f for f in folders if "\\Sent" in f.special_use and f.name.upper() != "INBOX"]
    if sent:
        chosen.append(FolderChoice(sent[0].name, "sent"))
    return chosen


@dataclass(frozen=True, slots=True)
class FolderCursor:
    """What we know about a folder after the last successful batch."""

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    last_uid: int = 0
    backfill_low_uid: int | None = None
    backfill_done: bool = False


@dataclass(frozen=True, slots=True)
class FolderPlan:
    """What to do with one folder now.

    ``reset`` means the stored UIDs are void (first sync or UIDVALIDITY changed): re-index. The
    fetch actor then searches ``backfill_since`` for UIDs ``< backfill_below`` (newest first) and
    fetches new mail from ``new_from`` upward.
    """

    action: Literal["noop", "sync"]
    reason: str
    reset: bool = False
    reindex: bool = False
    new_from: int | None = None
    backfill_below: int | None = None
    backfill_since: date | None = None
    cursor: FolderCursor = FolderCursor()


class _Status(Protocol):
    @property
    def uidvalidity(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def highestmodseq(self) -> int | None: ...


def plan_folder(cursor: FolderCursor | None, status: _Status, *, now: datetime, backfill_days: int) -> FolderPlan:
    """Decide the work for one folder from its cursor and a fresh STATUS."""
    since = (now.astimezone(UTC) - timedelta(days=backfill_days)).date()
    if cursor is None or cursor.uidvalidity is None:
        fresh = FolderCursor(uidvalidity=status.uidvalidity, uidnext=status.uidnext, highestmodseq=status.highestmodseq,
                             last_uid=status.uidnext - 1, backfill_low_uid=status.uidnext, backfill_done=False)
        return FolderPlan("sync", "first sync: backfill newest first", reset=True, new_from=status.uidnext,
                          backfill_below=status.uidnext, backfill_since=since, cursor=fresh)
    if cursor.uidvalidity != status.uidvalidity:
        fresh = FolderCursor(uidvalidity=status.uidvalidity, uidnext=status.uidnext, highestmodseq=status.highestmodseq,
                             last_uid=status.uidnext - 1, backfill_low_uid=status.uidnext, backfill_done=False)
        return FolderPlan("sync", f"UIDVALIDITY changed {cursor.uidvalidity} → {status.uidvalidity}: re-index silently",
                          reset=True, reindex=True, new_from=status.uidnext, backfill_below=status.uidnext,
                          backfill_since=since, cursor=fresh)
    has_new = status.uidnext > cursor.last_uid + 1
    backfill_pending = not cursor.backfill_done and (cursor.backfill_low_uid or 0) > 1
    if not has_new and not backfill_pending:
        return FolderPlan("noop", "no new UIDs", cursor=replace(cursor, uidnext=status.uidnext, highestmodseq=status.highestmodseq))
    reasons = []
    if has_new:
        reasons.append(f"new UIDs from {cursor.last_uid + 1}")
    if backfill_pending:
        reasons.append(f"backfill below UID {cursor.backfill_low_uid}")
    return FolderPlan(
        "sync", "; ".join(reasons),
        new_from=cursor.last_uid + 1 if has_new else None,
        backfill_below=cursor.backfill_low_uid if backfill_pending else None,
        backfill_since=since if backfill_pending else None,
        cursor=replace(cursor, uidnext=status.uidnext, highestmodseq=status.highestmodseq),
    )


def select_batch(new_uids: Sequence[int], backfill_uids: Sequence[int], *, last_uid: int, backfill_below: int | None,
                 limit: int) -> tuple[list[int], list[int]]:
    """Pick at most ``limit`` UIDs: new mail first (ascending), then backfill (newest first).

    ``UID n:*`` always returns the highest UID even when it is below n, so UIDs ``<= last_uid``
    are dropped here; backfill UIDs at or above ``backfill_below`` are dropped likewise.
    """
    fresh = sorted(u for u in set(new_uids) if u > last_uid)[:limit]
    room = limit - len(fresh)
    older: list[int] = []
    if room > 0 and backfill_below is not None:
        older = sorted((u for u in set(backfill_uids) if u < backfill_below), reverse=True)[:room]
    return fresh, older


def advance(cursor: FolderCursor, *, fetched_new: Sequence[int], fetched_backfill: Sequence[int],
            backfill_exhausted: bool) -> FolderCursor:
    """The cursor after a batch was stored: new-mail high-water mark up, backfill low-water mark down."""
    last_uid = max([cursor.last_uid, *fetched_new])
    low = cursor.backfill_low_uid
    if fetched_backfill:
        low = min(fetched_backfill)
    return replace(cursor, last_uid=last_uid, backfill_low_uid=low, backfill_done=cursor.backfill_done or backfill_exhausted)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """Per-user hourly budget: messages counted since ``start``."""

    start: datetime | None
    count: int


def rate_allowance(window: RateWindow, *, now: datetime, limit: int, period: timedelta = timedelta(hours=1),
                   siblings: Sequence[RateWindow] = ()) -> tuple[int, RateWindow]:
    """How many messages this mailbox may fetch now, and the window to store for it.

    The budget is per user: ``siblings`` are the windows of the user's other mailboxes, and
    whatever they fetched within their current period counts against the same limit.
    """
    if window.start is None or now - window.start >= period:
        window = RateWindow(now, 0)
    used = window.count + sum(w.count for w in siblings if w.start is not None and now - w.start < period)
    return max(0, limit - used), window
