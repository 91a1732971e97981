"""Tracking throttle: the bounded keyed limiter, the stored-events window cap, and the intake's
per-token / per-address pre-filter (pipeline.stages.throttle, pipeline.throttle)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from ops import metrics
from pipeline.stages.throttle import KeyedLimiter, address_key, window_cap
from web.hit_throttle import HitThrottle
from web.intake import Intake, Spool


def allowed(limiter: KeyedLimiter, key: object, times: list[float]) -> int:
    return sum(limiter.allow(key, t) for t in times)


class TestKeyedLimiter:
    def test_burst_then_the_rate(self) -> None:
        """A key gets its full bucket at once, then one event per interval: 20/min is a burst of 20,
        then one every 3 s."""
        lim = KeyedLimiter(20)
        assert allowed(lim, "k", [100.0] * 50) == 20
        assert not lim.allow("k", 102.9)
        assert lim.allow("k", 103.0)
        assert not lim.allow("k", 103.1)
        assert allowed(lim, "k", [103.0 + 3 * i + 0.01 for i in range(1, 11)]) == 10

    def test_refills_after_quiet(self) -> None:
        """After a minute without events an exhausted key has its whole burst back."""
        lim = KeyedLimiter(20)
        assert allowed(lim, "k", [0.0] * 30) == 20
        assert allowed(lim, "k", [60.0] * 30) == 20

    def test_hammering_for_a_minute_gets_burst_plus_rate(self) -> None:
        """1,000 events a second for a minute: 20 at once, then one every 3 s (at 3, 6, ... 57 s), nothing more."""
        lim = KeyedLimiter(20)
        n = allowed(lim, "k", [i / 1000 for i in range(60_000)])
        assert n == 20 + 19

    def test_a_person_reopening_every_few_seconds_always_counts(self) -> None:
        """Opens every 5 s for ten minutes (12 a minute, under the 20/min rate) are all allowed."""
        lim = KeyedLimiter(20)
        assert allowed(lim, "k", [5.0 * i for i in range(120)]) == 120

    def test_keys_are_independent(self) -> None:
        """One key's exhausted bucket does not touch another's."""
        lim = KeyedLimiter(5)
        assert allowed(lim, "a", [0.0] * 10) == 5
        assert allowed(lim, "b", [0.0] * 10) == 5

    def test_explicit_burst(self) -> None:
        """``burst`` bounds what goes through at once independently of the rate."""
        lim = KeyedLimiter(60, burst=3)
        assert allowed(lim, "k", [0.0] * 10) == 3
        assert lim.allow("k", 1.0) and not lim.allow("k", 1.5)

    def test_memory_stays_bounded_under_a_million_distinct_keys(self) -> None:
        """A flood of distinct keys (forged tokens, spoofed addresses) never grows the table past
        max_keys, and the key being hammered meanwhile stays throttled: it is never the one evicted."""
        lim = KeyedLimiter(20, max_keys=10_000)
        assert allowed(lim, "victim", [0.0] * 20) == 20
        let_through = 0
        biggest = 0
        for i in range(1_000_000):
            now = i / 20_000  # 20,000 distinct keys a second for 50 s
            lim.allow(("flood", i), now)
            if i % 50 == 0:
                let_through += lim.allow("victim", now)
            biggest = max(biggest, len(lim)) if i % 997 == 0 else biggest
        assert len(lim) <= 10_000 and biggest <= 10_000
        assert let_through <= 50 / 3 + 1, "the hammered key got only its refill (one per 3 s), eviction gave it nothing"

    def test_table_memory_is_small(self) -> None:
        """A full table of 50,000 keys (hash ints, as the intake uses) stays under 10 MB."""
        lim = KeyedLimiter(20, max_keys=50_000)
        for i in range(60_000):
            lim.allow(hash(("e" * 24, f"{i:032x}")), 0.0)
        table = lim._tat
        size = sys.getsizeof(table) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in table.items())
        assert len(table) <= 50_000 and size < 10 * 1024 * 1024, size

    def test_clock_going_back_does_not_lock_a_key_out(self) -> None:
        """If the clock jumps back an hour, a key is started afresh instead of refused for an hour."""
        lim = KeyedLimiter(20)
        assert allowed(lim, "k", [7200.0] * 20) == 20
        assert lim.allow("k", 3600.0)

    def test_rejects_a_zero_rate(self) -> None:
        with pytest.raises(ValueError):
            KeyedLimiter(0)


class TestAddressKey:
    def test_ipv4_is_itself(self) -> None:
        assert address_key("203.0.113.9") == "203.0.113.9"

    def test_ipv6_is_its_slash_64(self) -> None:
        """Addresses of one /64 (one subscriber can use them all) share a key; another /64 does not."""
        a, b = address_key("2001:db8:1:2::1"), address_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        assert a == b != address_key("2001:db8:1:3::1")

    def test_ipv4_mapped_is_the_ipv4_address(self) -> None:
        assert address_key("::ffff:203.0.113.9") == "203.0.113.9"

    def test_garbage_is_its_own_key(self) -> None:
        assert address_key("not:an:address") == "not:an:address"


class TestWindowCap:
    def test_in_order_is_a_sliding_window(self) -> None:
        """3 per 60 s: the 4th within a minute of the first is refused; one a minute after the first passes."""
        keep = window_cap([("t", t) for t in (0, 10, 20, 30, 61, 62)], {}, limit=3, window=60)
        assert keep == [True, True, True, False, True, False]

    def test_stored_events_count(self) -> None:
        """Events already stored (another worker, another web replica's hits) use up the window."""
        keep = window_cap([("t", 50.0), ("u", 50.0)], {"t": [0.0, 10.0, 20.0]}, limit=3, window=60)
        assert keep == [False, True]

    def test_a_late_batch_cannot_overfill_a_window(self) -> None:
        """Events recorded out of order (a batch from before stored ones) still leave at most
        ``limit`` in any window: stored at 30, 40, 50, a late event at 0 is refused."""
        assert window_cap([("t", 0.0)], {"t": [30.0, 40.0, 50.0]}, limit=3, window=60) == [False]
        assert window_cap([("t", 0.0)], {"t": [70.0, 80.0, 90.0]}, limit=3, window=60) == [True]

    def test_any_window_holds_at_most_limit(self) -> None:
        """500 candidates at random times in random order, against stored events that already fill
        some windows: no 60 s window ends up with more than 5."""
        rng = random.Random(7)
        stored = [float(t) for t in range(0, 600, 30)]  # two a minute
        cands = [("t", rng.uniform(0, 600)) for _ in range(500)]
        keep = window_cap(cands, {"t": stored}, limit=5, window=60)
        kept = sorted(stored + [at for (_, at), ok in zip(cands, keep, strict=True) if ok])
        assert len(kept) > len(stored) + 10, "the cap still lets events in"
        assert max(sum(1 for t in kept if start <= t <= start + 60) for start in kept) <= 5


def hit(token: str = "ab" * 16, ip: str | None = "203.0.113.9", at: float = 1000.0, kind: str = "open") -> dict[str, Any]:
    return {"kind": kind, "email_id": "e" * 24, "token": token, "ip": ip, "at": at}


def counter(kind: str, by: str) -> float:
    return metrics.TRACK_THROTTLED.labels(kind, by)._value.get()


class TestHitThrottle:
    def test_one_token_hammered_from_one_address(self) -> None:
        """5,000 hits on one pixel in 5 s: the token's burst goes through, the rest is counted by="token";
        the same address's other tokens are still admitted (the token is checked first)."""
        th = HitThrottle(token_per_minute=20, ip_per_minute=600, max_keys=1000)
        before = counter("open", "token")
        admitted = sum(th.admit(hit(at=1000 + i / 1000)) for i in range(5000))
        assert admitted == 21  # 20 at once, one refilled at 3 s
        assert counter("open", "token") - before == 5000 - 21
        assert all(th.admit(hit(token=f"{i:032x}", at=1005.0)) for i in range(50))

    def test_many_tokens_from_one_address(self) -> None:
        """One address cycling through 2,000 distinct tokens (forged or not) in a second is cut at its
        address's burst, counted by="ip"; another address is unaffected."""
        th = HitThrottle(token_per_minute=20, ip_per_minute=600, max_keys=10_000)
        before = counter("click", "ip")
        admitted = sum(th.admit(hit(token=f"{i:032x}", at=1000 + i / 2000, kind="click")) for i in range(2000))
        assert 600 <= admitted <= 611
        assert counter("click", "ip") - before == 2000 - admitted
        assert th.admit(hit(token="cd" * 16, ip="198.51.100.1", at=1001.0, kind="click"))

    def test_ipv6_neighbours_share_a_budget(self) -> None:
        """Rotating through addresses of one IPv6 /64 does not get around the address limit."""
        th = HitThrottle(token_per_minute=0, ip_per_minute=10, max_keys=1000)
        assert sum(th.admit(hit(ip=f"2001:db8::{i:x}", at=1000.0)) for i in range(100)) == 10

    def test_zero_turns_a_limit_off(self) -> None:
        th = HitThrottle(token_per_minute=0, ip_per_minute=0, max_keys=1000)
        assert th.tokens is None and th.addresses is None
        assert all(th.admit(hit()) for _ in range(5000))

    def test_no_address_only_the_token_limit(self) -> None:
        th = HitThrottle(token_per_minute=5, ip_per_minute=1, max_keys=1000)
        assert sum(th.admit(hit(ip=None)) for _ in range(10)) == 5


def test_intake_drops_what_the_throttle_refuses(tmp_path: Path) -> None:
    """The intake's submit asks admit first: refused hits are neither buffered nor counted as buffered."""
    published: list[dict[str, Any]] = []
    th = HitThrottle(token_per_minute=3, ip_per_minute=0, max_keys=100)
    intake = Intake(published.extend, Spool(tmp_path, 10**6), admit=th.admit)
    buffered = metrics.TRACK_INTAKE.labels("buffered")._value.get()
    for i in range(10):
        intake.submit({**hit(at=1000.0), "id": i})
    assert metrics.TRACK_INTAKE.labels("buffered")._value.get() - buffered == 3
    intake.stop()
    assert [e["id"] for e in published] == [0, 1, 2]
