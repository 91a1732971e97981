"""An ASGI app served by uvicorn on a free loopback port in a background thread (the stand-in
servers and the tests that need the real HTTP stack)."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.harness.ports import free_port
from tests.harness.wait import wait_until

__all__ = ["AsgiServer"]


class AsgiServer:
    def __init__(self, app: Any, name: str, *, port: int | None = None, lifespan: str = "off") -> None:
        self.name = name
        self.port = port or free_port("127.0.0.1")
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     access_log=False, lifespan=lifespan, proxy_headers=False))
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AsgiServer:
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=self.name)
        self._thread.start()
        wait_until(lambda: self._server.started, 20, what=self.name)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
