"""The intake's per-process pre-filter of tracking hits: per token and per client address.

Every pixel and click hit passes :meth:`HitThrottle.admit` before it is buffered. A hit beyond its
token's rate (``MAILPIPE_TRACKING_TOKEN_PER_MINUTE``: one email and recipient hash, or one email and
link hash) or its client's (``MAILPIPE_TRACKING_IP_PER_MINUTE``: an IPv4 address or an IPv6 /64) is
counted in ``mailpipe_tracking_throttled_total{kind, by="token"|"ip"}`` and dropped here: it never
reaches the broker or the worker. The pixel and the redirect answer as usual; the caller does not
look at the result for anything but the event.

This limit is per process (N web replicas let N times as much through); the authoritative cap on
what is stored per token is applied again by the recording worker against the database
(``by="record"``, :mod:`pipeline.flows.tracking_record`).
"""

from __future__ import annotations

from typing import Any

from ops import metrics
from pipeline.stages.throttle import KeyedLimiter, address_key

__all__ = ["HitThrottle"]

_COUNTERS = {(kind, by): metrics.TRACK_THROTTLED.labels(kind, by) for kind in ("open", "click") for by in ("token", "ip")}


class HitThrottle:
    """Token and address limiters (either off when its rate is 0), keyed by hashes to keep them small."""

    def __init__(self, *, token_per_minute: int, ip_per_minute: int, max_keys: int) -> None:
        self.tokens = KeyedLimiter(token_per_minute, max_keys=max_keys) if token_per_minute > 0 else None
        self.addresses = KeyedLimiter(ip_per_minute, max_keys=max_keys) if ip_per_minute > 0 else None

    def admit(self, event: dict[str, Any]) -> bool:
        """Whether the hit goes on to the intake's buffer; a refused one is counted.

        The hit's own ``at`` (epoch seconds, taken by the request path) is the clock: no second
        clock read on the hot path. The token is checked first, so hammering one URL spends no
        budget of the address's other tokens.
        """
        now = event["at"]
        if self.tokens is not None and not self.tokens.allow(hash((event["email_id"], event["token"])), now):
            self._count(event, "token")
            return False
        ip = event.get("ip")
        if self.addresses is not None and ip and not self.addresses.allow(hash(address_key(ip)), now):
            self._count(event, "ip")
            return False
        return True

    @staticmethod
    def _count(event: dict[str, Any], by: str) -> None:
        counter = _COUNTERS.get((str(event.get("kind")), by))
        if counter is not None:
            counter.inc()
