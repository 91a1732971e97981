"""A token bucket, as a pure function of its state and the time: ``burst`` tries at once, then
``per_minute`` a minute. The caller keeps the state and the clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Bucket", "take"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens left at monotonic time ``at`` (seconds)."""

    tokens: float
    at: float


def take(bucket: Bucket | None, now: float, per_minute: int, burst: int | None = None) -> tuple[Bucket, int]:
    """Take one token: (new state, 0) when allowed, else (state, whole seconds until one is back).

    A missing bucket is full. ``burst`` defaults to ``per_minute``.
    """
    if per_minute <= 0:
        raise ValueError("per_minute must be positive")
    capacity = float(burst if burst is not None else per_minute)
    rate = per_minute / 60.0
    tokens = capacity if bucket is None else min(capacity, bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0
    return Bucket(tokens, now), max(1, math.ceil((1.0 - tokens) / rate))
