"""A real local HTTP receiver for webhook tests: records every POST (headers, body, arrival time)
and answers as told (a status per attempt, or a hang until released).

``answer`` is called with the request number (1-based) and the webhook-id, and returns a status
code; ``hang`` makes every request wait until :meth:`release` (or its timeout), so a test can hold
one endpoint while it times another.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Received", "WebhookReceiver"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int


class WebhookReceiver:
    def __init__(self, answer: Callable[[int, str], int] | None = None, *, hang: bool = False, host: str = "127.0.0.1") -> None:
        self.answer = answer or (lambda n, wid: 200)
        self.hang = hang
        self.requests: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

            def setup(self) -> None:
                with receiver._lock:
                    receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.hang:
                    receiver._released.wait(60)
                with receiver._lock:
                    n = len(receiver.requests) + 1
                    status = receiver.answer(n, headers.get("webhook-id", ""))
                    receiver.requests.append(Received(self.path, headers, body, time.monotonic(), status))
                payload = b'{"ok":true}'
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (its timeout): fine

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def of_type(self, event_type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if json.loads(r.body).get("type") == event_type]
