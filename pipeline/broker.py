"""The one place the Dramatiq broker is built. Import it before any actor module.

``MAILPIPE_BROKER_URL`` unset → an in-memory ``StubBroker`` drained by an in-process worker (the
embedded ``serve`` mode); ``amqp://`` → ``RabbitmqBroker`` with publisher confirms.
Actors are declared with :func:`actor` from a :class:`pipeline.jobs.Job` (explicit actor and queue
names) and recorded, so tests can rebind every actor to a fresh broker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import dramatiq
from dramatiq import Actor, Broker
from dramatiq.brokers.stub import StubBroker, _StubConsumer
from dramatiq.errors import BrokerError
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications, TimeLimit

from models.base import new_id
from models.lease import run_owner
from ops.pacing import Pacer

__all__ = ["ACTORS", "QUEUES", "BacklogFull", "JobSpec", "current_run_owner", "MemoryBroker", "actor", "build_broker", "get_broker",
           "setup_broker", "use_broker"]

F = TypeVar("F", bound=Callable[..., Any])

# Queues by stage, so worker groups can be bound with `mailpipe worker -Q ...`.
QUEUES = ("fetch", "pipeline", "send", "tracking", "notify", "notion", "ops", "webhooks", "privacy")

# Retries stay far below RabbitMQ's 30-minute consumer_timeout: delayed retries are held unacked.
DEFAULT_MAX_RETRIES = 5
DEFAULT_MIN_BACKOFF_MS = 1_000
DEFAULT_MAX_BACKOFF_MS = 5 * 60_000
DEFAULT_TIME_LIMIT_MS = 10 * 60_000

ACTORS: list[Actor[Any, Any]] = []
_configured: Broker | None = None


def _middleware() -> list[Any]:
    return [
        AgeLimit(),
        TimeLimit(time_limit=DEFAULT_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        CurrentMessage(),
        Pipelines(),
        Retries(max_retries=DEFAULT_MAX_RETRIES, min_backoff=DEFAULT_MIN_BACKOFF_MS, max_backoff=DEFAULT_MAX_BACKOFF_MS),
    ]


class _RequeueingConsumer(_StubConsumer):
    """A stub consumer whose ``requeue`` puts messages back (Dramatiq's stub drops them)."""

    def requeue(self, messages: Any) -> None:
        for message in messages:
            self.queue.put(message._message.encode())  # back on the queue it came from ...
            self.queue.task_done()  # ... and the taken copy no longer counts as unfinished
            self.prefetch_semaphore.release()


class _PacedConsumer(_RequeueingConsumer):
    """One message at a time, each handed out when its :class:`ops.pacing.Pacer` allows; the time
    from hand-out to acknowledgement is what the pacer counts."""

    def __init__(self, queue: Any, dead_letters: Any, timeout: int, pacer: Pacer) -> None:
        super().__init__(queue, dead_letters, 1, timeout)
        self.pacer = pacer
        self._handed = 0.0

    def __next__(self) -> Any:
        # The slot first, then the pacer: asked before the slot, it would let the next message through
        # the moment the previous one is acknowledged, before hearing how long that one took. The slot
        # goes back at once; only this thread takes slots, so the stub's own __next__ gets it again.
        if not self.prefetch_semaphore.acquire(timeout=self.timeout / 1000):
            return None
        hold = self.pacer.wait()
        self.prefetch_semaphore.release()
        if hold > 0:
            time.sleep(min(hold, self.timeout / 1000))
            return None
        message = super().__next__()
        if message is not None:
            self._handed = time.monotonic()
        return message

    def _finished(self) -> None:
        self.pacer.done(time.monotonic() - self._handed)

    def ack(self, message: Any) -> None:
        self._finished()
        super().ack(message)

    def nack(self, message: Any) -> None:
        self._finished()
        super().nack(message)


class BacklogFull(BrokerError):
    """The in-memory queue holds as many messages of this actor as it may (the caller keeps them)."""


class MemoryBroker(StubBroker):
    """The embedded in-memory broker. Unlike ``StubBroker``, a stopping worker hands the messages
    it had prefetched back to their queues, so :func:`unprocessed` can still see them. A queue can
    be paced (:meth:`pace`) and an actor's waiting messages capped (:meth:`cap`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pacers: dict[str, Pacer] = {}
        self._caps: dict[str, tuple[str, int]] = {}

    def pace(self, queue_name: str, pacer: Pacer) -> None:
        """Consumers of ``queue_name`` made from now on take one message at a time, when ``pacer`` allows."""
        self._pacers[queue_name] = pacer

    def cap(self, actor_name: str, queue_name: str, waiting: int) -> None:
        """Refuse (:class:`BacklogFull`) a new ``actor_name`` message while ``queue_name`` holds ``waiting`` messages."""
        self._caps[actor_name] = (queue_name, waiting)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        capped = self._caps.get(message.actor_name)
        if capped is not None and delay is None:
            queue = self.queues.get(capped[0])
            if queue is not None and queue.qsize() >= capped[1]:
                raise BacklogFull(f"{capped[0]} holds {queue.qsize()} messages")
        return super().enqueue(message, delay=delay)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> _StubConsumer:
        if queue_name not in self.queues:
            from dramatiq.errors import QueueNotFound

            raise QueueNotFound(queue_name)
        pacer = self._pacers.get(queue_name)
        if pacer is not None:
            return _PacedConsumer(self.queues[queue_name], self.dead_letters_by_queue[queue_name], timeout, pacer)
        return _RequeueingConsumer(self.queues[queue_name], self.dead_letters_by_queue[queue_name], prefetch, timeout)

    def unprocessed(self, queue_name: str) -> list[dramatiq.Message[Any]]:
        """Take every message still waiting on ``queue_name`` and its delay queue (after the worker stopped)."""
        from queue import Empty

        from dramatiq.common import dq_name

        out = []
        for name in (queue_name, dq_name(queue_name)):
            q = self.queues.get(name)
            while q is not None:
                try:
                    out.append(dramatiq.Message.decode(q.get_nowait()))
                except Empty:
                    break
                q.task_done()
        return out


def build_broker(url: str | None) -> Broker:
    """A new broker for ``url`` (None → in-memory) with mailpipe's middleware."""
    from ops.logging import LogContext
    from ops.metrics import DramatiqMetrics

    middleware = [*_middleware(), DramatiqMetrics(), LogContext()]
    if url is not None and os.environ.get("MAILPIPE_DRAMATIQ_PROMETHEUS") == "1":
        # Under `mailpipe worker` only: Dramatiq's own counters, and the one exposition server per
        # worker master (its `forks`) serving every process's samples, mailpipe's included.
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    if url is None:
        broker: Broker = MemoryBroker(middleware=middleware)
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=_with_defaults(url), confirm_delivery=True, middleware=middleware)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def _with_defaults(url: str) -> str:
    """Add heartbeat/blocked-connection timeouts to each amqp URL that does not set them."""
    parts = []
    for part in url.split(";"):
        part = part.strip()
        for key, value in (("heartbeat", "30"), ("blocked_connection_timeout", "30")):
            if f"{key}=" not in part:
                part += ("&" if "?" in part else "?") + f"{key}={value}"
        parts.append(part)
    return ";".join(parts)


def setup_broker(url: str | None = None, *, from_settings: bool = True) -> Broker:
    """Build the process broker once and make it Dramatiq's global broker."""
    global _configured
    if _configured is None:
        if from_settings and url is None:
            from ops.settings import get_settings

            url = get_settings().broker_url
        _configured = build_broker(url)
        dramatiq.set_broker(_configured)
    return _configured


def get_broker() -> Broker:
    """The configured broker (set up from settings on first use)."""
    return _configured if _configured is not None else setup_broker()


def use_broker(broker: Broker) -> Broker:
    """Make ``broker`` the process broker and rebind every declared actor to it (tests, serve)."""
    global _configured
    _configured = broker
    dramatiq.set_broker(broker)
    for queue in QUEUES:
        broker.declare_queue(queue)
    for a in ACTORS:
        a.broker = broker
        broker.declare_actor(a)
    return broker


class JobSpec(Protocol):
    """What :func:`actor` needs of a job (:class:`pipeline.jobs.Job`): its actor name and queue."""

    @property
    def name(self) -> str: ...

    @property
    def queue(self) -> str: ...


def actor(job: JobSpec, **options: Any) -> Callable[[F], Actor[Any, Any]]:
    """Declare the actor that runs ``job`` (its name and queue come from the job) with bounded retries."""
    if job.queue not in QUEUES:
        raise ValueError(f"queue {job.queue!r} is not one of {QUEUES}")
    options.setdefault("max_retries", DEFAULT_MAX_RETRIES)
    options.setdefault("max_backoff", DEFAULT_MAX_BACKOFF_MS)

    def decorate(fn: F) -> Actor[Any, Any]:
        a = dramatiq.actor(actor_name=job.name, queue_name=job.queue, broker=get_broker(), **options)(fn)
        ACTORS.append(a)
        return a

    return decorate


def current_run_owner() -> str:
    """The lease owner for this run of the message being processed (:func:`models.lease.run_owner`):
    redeliveries of one message share its id; outside a worker, a fresh one."""
    message = CurrentMessage.get_current_message()
    return run_owner(message.message_id if message is not None else new_id())
