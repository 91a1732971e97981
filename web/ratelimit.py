"""Per-organization rate limits for costly endpoints (connection tests), kept in this process.

Each web process counts on its own: with N replicas an organization gets at most N times the
limit, which still bounds what one API key can make the fleet connect to. Over the limit: 429
``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ops.settings import get_settings
from pipeline.stages.ratelimit import Bucket, take
from web.errors import ApiError

__all__ = ["CONNECTION_TESTS", "OrgRateLimiter", "reset_limits"]

MAX_TRACKED = 10_000


class OrgRateLimiter:
    """A token bucket per organization; ``per_minute`` is read on every call (settings may change in tests)."""

    def __init__(self, what: str, per_minute: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._what, self._per_minute, self._clock = what, per_minute, clock
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def check(self, org_id: str) -> None:
        """Count one use by org_id, or raise ApiError 429 with Retry-After."""
        per_minute = self._per_minute()
        with self._lock:
            if len(self._buckets) >= MAX_TRACKED and org_id not in self._buckets:
                self._buckets.clear()  # only idle organizations' state is lost: they start full again
            bucket, wait = take(self._buckets.get(org_id), self._clock(), per_minute)
            self._buckets[org_id] = bucket
        if wait:
            raise ApiError(429, "rate_limited", f"too many {self._what}: at most {per_minute} a minute per organization; "
                           f"try again in {wait} s", {"retry_after": wait}, headers={"Retry-After": str(wait)})

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


CONNECTION_TESTS = OrgRateLimiter("connection tests", lambda: get_settings().account_tests_per_minute)


def reset_limits() -> None:
    """Forget every bucket (tests)."""
    CONNECTION_TESTS.reset()
