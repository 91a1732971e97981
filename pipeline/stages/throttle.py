"""Rate limits for tracking hits: a memory-bounded keyed limiter and the stored-events window cap.

Pure stage: every time is an argument (seconds); nothing here reads a clock, the environment or a
database. Two decisions live here:

* :class:`KeyedLimiter`, the per-process pre-filter the intake applies to each hit before it is
  buffered (keyed by token and by client address). It is a GCRA token bucket — one float per key,
  the key's "theoretical arrival time" — whose table cannot grow past ``max_keys``: when it is full,
  keys whose bucket has refilled are forgotten first (they hold no state), then the least indebted
  half, so a flood of distinct keys never evicts the hammered one.
* :func:`window_cap`, the authoritative rule the recording worker applies against what is stored:
  at most ``limit`` events per key within any ``window`` seconds, however many web processes
  let hits through.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right, insort
from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

__all__ = ["KeyedLimiter", "address_key", "window_cap"]

_K = TypeVar("_K", bound=Hashable)


class KeyedLimiter:
    """Up to ``per_minute`` events per key per minute, ``burst`` of them at once (default: ``per_minute``).

    :meth:`allow` answers one event at ``now``. A key seen for the first time (or after its bucket
    refilled) has a full bucket. Memory: at most ``max_keys`` entries of one key and one float.
    Safe to share between threads under the GIL: a race can let an extra event through, never
    corrupt the table.
    """

    __slots__ = ("interval", "tolerance", "max_keys", "_tat")

    def __init__(self, per_minute: float, *, burst: int | None = None, max_keys: int = 50_000) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        burst = max(1, int(per_minute) if burst is None else burst)
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * (burst - 1)  # how far ahead of now a key's arrival time may run
        self.max_keys = max(2, max_keys)
        self._tat: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def allow(self, key: Hashable, now: float) -> bool:
        """Whether one more event for ``key`` at ``now`` is within the rate (and, if so, count it)."""
        table = self._tat
        tat = table.get(key)
        if tat is None:
            if len(table) >= self.max_keys:
                self._shrink(now)
                table = self._tat
            tat = now
        elif tat <= now:
            tat = now
        elif tat - now > self.tolerance:
            if tat - now <= self.tolerance + self.interval:
                return False
            tat = now  # further ahead than the rate allows: the clock went back; start the key afresh
        table[key] = tat + self.interval
        return True

    def _shrink(self, now: float) -> None:
        """Make room: forget keys owing at most one event (a refilled or a single-hit bucket: forgetting
        them gives back at most one event each); if more than half the table still owes more, keep
        only the most indebted half."""
        floor = now + self.interval
        live = {k: t for k, t in self._tat.items() if t > floor}
        keep = self.max_keys // 2
        if len(live) > keep:
            cut = sorted(live.values())[len(live) - keep]
            live = {k: t for k, t in live.items() if t > cut}
        self._tat = live


def address_key(ip: str) -> str:
    """The unit one client is limited by: the IPv4 address, or the IPv6 /64 (one subscriber's prefix).

    IPv4-mapped IPv6 counts as its IPv4 address; anything unparsable is its own key.
    """
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.packed[:8].hex() + "::/64"


def window_cap(candidates: Iterable[tuple[_K, float]], stored: Mapping[_K, Iterable[float]], *,
               limit: int, window: float) -> list[bool]:
    """For each candidate ``(key, at)``, in order: may it be stored, so that no key has more than
    ``limit`` events within any ``window`` seconds?

    ``stored`` holds the times of events already kept, per key (at least those within ``window`` of
    the candidates). A candidate is kept when fewer than ``limit`` kept events of its key lie within
    ``window`` on either side of it; kept candidates count against later ones. Checking both sides
    keeps the bound when batches are recorded out of order (a late batch meets events after it);
    for events recorded in order it is the plain sliding window.
    """
    times: dict[_K, list[float]] = {}
    out: list[bool] = []
    for key, at in candidates:
        seen = times.get(key)
        if seen is None:
            seen = times[key] = sorted(stored.get(key, ()))
        near = bisect_right(seen, at + window) - bisect_left(seen, at - window)
        if near < limit:
            insort(seen, at)
            out.append(True)
        else:
            out.append(False)
    return out
