"""Background work that yields to the web side of the same process (embedded ``serve``).

In ``serve`` the tracking recorder runs in the process that answers the pixel, under the same GIL:
two CPU-bound threads share it about evenly, so a flood of opens halved the pixel's throughput while
the recorder kept up with it. Recording can wait (each hit is already in the intake's queue, and a
full queue spills to the durable spool), answering cannot. So:

* :data:`WEB_LOAD` counts the requests the app serves (one integer increment on the request path);
* a :class:`Pacer` lets its queue's consumer hand out the next message only when the recorder's
  share of the recent wall time is within ``share`` — while the web side is busy
  (:meth:`RequestMeter.busy`). An idle web side leaves the recorder at full speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["WEB_LOAD", "Pacer", "RequestMeter"]


class RequestMeter:
    """Requests served, and whether their recent rate is above ``busy_per_second``.

    :meth:`tick` is the request path's only cost (an attribute increment, under the GIL: the event
    loop's thread is the only writer). :meth:`busy` is read by other threads and compares the count
    against the one it saw at least ``window`` seconds earlier.
    """

    def __init__(self, busy_per_second: float = 200.0, window: float = 0.25) -> None:
        self.count = 0
        self.busy_per_second = busy_per_second
        self.window = window
        self._seen = (time.monotonic(), 0)
        self._busy = False
        self._lock = threading.Lock()

    def tick(self) -> None:
        self.count += 1

    def busy(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            then, before = self._seen
            if now - then >= self.window:
                self._busy = (self.count - before) / (now - then) >= self.busy_per_second
                self._seen = (now, self.count)
            return self._busy


#: The process's web request meter: ticked by :class:`web.pixel.PixelFastPath` for every HTTP request.
WEB_LOAD = RequestMeter()


class Pacer:
    """A duty cycle for one consumer: after a message that took ``d`` seconds, the next one starts no
    sooner than ``d * (1 / share - 1)`` later — only while ``busy()`` says so."""

    def __init__(self, share: float, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.busy = busy
        self.clock = clock
        self._next_at = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Seconds to hold the next message back (0: hand it out now)."""
        if self.share >= 1:
            return 0.0
        with self._lock:
            left = self._next_at - self.clock()
        return left if left > 0 and self.busy() else 0.0

    def done(self, seconds: float) -> None:
        """A message took ``seconds`` from hand-out to acknowledgement."""
        with self._lock:
            self._next_at = self.clock() + max(0.0, seconds) * (1 / self.share - 1)
