"""Which addresses a connection aimed by a tenant may reach: the SSRF policy, as pure decisions.

A tenant names mail hosts (IMAP, SMTP, OAuth host overrides) and, later, webhook targets. Left
alone, such a host can point at the operator's own network: loopback, private ranges, cloud
metadata (169.254.169.254), CGNAT, multicast, or the same addresses in disguise (IPv4-mapped
``::ffff:127.0.0.1``, NAT64 ``64:ff9b::7f00:1``, 6to4 ``2002:7f00:1::``, and the IPv4 spellings
``getaddrinfo`` accepts: ``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``). This module
says, for addresses already resolved, whether they are allowed, and why not; ``netguard`` in
``pipeline.clients`` does the resolving (once) and connects to exactly the address checked.

An operator opts networks in with ``MAILPIPE_MAIL_ALLOWED_NETS`` / ``MAILPIPE_WEBHOOK_ALLOWED_NETS``
(their own Exchange at 10.1.2.3, a test server on 127.0.0.0/8). ``listed_only`` is the stricter
rule for connections that carry a secret somewhere it must not go by default: a password in
plaintext, or a provider's OAuth token to a host other than the provider's: the address must be
inside an allowed network, public or not.

Sources: RFC 6890 and the IANA IPv4/IPv6 Special-Purpose Address Registries, RFC 6052 (NAT64),
RFC 3056 (6to4), RFC 4291 §2.5.5 (IPv4-compatible/mapped), glibc ``inet_aton`` for the spellings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ANY",
    "IpAddress",
    "IpNetwork",
    "Nets",
    "Refusal",
    "check_addresses",
    "destination",
    "embedded_ipv4",
    "host_literal",
    "in_nets",
    "parse_nets",
    "special_range",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Nets = tuple[IpNetwork, ...]

#: Every address: for endpoints the operator configured (not a tenant), e.g. the notification relay.
ANY: Nets = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


def _v4(table: Iterable[tuple[str, str]]) -> tuple[tuple[ipaddress.IPv4Network, str], ...]:
    return tuple((ipaddress.IPv4Network(net), label) for net, label in table)


def _v6(table: Iterable[tuple[str, str]]) -> tuple[tuple[ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.IPv6Network(net), label) for net, label in table)


# Everything in the IANA IPv4 special-purpose registry that is not globally reachable, plus
# multicast and the old class E. Written out rather than taken from ipaddress.is_global, whose
# answers changed between Python versions (and which calls multicast "global").
_V4_SPECIAL = _v4([
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("10.0.0.0/8", "private (10.0.0.0/8)"),
    ("100.64.0.0/10", "carrier-grade NAT (100.64.0.0/10)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("172.16.0.0/12", "private (172.16.0.0/12)"),
    ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.2.0/24", "documentation (192.0.2.0/24)"),
    ("192.88.99.0/24", "6to4 relay anycast (192.88.99.0/24)"),
    ("192.168.0.0/16", "private (192.168.0.0/16)"),
    ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
    ("198.51.100.0/24", "documentation (198.51.100.0/24)"),
    ("203.0.113.0/24", "documentation (203.0.113.0/24)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
])

# IPv6 special ranges that are refused whatever they wrap. Ranges that embed an IPv4 address
# (mapped, compatible, NAT64, 6to4) are judged by that address instead, see embedded_ipv4.
_V6_SPECIAL = _v6([
    ("::/128", "unspecified (::)"),
    ("::1/128", "loopback (::1)"),
    ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
    ("100::/64", "discard-only (100::/64)"),
    ("2001::/23", "IETF protocol assignments incl. Teredo (2001::/23)"),
    ("2001:db8::/32", "documentation (2001:db8::/32)"),
    ("3fff::/20", "documentation (3fff::/20)"),
    ("5f00::/16", "SRv6 segment identifiers (5f00::/16)"),
    ("fc00::/7", "unique local (fc00::/7)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("fec0::/10", "site-local (fec0::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
])
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``address`` may not be connected to.

    ``listed_only``: the address itself is public, but this connection needs it inside an allowed
    network (plaintext credentials, or an OAuth token off the provider's hosts).
    """

    address: IpAddress
    reason: str
    listed_only: bool = False


def parse_nets(text: str | None) -> Nets:
    """``"10.1.2.3/32, 127.0.0.0/8"`` → networks; ValueError naming the entry that is not a CIDR."""
    nets: list[IpNetwork] = []
    for entry in (part.strip() for part in (text or "").split(",")):
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not a CIDR like 10.0.0.0/8") from None
    return tuple(nets)


def embedded_ipv4(address: IpAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for, and the form's name; None when it embeds none.

    IPv4-mapped (``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``, deprecated) reach the
    IPv4 host from this machine itself; NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) reach it
    through a gateway, which is no reason to let them through to a private address.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in _MAPPED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "6to4"
    if address in _COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves, not IPv4
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible"
    return None


_UNSPECIFIED: dict[IpAddress, IpAddress] = {
    ipaddress.IPv4Address("0.0.0.0"): ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::"): ipaddress.IPv6Address("::1"),
    ipaddress.IPv6Address("::ffff:0.0.0.0"): ipaddress.IPv6Address("::ffff:127.0.0.1"),
}


def destination(address: IpAddress) -> IpAddress:
    """Where a connection to address goes: the unspecified address (0.0.0.0, ::) reaches this machine
    itself (the kernel connects it to loopback), so it is judged, and connected to, as loopback."""
    return _UNSPECIFIED.get(address, address)


def special_range(address: IpAddress) -> str | None:
    """A readable name of the non-public range the address is in, or None for a public address."""
    inner = embedded_ipv4(address)
    if inner is not None:
        v4, form = inner
        label = special_range(v4)
        if form == "IPv4-compatible":  # deprecated since 2006: nothing legitimate uses it
            return f"IPv4-compatible IPv6 (::/96, wrapping {v4})"
        return None if label is None else f"{label}, wrapped in {form} IPv6"
    if isinstance(address, ipaddress.IPv4Address):
        return next((label for net, label in _V4_SPECIAL if address in net), None)
    label = next((label for net, label in _V6_SPECIAL if address in net), None)
    if label is None and address not in _V6_GLOBAL_UNICAST:
        return "reserved IPv6 (outside 2000::/3)"
    return label


def in_nets(address: IpAddress, nets: Sequence[IpNetwork]) -> bool:
    """Whether address is inside one of nets; an IPv4-mapped address counts as its IPv4 address.

    Only the mapped form is unwrapped: it is the one that reaches the same IPv4 socket from here.
    """
    inner = embedded_ipv4(address)
    candidates: list[IpAddress] = [address]
    if inner is not None and inner[1] == "IPv4-mapped":
        candidates.append(inner[0])
    return any(a.version == n.version and a in n for a in candidates for n in nets)


def check_addresses(addresses: Sequence[IpAddress], nets: Sequence[IpNetwork], *, listed_only: bool = False) -> Refusal | None:
    """The first refused address among what a host resolved to, or None when all may be reached.

    Every address must pass, not just one: a DNS answer mixing a public and a private address is
    refused (the connection could otherwise end on either). An empty answer is refused too.
    """
    if not addresses:
        raise ValueError("no addresses to check")
    for address in addresses:
        if in_nets(address, nets):
            continue
        label = special_range(address)
        if label is not None:
            return Refusal(address, label)
        if listed_only:
            return Refusal(address, "a public address outside the allowed networks", listed_only=True)
    return None


def host_literal(host: str) -> IpAddress | None:
    """The address ``host`` spells when it is a numeric address, read as ``getaddrinfo`` reads it.

    IPv6 text, and IPv4 in every ``inet_aton`` form: one to four parts, each decimal, octal
    (leading 0) or hex (0x); the last part fills the remaining bytes, so ``127.1`` is 127.0.0.1 and
    ``2130706433`` or ``0x7f000001`` are too. None when host is a name (or nothing numeric).
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_inet_aton_part(part) for part in parts]
    if any(v is None for v in values):
        return None
    numbers = [int(v) for v in values if v is not None]
    *head, last = numbers
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for v in head:
        value = (value << 8) | v
    return ipaddress.IPv4Address((value << (8 * (4 - len(head)))) | last)


def _inet_aton_part(part: str) -> int | None:
    """One dotted part as inet_aton reads it (0x.. hex, 0.. octal, else decimal); None if invalid."""
    if not part or not part.isascii():
        return None
    if part[:2].lower() == "0x":
        digits = part[2:]
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None  # a bare "0x" is 0 to inet_aton but not to getaddrinfo's inet_aton_exact
        return int(digits, 16)
    if not part.isdigit():
        return None
    if part.startswith("0") and len(part) > 1:
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)
