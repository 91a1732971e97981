"""The outbound connection guard: resolve a tenant's host once, check every address, connect to those.

``check_host`` resolves (a numeric host, in any spelling, without asking DNS at all), applies
:mod:`pipeline.stages.netpolicy` to where each address really leads (``0.0.0.0`` and ``::`` are
this machine), and returns the addresses it checked; ``open_socket`` connects to exactly those, so
a DNS answer that changes between the check and the connection (rebinding) changes nothing. TLS
still verifies the certificate against the host name as given (or the canonical address for a
numeric host): callers pass ``CheckedHost.tls_name`` as the server name.

The IMAP and SMTP clients call this on every connection, not only the API: a host stored before
the guard existed, or whose DNS answer changed since, is refused when a fetch or send connects.
Webhooks will use the same functions with :func:`webhook_nets`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.stages.netpolicy import (
    IpAddress,
    IpNetwork,
    Nets,
    Refusal,
    check_addresses,
    destination,
    embedded_ipv4,
    host_literal,
    parse_nets,
)

__all__ = ["MAIL_SETTING", "WEBHOOK_SETTING", "CheckedHost", "HostNotAllowed", "check_host", "mail_nets", "open_socket",
           "webhook_nets"]

MAIL_SETTING = "MAILPIPE_MAIL_ALLOWED_NETS"
WEBHOOK_SETTING = "MAILPIPE_WEBHOOK_ALLOWED_NETS"

Resolver = Callable[..., list[tuple[Any, ...]]]


class HostNotAllowed(Exception):
    """The host resolves to an address this connection may not reach; nothing was connected.

    ``str()`` names the host, the address and the range, and says which setting would allow it.
    """

    def __init__(self, host: str, refusal: Refusal, setting: str, listed_because: str | None = None) -> None:
        self.host, self.refusal, self.setting = host, refusal, setting
        address = refusal.address
        inner = embedded_ipv4(address)
        mapped = inner is not None and inner[1] == "IPv4-mapped"
        shown_address = f"::ffff:{inner[0]}" if mapped and inner is not None else str(address)
        entry = f"{inner[0]}/32" if mapped and inner is not None else f"{address}/{32 if address.version == 4 else 128}"
        shown = host if host in (str(address), shown_address) else f"{host} ({shown_address})"
        if refusal.listed_only:
            why = f"{shown} is not inside {setting}, and it must be: {listed_because or 'the connection carries a secret'}"
        else:
            why = f"{shown} is not a public address: {refusal.reason}; mailpipe does not connect there"
        super().__init__(f"{why}. If it is your own server, add it to {setting} (e.g. {entry})")


@dataclass(frozen=True, slots=True)
class CheckedHost:
    """A host and the addresses it was checked at; connect to ``addresses``, verify TLS for ``tls_name``."""

    host: str
    tls_name: str
    addresses: tuple[IpAddress, ...]


def mail_nets() -> Nets:
    """``MAILPIPE_MAIL_ALLOWED_NETS`` as networks (empty: nothing beyond public addresses)."""
    from ops.settings import get_settings

    return parse_nets(get_settings().mail_allowed_nets)


def webhook_nets() -> Nets:
    """``MAILPIPE_WEBHOOK_ALLOWED_NETS`` as networks, for webhook targets."""
    from ops.settings import get_settings

    return parse_nets(get_settings().webhook_allowed_nets)


def check_host(host: str, nets: Sequence[IpNetwork], *, listed_only: str | None = None, setting: str = MAIL_SETTING,
               resolver: Resolver | None = None) -> CheckedHost:
    """Resolve host once and check every address; raise HostNotAllowed or socket.gaierror.

    A numeric host (``10.1.2.3``, ``127.1``, ``0x7f000001``, ``::1``) is read without a lookup.
    ``listed_only``: why the addresses must be inside ``nets`` even when public (None: they need not).
    ``resolver``: a getaddrinfo stand-in (default: ``socket.getaddrinfo``).
    """
    literal = host_literal(host)
    if literal is not None:
        addresses: tuple[IpAddress, ...] = (destination(literal),)
        tls_name = str(literal)
    else:
        try:
            answer = (resolver or socket.getaddrinfo)(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:  # say which name failed: the resolver's text does not
            raise socket.gaierror(exc.errno, f"{host}: {exc.strerror or exc}") from None
        found: dict[IpAddress, None] = {}
        for family, _type, _proto, _name, sockaddr in answer:
            if family in (socket.AF_INET, socket.AF_INET6):
                found.setdefault(destination(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])), None)
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no IPv4 or IPv6 address")
        addresses, tls_name = tuple(found), host
    refusal = check_addresses(addresses, nets, listed_only=listed_only is not None)
    if refusal is not None:
        raise HostNotAllowed(host, refusal, setting, listed_only)
    return CheckedHost(host, tls_name, addresses)


def open_socket(target: CheckedHost, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers (in resolver order).

    Raises the last OSError (refused, unreachable, TimeoutError) when none does.
    """
    last: OSError | None = None
    for address in target.addresses:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((str(address), port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    assert last is not None  # CheckedHost always holds at least one address
    raise last
