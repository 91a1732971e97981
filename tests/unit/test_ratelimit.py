"""pipeline.stages.ratelimit (token bucket) and web.ratelimit (per-organization, 429 with Retry-After)."""

from __future__ import annotations

import pytest

from pipeline.stages.ratelimit import take
from web.errors import ApiError
from web.ratelimit import OrgRateLimiter


def test_burst_then_refill_at_the_rate() -> None:
    """per_minute=6: six at once, then one every 10 s; the wait is rounded up to whole seconds."""
    bucket = None
    for _ in range(6):
        bucket, wait = take(bucket, 100.0, 6)
        assert wait == 0
    bucket, wait = take(bucket, 100.0, 6)
    assert wait == 10
    bucket, wait = take(bucket, 104.5, 6)
    assert wait == 6  # 4.5 s of the 10 refilled
    bucket, wait = take(bucket, 110.0, 6)
    assert wait == 0


def test_idle_bucket_does_not_grow_past_the_burst() -> None:
    bucket, _ = take(None, 0.0, 2)
    bucket, _ = take(bucket, 10_000.0, 2)
    assert bucket.tokens == 1.0


def test_org_limiter_raises_429_with_retry_after_per_organization() -> None:
    now = [0.0]
    limiter = OrgRateLimiter("connection tests", lambda: 2, clock=lambda: now[0])
    limiter.check("org-a")
    limiter.check("org-a")
    with pytest.raises(ApiError) as caught:
        limiter.check("org-a")
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    assert caught.value.headers == {"Retry-After": "30"} and caught.value.details == {"retry_after": 30}
    limiter.check("org-b")  # another organization has its own bucket
    now[0] = 30.0
    limiter.check("org-a")
