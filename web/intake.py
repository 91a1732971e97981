"""Durable, non-blocking intake of tracking events: request path → buffer → broker, or spool.

The pixel and click handlers call :meth:`Intake.submit`, which only puts a dict on an in-memory
queue (never a socket, never a lock held across I/O). A publisher thread takes batches off the
queue and hands each batch to the broker as one ``tracking.record`` message (RabbitMQ with
publisher confirms, or the in-process broker in embedded mode). When publishing fails the batch
is appended to a spool file (JSON lines, fsync'd in groups) and replayed, oldest first, once the
broker takes messages again; a spool left by a process that died is adopted and replayed by the
next one to start. Every event carries a unique id, so a batch published twice (a replay that
was interrupted) records each event once. Only a full spool (``MAILPIPE_TRACKING_SPOOL_MAX_MB``)
drops events, and that is counted. Before any of that, :meth:`Intake.submit` asks its ``admit``
pre-filter (the per-token and per-address :class:`web.hit_throttle.HitThrottle`) whether the hit
is within its rate; hits beyond it are counted there and go no further.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from ops import metrics
from ops.private_files import PRIVATE_DIR, make_private_dirs, open_private, tighten
from ops.settings import get_settings
from pipeline import jobs
from pipeline.stages.hit_batch import encode_hits
from web.hit_throttle import HitThrottle

__all__ = ["Intake", "Spool", "event_id", "get_intake", "reset_intake", "spool_for_later", "spooled_files"]

log = structlog.get_logger("mailpipe.intake")

Publish = Callable[[list[dict[str, Any]]], None]
Admit = Callable[[dict[str, Any]], bool]
_BUFFERED = metrics.TRACK_INTAKE.labels("buffered")
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def event_id() -> str:
    """A unique event id without a system call on the request path: a random per-process prefix
    (re-drawn after fork) and a counter. System calls release the GIL, and getting it back behind
    the publisher thread is what shows in the pixel's tail latency."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def _after_fork() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX, _ID_COUNTER = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_after_fork)


class Spool:
    """This process's append-only spool file, plus adoption of files left by dead processes.

    Each process writes its own ``tracking-<host>-<pid>-<n>.jsonl`` and holds an exclusive
    ``flock`` on it; a file nobody holds a lock on belongs to a process that is gone. The events
    carry recipients' IPs and user agents: the directory is 0700 and the files 0600.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.dir = Path(directory)
        make_private_dirs(self.dir)
        tighten(self.dir, PRIVATE_DIR)
        self.max_bytes = max_bytes
        self.path = self.dir / f"tracking-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}.jsonl"
        self._fh = os.fdopen(open_private(self.path, os.O_WRONLY | os.O_APPEND), "ab")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._dirty = False
        self.size = self.path.stat().st_size

    def append(self, events: list[dict[str, Any]]) -> int:
        """Append events; returns how many did not fit (dropped)."""
        written = 0
        for event in events:
            line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
            if self.size + len(line) > self.max_bytes:
                break
            self._fh.write(line)
            self.size += len(line)
            written += 1
        self._dirty = self._dirty or written > 0
        return len(events) - written

    def sync(self) -> None:
        """Flush and fsync what was appended since the last sync (group commit)."""
        if self._dirty:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._dirty = False

    def pending(self) -> bool:
        return self.size > 0

    def read_own(self) -> list[dict[str, Any]]:
        self._fh.flush()
        return _read_lines(self.path)

    def iter_own_at(self, start: int) -> Iterator[tuple[dict[str, Any], int]]:
        """This process's spooled events from byte ``start`` on, each with the offset just past its
        line, read as they are consumed (a replay that stops early has parsed only what it sent)."""
        self._fh.flush()
        return _iter_lines_at(self.path, start)

    def truncate_own(self) -> None:
        self._fh.flush()
        self._fh.truncate(0)
        self._fh.seek(0)
        os.fsync(self._fh.fileno())
        self.size = 0
        self._dirty = False

    def orphans(self) -> list[Path]:
        """Spool files whose writer is gone (their lock can be taken)."""
        found = []
        for path in sorted(self.dir.glob("tracking-*.jsonl")):
            if path == self.path:
                continue
            try:
                fh = open(path, "ab")
            except OSError:
                continue
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
            found.append(path)
        return found

    def close(self) -> None:
        """Sync and close; an empty spool file is removed."""
        try:
            self.sync()
        finally:
            self._fh.close()
            if self.size == 0:
                self.path.unlink(missing_ok=True)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [event for event, _ in _iter_lines_at(path, 0)]


def _iter_lines_at(path: Path, start: int) -> Iterator[tuple[dict[str, Any], int]]:
    offset = start
    with open(path, "rb") as fh:
        fh.seek(start)
        for raw in fh:
            offset += len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                yield json.loads(line), offset
            except ValueError:  # a torn last line from a crash mid-write: that event was never acknowledged
                log.warning("spool_line_unreadable", path=str(path))


class Intake:
    """Buffer + publisher thread + spool (see the module docstring)."""

    def __init__(self, publish: Publish, spool: Spool, *, max_buffer: int = 200_000, batch: int = 200,
                 linger: float = 0.02, retry_every: float = 1.0, fsync_every: float = 0.05, admit: Admit | None = None) -> None:
        self.publish = publish
        self.admit = admit
        self.spool = spool
        self.batch = batch
        self.linger = linger
        self.retry_every = retry_every
        self.fsync_every = fsync_every
        # A deque, not a queue.Queue: append/popleft are atomic under the GIL and wake nobody, so the
        # request path pays no lock or thread switch per event; the publisher polls every ``linger``.
        self._buffer: deque[dict[str, Any]] = deque()
        self.max_buffer = max_buffer
        self._overflow: list[dict[str, Any]] = []
        self._overflow_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_ok = True
        self._next_retry = 0.0
        self._last_sync = time.monotonic()
        self._replayed_to = 0  # bytes of this process's spool already published by a replay that stopped part-way

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- request path ------------------------------------------------------------------------------

    def submit(self, event: dict[str, Any]) -> None:
        """Hand over one event (dropped when ``admit`` refuses it); never blocks on I/O."""
        if self.admit is not None and not self.admit(event):
            return
        _BUFFERED.inc()
        if len(self._buffer) < self.max_buffer:
            self._buffer.append(event)
        else:  # the publisher is far behind: park it for the spool
            with self._overflow_lock:
                self._overflow.append(event)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracking-intake", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain the buffer (to the broker, else the spool) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._drain_all()
        self.spool.close()

    # -- publisher thread --------------------------------------------------------------------------

    def _run(self) -> None:
        self._adopt_orphans()
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # the loop must survive anything; events stay in buffer/spool
                log.error("intake_step_failed", error=type(exc).__name__, exc_info=exc)
                time.sleep(0.1)

    def _step(self) -> None:
        events = self._take(self.batch, self.linger)
        now = time.monotonic()
        if self.spool.pending() and now >= self._next_retry:
            self._replay_own()
        if events:
            if self._broker_ok and not self.spool.pending():
                self._send(events)
            else:
                self._to_spool(events)
        if now - self._last_sync >= self.fsync_every:
            self.spool.sync()
            self._last_sync = now

    def _take(self, n: int, wait: float) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with self._overflow_lock:
            if self._overflow:
                events, self._overflow = self._overflow[:n], self._overflow[n:]
        if len(self._buffer) < n and not events and wait > 0:
            # Linger for a full batch, not only for a first event: under load a publisher that took
            # whatever had gathered during the last confirm sent ~100 hits per message, and the
            # broker's CPU per message (on the pixel's cores) cost more than the rest of the intake.
            self._stop.wait(wait)
        buffer = self._buffer
        while buffer and len(events) < n:
            events.append(buffer.popleft())
        return events

    @property
    def idle(self) -> bool:
        """Nothing buffered (what was handed over is published or spooled)."""
        return not self._buffer and not self._overflow

    def _send(self, events: list[dict[str, Any]]) -> bool:
        try:
            self.publish(events)
        except Exception as exc:
            self._broker_ok = False
            self._next_retry = time.monotonic() + self.retry_every
            log.warning("intake_publish_failed", error=type(exc).__name__, events=len(events))
            self._to_spool(events)
            return False
        self._broker_ok = True
        metrics.TRACK_INTAKE.labels("published").inc(len(events))
        return True

    def _to_spool(self, events: list[dict[str, Any]]) -> None:
        dropped = self.spool.append(events)
        metrics.SPOOL_BYTES.set(self.spool.size)
        metrics.TRACK_INTAKE.labels("spooled").inc(len(events) - dropped)
        if dropped:
            metrics.TRACK_INTAKE.labels("dropped").inc(dropped)
            log.error("intake_spool_full", dropped=dropped, max_bytes=self.spool.max_bytes)

    def _replay_own(self) -> None:
        """Publish the spool in order; truncate it only when all of it went out.

        A replay the broker stops part-way (down again, or a full in-memory backlog) remembers how
        far it got, and the next one goes on from there instead of publishing the head again. A
        crash forgets that: the next process replays the whole file, and event ids make the
        repeats harmless.
        """
        self.spool.sync()
        pending = self.spool.iter_own_at(self._replayed_to)
        sent = 0
        while chunk := list(itertools.islice(pending, self.batch)):
            try:
                self.publish([event for event, _ in chunk])
            except Exception as exc:
                self._broker_ok = False
                self._next_retry = time.monotonic() + self.retry_every
                metrics.TRACK_INTAKE.labels("replayed").inc(sent)
                log.info("intake_replay_waiting", error=type(exc).__name__, replayed=sent,
                         spooled_bytes=self.spool.size - self._replayed_to)
                return
            self._replayed_to = chunk[-1][1]
            sent += len(chunk)
        self.spool.truncate_own()
        self._replayed_to = 0
        metrics.SPOOL_BYTES.set(0)
        self._broker_ok = True
        metrics.TRACK_INTAKE.labels("replayed").inc(sent)
        log.info("intake_replayed", events=sent)

    def _adopt_orphans(self) -> None:
        """Move spooled events of dead processes into this process's spool (replayed with it)."""
        for path in self.spool.orphans():
            lines, adopted = _iter_lines_at(path, 0), 0
            while chunk := [event for event, _ in itertools.islice(lines, 10_000)]:  # a large file in pieces
                self._to_spool(chunk)
                adopted += len(chunk)
            self.spool.sync()
            path.unlink(missing_ok=True)
            log.info("intake_adopted_spool", path=str(path), events=adopted)
            self._next_retry = 0.0

    def _drain_all(self) -> None:
        """Everything still buffered goes out now (or into the spool)."""
        while True:
            events = self._take(self.batch, 0)
            if not events:
                break
            if self._broker_ok and not self.spool.pending():
                self._send(events)  # spools them itself when the broker refuses
            else:
                self._to_spool(events)
        self.spool.sync()


_intake: Intake | None = None
_lock = threading.Lock()


def publish_batch(events: list[dict[str, Any]]) -> None:
    """The intake's publish function: one ``tracking.record`` message per batch, the hits encoded as one
    JSON text (:func:`~pipeline.stages.hit_batch.encode_hits`; raises when the broker refuses)."""
    jobs.TRACKING_RECORD.send(encode_hits(events))


def get_intake() -> Intake:
    """The process's intake, publishing ``tracking.record`` messages (started on first use), with the
    hit throttle configured by ``MAILPIPE_TRACKING_TOKEN_PER_MINUTE`` / ``_IP_PER_MINUTE`` / ``_THROTTLE_KEYS``."""
    global _intake
    with _lock:
        if _intake is None:
            settings = get_settings()
            throttle = HitThrottle(token_per_minute=settings.tracking_token_per_minute,
                                   ip_per_minute=settings.tracking_ip_per_minute, max_keys=settings.tracking_throttle_keys)
            # Batches of up to 2,000 hits, gathered for up to 100 ms: under a flood each broker message (its
            # publish, confirm and storage, on the pixel's cores) serves 2,000 hits instead of ~100.
            _intake = Intake(publish_batch, Spool(settings.spool_dir, settings.tracking_spool_max_mb * 1024 * 1024),
                             admit=throttle.admit, batch=2000, linger=0.1)
            _intake.start()
        return _intake


def reset_intake() -> None:
    """Stop and forget the process's intake (app shutdown, tests)."""
    global _intake
    with _lock:
        if _intake is not None:
            _intake.stop()
            _intake = None


def spool_for_later(events: list[dict[str, Any]]) -> int:
    """Write events to a spool file of their own, closed at once, so the next process's intake adopts
    and replays them (embedded ``serve`` stopping with tracking batches still in its in-memory broker).
    Returns how many did not fit (counted as dropped)."""
    settings = get_settings()
    spool = Spool(settings.spool_dir, settings.tracking_spool_max_mb * 1024 * 1024)
    try:
        dropped = spool.append(events)
    finally:
        spool.close()
    metrics.TRACK_INTAKE.labels("spooled").inc(len(events) - dropped)
    if dropped:
        metrics.TRACK_INTAKE.labels("dropped").inc(dropped)
        log.error("intake_spool_full", dropped=dropped, max_bytes=spool.max_bytes)
    return dropped


def spooled_files() -> list[Path]:
    """Non-empty spool files in ``MAILPIPE_SPOOL_DIR`` (this or another process's)."""
    directory = Path(get_settings().spool_dir)
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.glob("tracking-*.jsonl")) if p.stat().st_size > 0]
