"""A latency probe in a child process: GETs one URL in a loop, as an orchestrator's liveness check
would, and reports when each request started and how long it took.

It runs in its own process so that its timings measure the server under test, not this process's
GIL (an in-process probe thread would wait for the same interpreter as a busy server thread).
``time.monotonic()`` is system-wide on Linux, so the test selects the samples that overlap a
window it timed itself.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass

from tests.harness.wait import wait_until

__all__ = ["LatencyProbe", "Sample"]

# The child: one keep-alive connection, a request every ``interval`` seconds, one line per request
# ("start seconds status") on stdout, until stdin closes.
_CHILD = r"""
import http.client, sys, threading, time, urllib.parse
url, interval = urllib.parse.urlsplit(sys.argv[1]), float(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
conn = None
while not stop.is_set():
    start = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", url.path or "/")
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        conn, status = None, 0
    took = time.monotonic() - start
    sys.stdout.write(f"{start:.6f} {took:.6f} {status}\n")
    sys.stdout.flush()
    time.sleep(max(0.0, interval - took))
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe request: when it started (``time.monotonic()``), how long it took, its HTTP status."""

    start: float
    seconds: float
    status: int


class LatencyProbe:
    def __init__(self, url: str, *, interval: float = 0.01) -> None:
        self.url = url
        self.interval = interval
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._samples: list[Sample] = []
        self._lock = threading.Lock()

    def start(self) -> LatencyProbe:
        self._proc = subprocess.Popen([sys.executable, "-c", _CHILD, self.url, str(self.interval)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name="latency-probe")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            start, seconds, status = line.split()
            with self._lock:
                self._samples.append(Sample(float(start), float(seconds), int(status)))

    def during(self, start: float, end: float, *, timeout: float = 30) -> list[Sample]:
        """The samples whose request overlapped [start, end] (monotonic seconds), once the request in
        flight at ``end`` has answered too."""
        wait_until(lambda: self._last_start() > end, timeout, interval=0.01, what="a probe request after the window")
        with self._lock:
            return [s for s in self._samples if s.start <= end and s.start + s.seconds >= start]

    def _last_start(self) -> float:
        with self._lock:
            return self._samples[-1].start if self._samples else float("-inf")

    def stop(self) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        self._proc = None
