"""POSTing one webhook: resolve once, refuse non-public addresses, connect to the checked address.

Every attempt goes through :func:`pipeline.clients.netguard.check_host` with
``MAILPIPE_WEBHOOK_ALLOWED_NETS`` (a DNS answer may have changed since registration), then httpx
connects to the *checked address* itself (the URL's host is replaced by it; ``Host`` and TLS SNI
and certificate checks keep the name), so there is no second resolution to rebind. Redirects are
not followed, at most 64 KiB of the answer is read, the connection must open within 5 s and the
whole attempt finish within 15 s (``asyncio.timeout``, so a receiver trickling bytes cannot hold
it longer).

A :class:`Poster` serves one delivery run (one endpoint): it owns an event loop and an
``httpx.AsyncClient`` for the run, so the deliveries of a run reuse one connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import httpx

from pipeline.clients import netguard
from pipeline.stages.netpolicy import IpNetwork, host_literal

__all__ = ["CONNECT_TIMEOUT", "MAX_READ", "TOTAL_TIMEOUT", "Outcome", "Poster", "refusal_text"]

CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 15.0
MAX_READ = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: ``ok`` for a 2xx; otherwise a status code or an error class."""

    ok: bool
    status_code: int | None
    error: str | None
    seconds: float
    refused: bool = False
    detail: str | None = None  # for the operator's log only (e.g. the address a refused name resolved to)


def refusal_text(host: str, exc: netguard.HostNotAllowed) -> str:
    """What a tenant is told of a refused target. A numeric host gets the guard's full reason; a name
    only that it resolves to a non-public address: the address itself would turn the API into an
    oracle for the operator's internal DNS (a tenant's name can CNAME to an internal one)."""
    if host_literal(host) is not None:
        return str(exc)
    return (f"{host} resolves to a non-public address; mailpipe does not send webhooks there "
            f"(an operator can allow a network in {netguard.WEBHOOK_SETTING})")


class Poster:
    """POSTs for one delivery run; use as a context manager (closes the client and the loop)."""

    def __init__(self, nets: Sequence[IpNetwork], *, resolver: netguard.Resolver | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT) -> None:
        self.nets = tuple(nets)
        self.resolver = resolver
        self.total_timeout = total_timeout
        self._loop = asyncio.new_event_loop()
        timeout = httpx.Timeout(total_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                         limits=httpx.Limits(max_connections=4, max_keepalive_connections=2))

    def __enter__(self) -> Poster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._client.aclose())
        finally:
            self._loop.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """One attempt; never raises for anything the network or the receiver does."""
        started = time.perf_counter()
        target = httpx.URL(url)
        try:
            checked = netguard.check_host(target.host, self.nets, setting=netguard.WEBHOOK_SETTING, resolver=self.resolver)
        except netguard.HostNotAllowed as exc:
            return Outcome(False, None, f"host_not_allowed: {refusal_text(target.host, exc)}"[:500], time.perf_counter() - started,
                           refused=True, detail=str(exc))
        except socket.gaierror as exc:
            return Outcome(False, None, f"dns: {exc}"[:500], time.perf_counter() - started)
        except (UnicodeError, ValueError) as exc:
            return Outcome(False, None, f"invalid_url: {exc}"[:500], time.perf_counter() - started, refused=True)
        return self._loop.run_until_complete(self._attempt(target, checked, body, headers, started))

    async def _attempt(self, target: httpx.URL, checked: netguard.CheckedHost, body: bytes, headers: dict[str, str],
                       started: float) -> Outcome:
        host_header = target.netloc.decode("ascii")
        sent_headers = {**headers, "host": host_header}
        extensions = {"sni_hostname": checked.tls_name} if target.scheme == "https" else {}
        error = "connect: no address answered"
        try:
            async with asyncio.timeout(self.total_timeout):
                for address in checked.addresses:
                    request = self._client.build_request("POST", target.copy_with(host=str(address)), content=body,
                                                         headers=sent_headers, extensions=extensions)
                    try:
                        response = await self._client.send(request, stream=True)
                    except httpx.ConnectError as exc:
                        error = f"connect: {type(exc).__name__}"
                        continue  # the next checked address, if any
                    try:
                        read = 0
                        async for chunk in response.aiter_raw():
                            read += len(chunk)
                            if read >= MAX_READ:
                                break
                    finally:
                        await response.aclose()
                    code = response.status_code
                    ok = 200 <= code < 300
                    return Outcome(ok, code, None if ok else f"http_{code}", time.perf_counter() - started)
        except TimeoutError:
            return Outcome(False, None, f"timeout: no complete answer within {self.total_timeout:g} s", time.perf_counter() - started)
        except httpx.TimeoutException as exc:
            return Outcome(False, None, f"timeout: {type(exc).__name__}", time.perf_counter() - started)
        except httpx.HTTPError as exc:
            return Outcome(False, None, f"network: {type(exc).__name__}", time.perf_counter() - started)
        except OSError as exc:
            return Outcome(False, None, f"network: {type(exc).__name__}", time.perf_counter() - started)
        return Outcome(False, None, error, time.perf_counter() - started)
