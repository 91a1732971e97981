"""Dead letters: messages Dramatiq gave up on (retries exhausted) sit in RabbitMQ's ``<queue>.XQ``
for a week. Most work is also recorded in the database and re-swept, but tracking batches live only
in their messages, so replaying them matters. :func:`counts` reports; :func:`replay` moves messages
back to their queue with a fresh retry budget (after the cause is fixed).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog

from pipeline.broker import QUEUES

__all__ = ["counts", "replay"]

log = structlog.get_logger("mailpipe.deadletters")


def counts(broker: Any, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Dead messages per queue."""
    return {q: int(broker.get_queue_message_counts(q)[2]) for q in queues}


def replay(broker: Any, queue: str, limit: int | None = None) -> int:
    """Move up to ``limit`` dead messages of ``queue`` back onto it; returns how many moved.

    Each message is published again (with publisher confirms) before its dead copy is acked, so a
    crash in between can only duplicate a message, which every actor tolerates.
    """
    channel = broker.channel
    moved = 0
    waiting = int(broker.get_queue_message_counts(queue)[2])  # what is dead now; what fails again meanwhile stays
    limit = waiting if limit is None else min(limit, waiting)
    while moved < limit:
        method, _props, body = channel.basic_get(f"{queue}.XQ", auto_ack=False)
        if method is None:
            break
        try:
            message = dramatiq.Message.decode(body)
        except Exception:  # not a Dramatiq message: leave it for a human
            channel.basic_nack(method.delivery_tag, requeue=True)
            log.warning("deadletter_undecodable", queue=queue)
            break
        options = {k: v for k, v in message.options.items() if k not in ("retries", "traceback", "eta", "redelivered")}
        broker.enqueue(message.copy(queue_name=queue, options=options))
        channel.basic_ack(method.delivery_tag)
        moved += 1
    log.info("deadletters_replayed", queue=queue, messages=moved)
    return moved
