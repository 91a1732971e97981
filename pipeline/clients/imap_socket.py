"""imaplib clients pinned to the guard's checked addresses, reading through a buffer of our own.

imaplib reads through ``socket.makefile()``, whose buffer cannot be inspected and which breaks for
good after one read timeout. These clients read lines and literals from a ``bytearray`` they own
instead, so a caller can ask whether a response is already waiting (:meth:`has_pending`) and wait
for one with a timeout (:meth:`wait_readable`) without losing bytes: what an IDLE needs. Another
thread may end a blocked read with :meth:`interrupt` (the socket is shut down under it).
"""

from __future__ import annotations

import imaplib
import select
import socket
import ssl
import sys

from pipeline.clients import netguard

__all__ = ["PinnedIMAP4", "PinnedIMAP4_SSL"]

_CHUNK = 65_536


class _OwnBuffer:
    """readline/read over ``self.sock`` with a buffer that survives timeouts and can be looked at."""

    sock: socket.socket
    _rbuf: bytearray

    def readline(self) -> bytes:
        """One line with its CRLF (what is left at EOF, possibly b"")."""
        buf = self._rbuf
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                return line
            if len(buf) > imaplib._MAXLINE:  # type: ignore[attr-defined]
                raise imaplib.IMAP4.error(f"got more than {imaplib._MAXLINE} bytes")  # type: ignore[attr-defined]
            start = len(buf)
            chunk = self.sock.recv(_CHUNK)
            if not chunk:
                line = bytes(buf)
                buf.clear()
                return line
            buf += chunk

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at EOF), e.g. a literal."""
        buf = self._rbuf
        if len(buf) >= size:
            data = bytes(buf[:size])
            del buf[:size]
            return data
        out = bytearray(size)
        view = memoryview(out)
        have = len(buf)
        view[:have] = buf
        buf.clear()
        while have < size:
            got = self.sock.recv_into(view[have:], size - have)
            if not got:
                return bytes(out[:have])
            have += got
        return bytes(out)

    def has_pending(self) -> bool:
        """Whether a whole line is already buffered here or decrypted bytes wait in the TLS layer."""
        if b"\n" in self._rbuf:
            return True
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def wait_readable(self, timeout: float | None) -> bool:
        """Wait until something can be read (or the peer closed); False after ``timeout`` seconds."""
        if self.has_pending():
            return True
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def interrupt(self) -> None:
        """Shut the socket down from another thread: a blocked read returns EOF at once."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the plain socket's, never SSLSocket.shutdown
        except (OSError, AttributeError):
            pass


class PinnedIMAP4(_OwnBuffer, imaplib.IMAP4):
    """imaplib.IMAP4 whose socket goes to the checked addresses; ``host`` stays the TLS name (STARTTLS)."""

    def __init__(self, target: netguard.CheckedHost, port: int, timeout: float) -> None:
        self._target = target
        self._rbuf = bytearray()
        super().__init__(target.tls_name, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sys.audit("imaplib.open", self, self.host, self.port)
        return netguard.open_socket(self._target, self.port, timeout)


class PinnedIMAP4_SSL(_OwnBuffer, imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL to the checked addresses, verifying the certificate for ``host``."""

    def __init__(self, target: netguard.CheckedHost, port: int, timeout: float, ssl_context: ssl.SSLContext) -> None:
        self._target = target
        self._rbuf = bytearray()
        super().__init__(target.tls_name, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sys.audit("imaplib.open", self, self.host, self.port)
        sock = netguard.open_socket(self._target, self.port, timeout)
        try:
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
