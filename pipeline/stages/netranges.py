"""Network ranges for the tracking signal: the shipped/refreshed range files, and a lookup table.

Pure: text in, tables and decisions out. A range file is our own small format, so that every file
says where and when it came from (JSON cannot hold comments)::

    # mailpipe tracking data: aws
    # origin: https://ip-ranges.amazonaws.com/ip-ranges.json ...
    # retrieved: 2026-12-04
    3.0.0.0/15
    64.235.144.0/20 gateway:barracuda

A line is a CIDR prefix, optionally followed by a label; without one, the file's ``# label:``
applies. :func:`parse_provider` reads the providers' own formats (AWS ``ip-ranges.json``, Google's
``goog.json``/``cloud.json``, Azure service tags, the Microsoft 365 endpoints web service) and plain
lists, for ``mailpipe tracking update-ranges``.

:class:`RangeTable` answers "which labels cover this address" with one dict probe per prefix
length present in the table (longest-prefix-match buckets: at most 33 probes for IPv4, typically
about 20), never a scan over the prefixes.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RangeFile", "RangeTable", "normalize_ip", "parse_provider", "parse_range_file", "render_range_file", "same_network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Header fields of our format; any other comment line is a note (kept, shown, not interpreted).
_HEADER_KEYS = frozenset({"about", "read-from", "origin", "retrieved", "sha256", "format", "label", "entries", "services"})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RangeFile:
    """One range file: its header fields (``origin``, ``retrieved``, ``label``...) and its prefixes."""

    meta: Mapping[str, str]
    entries: tuple[tuple[Network, str], ...]
    notes: tuple[str, ...] = ()


def parse_range_file(text: str, *, default_label: str = "") -> RangeFile:
    """Parse our range format; a malformed line raises ValueError naming its line number."""
    meta: dict[str, str] = {}
    notes: list[str] = []
    entries: list[tuple[Network, str]] = []
    pending: list[tuple[Network, str | None]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(":")
            if sep and key.strip() in _HEADER_KEYS:
                meta.setdefault(key.strip().lower(), value.strip())
            else:
                notes.append(line[1:].strip())
            continue
        cidr, _, own = line.partition(" ")
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"line {number}: not a network prefix: {cidr[:60]!r}") from exc
        pending.append((network, own.strip() or None))
    fallback = meta.get("label") or default_label
    for network, label in pending:
        chosen = label or fallback
        if not chosen:
            raise ValueError(f"{network}: no label (give one on the line or a '# label:' header)")
        entries.append((network, chosen))
    return RangeFile(meta, tuple(entries), tuple(notes))


def render_range_file(meta: Mapping[str, str], entries: Iterable[tuple[Network, str]], notes: Iterable[str] = ()) -> str:
    """Our range format: header lines and notes, then prefixes sorted by family and address, labels only
    where they differ from the header's ``label``."""
    default = meta.get("label", "")
    lines = [f"# {key}: {value}" for key, value in meta.items()] + [f"# | {note}" for note in notes]
    unique = sorted(set(entries), key=lambda e: (e[0].version, int(e[0].network_address), e[0].prefixlen, e[1]))
    lines += [str(net) if label == default else f"{net} {label}" for net, label in unique]
    return "\n".join(lines) + "\n"


def normalize_ip(value: str | None) -> Address | None:
    """An address (IPv4-mapped IPv6 unwrapped), None when absent or not an address."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def same_network(a: str | None, b: str | None) -> bool:
    """Whether two addresses share a /24 (IPv4) or a /48 (IPv6): the same site or provider block."""
    x, y = normalize_ip(a), normalize_ip(b)
    if x is None or y is None or x.version != y.version:
        return False
    bits = 24 if x.version == 4 else 48
    shift = x.max_prefixlen - bits
    return int(x) >> shift == int(y) >> shift


@dataclass(slots=True)
class RangeTable:
    """Longest-prefix buckets: for each (family, prefix length), network int → labels."""

    _buckets: dict[int, list[tuple[int, dict[int, frozenset[str]]]]] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def build(cls, files: Iterable[RangeFile]) -> RangeTable:
        by_len: dict[tuple[int, int], dict[int, set[str]]] = {}
        size = 0
        for rf in files:
            for net, label in rf.entries:
                by_len.setdefault((net.version, net.prefixlen), {}).setdefault(int(net.network_address), set()).add(label)
                size += 1
        buckets: dict[int, list[tuple[int, dict[int, frozenset[str]]]]] = {4: [], 6: []}
        for (version, length), nets in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            width = 32 if version == 4 else 128
            buckets[version].append((width - length, {k: frozenset(v) for k, v in nets.items()}))
        return cls(buckets, size)

    def labels(self, ip: str | None) -> frozenset[str]:
        """Every label of every prefix that covers ``ip`` (empty for none, or for a non-address)."""
        address = normalize_ip(ip)
        if address is None:
            return frozenset()
        value = int(address)
        found: frozenset[str] = frozenset()
        for shift, nets in self._buckets.get(address.version, ()):
            hit = nets.get(value >> shift << shift)
            if hit is not None:
                found = found | hit
        return found


# --------------------------------------------------------------------------------------------------
# Providers' own formats (for `mailpipe tracking update-ranges`)

def _nets(values: Iterable[Any]) -> list[Network]:
    out = []
    for v in values:
        if isinstance(v, str) and v.strip():
            out.append(ipaddress.ip_network(v.strip(), strict=False))
    return out


def parse_provider(raw: bytes, label: str, *, services: frozenset[str] = frozenset()
                   ) -> tuple[str, list[tuple[Network, str]], tuple[str, ...]]:
    """(format name, [(prefix, label)], notes) from a provider's published file or a plain list.

    Formats, detected from the content: AWS ``ip-ranges.json`` (``prefixes[].ip_prefix`` and
    ``ipv6_prefixes[].ipv6_prefix``), Google ``goog.json``/``cloud.json`` (``prefixes[].ipv4Prefix``/
    ``ipv6Prefix``), Azure service tags (``values[].properties.addressPrefixes``; with ``services``,
    only those tags' names, e.g. ``AzureCloud``), the Microsoft 365 endpoints web service (a list of
    endpoint sets with ``ips``; with ``services``, only those ``serviceArea`` values or set ids),
    else our range format or a plain list of prefixes (one per line; ``#`` comments become notes).
    """
    text = raw.decode("utf-8-sig", errors="strict")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        data = json.loads(text)
        if isinstance(data, dict) and "prefixes" in data and any("ip_prefix" in p for p in data["prefixes"][:5]):
            nets = _nets(p.get("ip_prefix") for p in data["prefixes"]) + _nets(
                p.get("ipv6_prefix") for p in data.get("ipv6_prefixes", []))
            return "aws-ip-ranges", [(n, label) for n in nets], ()
        if isinstance(data, dict) and "prefixes" in data:
            nets = _nets(p.get("ipv4Prefix") or p.get("ipv6Prefix") for p in data["prefixes"])
            return "google-ipranges", [(n, label) for n in nets], ()
        if isinstance(data, dict) and "values" in data:
            nets = []
            for tag in data["values"]:
                if services and tag.get("name") not in services:
                    continue
                nets += _nets((tag.get("properties") or {}).get("addressPrefixes") or [])
            return "azure-service-tags", [(n, label) for n in nets], ()
        if isinstance(data, list):
            nets = []
            for endpoint_set in data:
                wanted = {str(endpoint_set.get("serviceArea", "")), str(endpoint_set.get("id", ""))}
                if services and not (wanted & services):
                    continue
                nets += _nets(endpoint_set.get("ips") or [])
            return "m365-endpoints", [(n, label) for n in nets], ()
        raise ValueError("unrecognised JSON: not AWS, Google, Azure service tags or Microsoft 365 endpoints")
    parsed = parse_range_file(text, default_label=label)
    return "range-list", list(parsed.entries), parsed.notes
