"""Telling machine opens and clicks from human ones (notes §4 and checklist 7): flagged, never
dropped, by :func:`classify_open` / :func:`classify_click`, whose :class:`Verdict` carries a reason code.
Pure: the caller passes the user agent, address and seconds since sending."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["APPLE_NETWORKS", "DEFAULT_MIN_CLICK_DELAY_S", "DEFAULT_MIN_OPEN_DELAY_S", "Verdict", "classify_click", "classify_open",
           "is_machine_click", "is_machine_open"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a tracking hit looks automated, and a short reason code.

    ``proxied`` marks a machine fetch made on a person's behalf (Gmail's image proxy): it is
    flagged machine and does not notify, but it counts as an open.
    """

    machine: bool
    reason: str | None = None
    proxied: bool = False


# --------------------------------------------------------------------------------------------------
# Machine opens and clicks

#: Apple's 17.0.0.0/8, where Mail Privacy Protection proxies fetch from (notes §4: "Apple ranges
#: (17.0.0.0/8, Private Relay egress list) plus a generic UA"). The Private Relay egress list is
#: large and changes; a bare ``Mozilla/5.0`` UA is flagged anywhere (see ``generic_ua``).
APPLE_NETWORKS: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("17.0.0.0/8"),)
#: Opens sooner than this after sending are prefetches (Mautic's BotRatioHelper uses 2 s, notes §1/§4).
DEFAULT_MIN_OPEN_DELAY_S = 2.0
#: Clicks sooner than this after sending are link scanners (notes §4: gateways click on arrival).
DEFAULT_MIN_CLICK_DELAY_S = 5.0

# Notes §4: Defender Safe Links, Mimecast, Proofpoint and Barracuda scan every link on arrival.
_GATEWAY_UA = re.compile(r"safe ?links|microsoft[- ]?atp|mimecast|proofpoint|barracuda", re.IGNORECASE)
# Self-declared robots and link previewers ("Googlebot", "bingbot", "BingPreview", "facebookexternalhit").
_BOT_UA = re.compile(r"bot\b|bot/|crawl|spider|preview|scanner|slurp|externalhit|headlessfetch", re.IGNORECASE)
_BOT_FALSE_POSITIVE = re.compile(r"cubot", re.IGNORECASE)  # a phone brand, "CUBOT X19"
# HTTP libraries and command-line tools never render mail.
_TOOL_UA = re.compile(
    r"^(?:curl|wget|python-requests|python-urllib|python-httpx|aiohttp|go-http-client|okhttp|java|"
    r"libwww-perl|httpie|axios|node-fetch)\b",
    re.IGNORECASE,
)
# Notes §4: Gmail's proxy hides the reader's IP/UA but stands for a real open.
_GMAIL_PROXY_UA = re.compile(r"GoogleImageProxy", re.IGNORECASE)


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP address (IPv4-mapped IPv6 unwrapped), None when absent or invalid."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_apple(ip: str | None) -> bool:
    """Whether ``ip`` is in Apple's MPP proxy networks."""
    address = _ip(ip)
    return isinstance(address, ipaddress.IPv4Address) and any(address in net for net in APPLE_NETWORKS)


def _ua_reason(user_agent: str | None, ip: str | None) -> str | None:
    """The machine reason a user agent (with the IP for Apple) gives on its own, else None."""
    ua = (user_agent or "").strip()
    if not ua:
        return "empty_ua"
    if "(" not in ua and ua.lower().startswith("mozilla/"):
        return "apple_mpp" if _is_apple(ip) else "generic_ua"
    if _GATEWAY_UA.search(ua):
        return "security_gateway"
    if _TOOL_UA.search(ua):
        return "http_tool"
    if _BOT_UA.search(ua) and not _BOT_FALSE_POSITIVE.search(ua):
        return "bot_ua"
    return None


def classify_open(
    user_agent: str | None,
    ip: str | None,
    *,
    seconds_after_send: float | None = None,
    min_delay_s: float = DEFAULT_MIN_OPEN_DELAY_S,
) -> Verdict:
    """Classify a pixel fetch; Gmail's image proxy is flagged ``gmail_proxy`` but counted (``proxied``).

    Reasons, checked in this order (sources: ../shared/notes/anchors-tracking.md §4, checklist 7):

    * ``empty_ua``: no User-Agent at all.
    * ``apple_mpp``: a generic UA (``Mozilla/5.0`` without a platform comment) from Apple's
      17.0.0.0/8 (:data:`APPLE_NETWORKS`): Mail Privacy Protection prefetches on delivery.
    * ``generic_ua``: the same generic UA from elsewhere (Private Relay egress; no browser sends it).
    * ``security_gateway``: Defender Safe Links/ATP, Mimecast, Proofpoint, Barracuda.
    * ``http_tool``: curl, wget, python-requests, Go-http-client and similar libraries.
    * ``bot_ua``: self-declared robots and previewers ("bot", "crawler", "spider", "preview"…).
    * ``too_soon``: fetched less than ``min_delay_s`` after sending (when that time is known).
    * ``gmail_proxy`` (machine, ``proxied``): ``GoogleImageProxy`` fetched the image. It stands for
      a real open, so it is counted (Mautic 7.1 lost every Gmail open by filtering it, mautic#16069),
      but who and when are hidden (the proxy caches, and some Google fetches come right after
      delivery: mautic#10245), so it does not notify unless the operator turns that on.
    """
    if user_agent and _GMAIL_PROXY_UA.search(user_agent):
        if seconds_after_send is not None and seconds_after_send < min_delay_s:
            return Verdict(True, "too_soon")
        return Verdict(True, "gmail_proxy", proxied=True)
    reason = _ua_reason(user_agent, ip)
    if reason is None and seconds_after_send is not None and seconds_after_send < min_delay_s:
        reason = "too_soon"
    return Verdict(reason is not None, reason)


def classify_click(
    user_agent: str | None,
    ip: str | None,
    seconds_after_send: float | None,
    *,
    min_delay_s: float = DEFAULT_MIN_CLICK_DELAY_S,
) -> Verdict:
    """Classify a click: scanner and robot UAs (as for opens), image proxies, or a click right after sending.

    Reasons: the user-agent reasons of :func:`classify_open`; ``image_proxy`` for an image proxy
    following a link (no person behind it); ``too_soon`` for a click less than ``min_delay_s`` after
    sending, which is how gateways that scan every link on arrival look (notes §4, mautic#9162).
    Bursts over all links of an email and HEAD requests need request history and are judged by the
    tracking service.
    """
    if user_agent and _GMAIL_PROXY_UA.search(user_agent):
        return Verdict(True, "image_proxy")
    reason = _ua_reason(user_agent, ip)
    if reason is None and seconds_after_send is not None and seconds_after_send < min_delay_s:
        reason = "too_soon"
    return Verdict(reason is not None, reason)


def is_machine_open(user_agent: str | None, ip: str | None) -> bool:
    """Whether a pixel fetch is a prefetcher, scanner or robot (see :func:`classify_open`)."""
    return classify_open(user_agent, ip).machine


def is_machine_click(user_agent: str | None, ip: str | None, seconds_after_send: float | None) -> bool:
    """Whether a click is a scanner, robot or a click seconds after sending (see :func:`classify_click`)."""
    return classify_click(user_agent, ip, seconds_after_send).machine
