"""Real-time events to salespeople's browsers: publish from any process, deliver to open websockets.

Workers call :func:`publish_event` after they commit a notification. With RabbitMQ the event goes
to the fanout exchange :data:`EXCHANGE`; every web process binds its own exclusive queue to it
(:class:`Listener`) and hands what arrives to its :data:`HUB`, which pushes it to that user's open
websockets. Without a broker URL (embedded ``serve``, tests) publishing is a direct call into the
in-process hub. Delivery is best effort: the notification row is already in the database, and a
browser that reconnects reads it with ``GET /api/v1/notifications``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from typing import Any

import structlog

__all__ = ["EXCHANGE", "HUB", "Hub", "Listener", "publish_event", "reset_publisher"]

log = structlog.get_logger("mailpipe.events")

EXCHANGE = "mailpipe.events"


class Hub:
    """Open websockets by (org, user), fed from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[tuple[str, str], set[tuple[Any, asyncio.AbstractEventLoop]]] = defaultdict(set)

    def add(self, org_id: str, user_id: str, websocket: Any, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._sockets[(org_id, user_id)].add((websocket, loop))

    def remove(self, org_id: str, user_id: str, websocket: Any) -> None:
        with self._lock:
            entries = self._sockets.get((org_id, user_id), set())
            for entry in [e for e in entries if e[0] is websocket]:
                entries.discard(entry)
            if not entries:
                self._sockets.pop((org_id, user_id), None)

    def listeners(self, org_id: str, user_id: str) -> int:
        with self._lock:
            return len(self._sockets.get((org_id, user_id), ()))

    def dispatch(self, event: dict[str, Any]) -> int:
        """Push an event to its user's sockets; returns how many it was handed to."""
        key = (str(event.get("org_id", "")), str(event.get("user_id", "")))
        with self._lock:
            targets = list(self._sockets.get(key, ()))
        payload = {k: v for k, v in event.items() if k != "org_id"}
        for websocket, loop in targets:
            try:
                asyncio.run_coroutine_threadsafe(_send(websocket, payload), loop)
            except RuntimeError:  # that loop is gone; the socket will be removed by its handler
                pass
        return len(targets)


async def _send(websocket: Any, payload: dict[str, Any]) -> None:
    try:
        await websocket.send_json(payload)
    except Exception:  # a socket closing under us is normal
        pass


HUB = Hub()

_local = threading.local()


def _broker_url() -> str | None:
    from ops.settings import get_settings

    url = get_settings().broker_url
    return url.split(";")[0].strip() if url else None


def publish_event(event: dict[str, Any]) -> None:
    """Send an event to every web process (or the in-process hub); never raises."""
    url = _broker_url()
    if url is None:
        HUB.dispatch(event)
        return
    body = json.dumps(event, default=str).encode()
    for attempt in (1, 2):
        try:
            channel = _channel(url)
            channel.basic_publish(exchange=EXCHANGE, routing_key="", body=body)
            return
        except Exception as exc:
            reset_publisher()
            if attempt == 2:
                log.warning("event_publish_failed", error=type(exc).__name__, type=event.get("type"))


def _channel(url: str) -> Any:
    import pika

    conn = getattr(_local, "conn", None)
    if conn is None or conn.is_closed or getattr(_local, "url", None) != url:
        params = pika.URLParameters(url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 5
        params.socket_timeout = 5
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.exchange_declare(exchange=EXCHANGE, exchange_type="fanout", durable=False)
        _local.conn, _local.channel, _local.url = conn, channel, url
    return _local.channel


def reset_publisher() -> None:
    """Drop this thread's publishing connection (it reconnects on the next event)."""
    conn = getattr(_local, "conn", None)
    _local.conn = _local.channel = None
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


class Listener:
    """A web process's subscription to the fanout exchange, feeding :data:`HUB` (reconnects forever)."""

    def __init__(self, url: str, hub: Hub = HUB) -> None:
        self.url = url
        self.hub = hub
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import pika

        delay = 0.5
        while not self._stop.is_set():
            try:
                params = pika.URLParameters(self.url)
                params.heartbeat = 30
                conn = pika.BlockingConnection(params)
                channel = conn.channel()
                channel.exchange_declare(exchange=EXCHANGE, exchange_type="fanout", durable=False)
                queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
                channel.queue_bind(queue=queue, exchange=EXCHANGE)
                self.ready.set()
                delay = 0.5
                while not self._stop.is_set():
                    for method, _props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
                        if method is None:
                            break
                        try:
                            self.hub.dispatch(json.loads(body))
                        except ValueError:
                            log.warning("event_unreadable")
                try:
                    conn.close()
                except Exception:
                    pass
            except Exception as exc:
                self.ready.clear()
                log.info("events_listener_reconnecting", error=type(exc).__name__, delay=delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
