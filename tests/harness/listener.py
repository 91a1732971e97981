"""A plain TCP listener that records every connection and every byte it receives.

For guard tests (mail hosts, webhook targets): it listens on 127.0.0.1 and, when it can, on ::1
with the same port, so every spelling of "this machine" reaches it. On each connection it sends
``banner`` (so a client that gets through would have a server's words to echo), then reads until
the client has sent ``lines`` lines, goes quiet or hangs up, and closes. ``connections`` and
``received`` tell whether anything (a connection, a LOGIN, a password) ever arrived.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Self

__all__ = ["Connection", "RecordingListener"]


@dataclass
class Connection:
    """One accepted connection: the peer address and what it sent."""

    peer: str
    family: int
    data: bytearray = field(default_factory=bytearray)


class RecordingListener:
    """Accepts on 127.0.0.1 (and ::1) at one port; records; answers only ``banner``."""

    def __init__(self, banner: bytes = b"", lines: int = 1, idle_timeout: float = 2.0) -> None:
        self.banner, self.lines, self.idle_timeout = banner, lines, idle_timeout
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    def start(self) -> Self:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        self.port = v4.getsockname()[1]
        self._sockets.append(v4)
        with contextlib.suppress(OSError):  # no IPv6 loopback here: listen on IPv4 only
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", self.port))
            self._sockets.append(v6)
        for sock in self._sockets:
            sock.listen(16)
            sock.settimeout(0.2)
            thread = threading.Thread(target=self._accept, args=(sock,), daemon=True, name=f"listener-{self.port}")
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def has_ipv6(self) -> bool:
        return len(self._sockets) > 1

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.connections)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = Connection(str(peer[0]), server.family)
            with self._lock:
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        with conn:
            conn.settimeout(self.idle_timeout)
            try:
                if self.banner:
                    conn.sendall(self.banner)
                while record.data.count(b"\n") < self.lines:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    with self._lock:
                        record.data.extend(chunk)
            except OSError:
                pass
