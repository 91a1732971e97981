"""Telling machine opens and clicks from human ones, one hit at a time (notes §4 and checklist 7):
flagged, never dropped, by :func:`classify_open` / :func:`classify_click`, whose :class:`Verdict`
carries a reason code. Pure: the caller passes the user agent, address, seconds since sending and
the loaded :class:`Signals` (network ranges and the crawler list, :mod:`pipeline.flows.tracking_signals`).
Rules that need the email's other hits (bursts, re-scans, cloud scanners) are in
:mod:`pipeline.stages.hit_sequence`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pipeline.stages.netranges import RangeTable, normalize_ip
from pipeline.stages.ua_lists import UserAgentMatcher

__all__ = ["APPLE_NETWORKS", "DEFAULT_MIN_CLICK_DELAY_S", "DEFAULT_MIN_OPEN_DELAY_S", "Signals", "Verdict", "classify_click",
           "classify_open", "is_cloud", "is_machine_click", "is_machine_open"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a tracking hit looks automated, and a short reason code.

    ``proxied`` marks a machine fetch made on a person's behalf (Gmail's image proxy): it is
    flagged machine and does not notify, but it counts as an open.
    """

    machine: bool
    reason: str | None = None
    proxied: bool = False


@dataclass(frozen=True, slots=True)
class Signals:
    """The data the rules match against: labelled network ranges and the crawler list."""

    ranges: RangeTable
    agents: UserAgentMatcher


# --------------------------------------------------------------------------------------------------
# Machine opens and clicks

#: Apple's 17.0.0.0/8, where Mail Privacy Protection proxies fetch from (notes §4: "Apple ranges
#: (17.0.0.0/8, Private Relay egress list) plus a generic UA"). Also shipped as ``apple.txt``; kept
#: here so the rule holds without the data files. A bare ``Mozilla/5.0`` UA is flagged anywhere
#: (see ``generic_ua``).
APPLE_NETWORKS: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("17.0.0.0/8"),)
#: Opens sooner than this after sending are prefetches (Mautic's BotRatioHelper uses 2 s, notes §1/§4).
DEFAULT_MIN_OPEN_DELAY_S = 2.0
#: Clicks sooner than this after sending are link scanners (notes §4: gateways click on arrival).
DEFAULT_MIN_CLICK_DELAY_S = 5.0

# Notes §4: Defender Safe Links, Mimecast, Proofpoint and Barracuda scan every link on arrival.
_GATEWAY_UA = re.compile(r"safe ?links|microsoft[- ]?atp|mimecast|proofpoint|barracuda", re.IGNORECASE)
# Self-declared robots and link previewers not in the maintained list ("Some Link Crawler 1.0").
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
# Internet Explorer 9 and older: no person browses with it, but Microsoft's link previews (Teams,
# Outlook's unfurling) do. Outlook desktop renders with Word and still says "MSIE 7.0" — with
# "ms-office"/"MSOffice"/"Microsoft Outlook" in the string, which a preview does not carry.
_OLD_IE = re.compile(r"MSIE [1-9]\.")
_OFFICE_CLIENT = re.compile(r"ms-office|MSOffice|Microsoft Outlook|Outlook-", re.IGNORECASE)
# Headless browsers are automation wherever they run.
_HEADLESS = re.compile(r"HeadlessChrome|PhantomJS|Headless", re.IGNORECASE)


def _is_apple(ip: str | None, labels: frozenset[str]) -> bool:
    address = normalize_ip(ip)
    return "apple" in labels or (isinstance(address, ipaddress.IPv4Address) and any(address in net for net in APPLE_NETWORKS))


def is_cloud(labels: frozenset[str]) -> bool:
    """Whether an address's labels put it in a data centre (AWS, Google Cloud, Azure/Microsoft, Google's services)."""
    return any(label.startswith("cloud:") or label == "google" for label in labels)


def _is_microsoft(labels: frozenset[str]) -> bool:
    return any(label in ("cloud:microsoft",) or label.startswith(("gateway:microsoft", "preview:microsoft")) for label in labels)


def _ua_reason(user_agent: str | None, ip: str | None, labels: frozenset[str], signals: Signals | None) -> str | None:
    """The machine reason a user agent gives (with the address's labels), else None."""
    ua = (user_agent or "").strip()
    if not ua:
        return "empty_ua"
    if "(" not in ua and ua.lower().startswith("mozilla/"):
        return "apple_mpp" if _is_apple(ip, labels) else "generic_ua"
    if _GATEWAY_UA.search(ua) or any(label.startswith("gateway:") for label in labels):
        return "security_gateway"
    if _OLD_IE.search(ua) and not _OFFICE_CLIENT.search(ua) and (_is_microsoft(labels) or any(
            label.startswith("preview:") for label in labels)):
        return "link_preview"
    listed = signals.agents.match(ua) if signals is not None else None
    if listed is not None:
        return listed
    if _TOOL_UA.search(ua):
        return "http_tool"
    if _BOT_UA.search(ua) and not _BOT_FALSE_POSITIVE.search(ua):
        return "bot_ua"
    if _HEADLESS.search(ua):
        return "bot_ua"
    return None


def _labels(ip: str | None, signals: Signals | None) -> frozenset[str]:
    return signals.ranges.labels(ip) if signals is not None else frozenset()


def classify_open(
    user_agent: str | None,
    ip: str | None,
    *,
    seconds_after_send: float | None = None,
    min_delay_s: float = DEFAULT_MIN_OPEN_DELAY_S,
    signals: Signals | None = None,
) -> Verdict:
    """Classify a pixel fetch; Gmail's image proxy is flagged ``gmail_proxy`` but counted (``proxied``).

    Reasons, checked in this order (sources: ../shared/notes/anchors-tracking.md §4, checklist 7):

    * ``gmail_proxy`` (machine, ``proxied``): ``GoogleImageProxy`` fetched the image. It stands for
      a real open, so it is counted (Mautic 7.1 lost every Gmail open by filtering it, mautic#16069),
      but who and when are hidden, so it does not notify unless the operator turns that on; fetched
      less than ``min_delay_s`` after sending it is ``too_soon`` instead.
    * ``empty_ua``: no User-Agent at all.
    * ``apple_mpp``: a generic UA (``Mozilla/5.0`` without a platform comment) from Apple's
      network: Mail Privacy Protection prefetches on delivery. ``generic_ua``: the same from elsewhere.
    * ``security_gateway``: a gateway's own UA (Safe Links, Mimecast, Proofpoint, Barracuda), or any UA
      from a gateway's published network (Exchange Online Protection, Mimecast, Proofpoint, Barracuda,
      Cloudflare Email Security): they fetch with browser UAs.
    * ``link_preview``: a link previewer (the crawler list's ``social-preview`` entries: WhatsApp,
      Slack, Teams, Skype, Telegram...), or an Internet Explorer 7 UA without Office's markers from
      Microsoft's networks (Teams/Outlook previews).
    * ``http_tool``, ``bot_ua``: the crawler list's HTTP libraries and robots, then our own patterns.
    * ``gmail_prefetch``: any other UA from Google's own (non-Cloud) ranges: Gmail prefetches with old
      Chrome/Edge UAs beside the proxy's real open; a person's own device is never in Google's ranges.
    * ``too_soon``: fetched less than ``min_delay_s`` after sending (when that time is known).
    """
    if user_agent and _GMAIL_PROXY_UA.search(user_agent):
        if seconds_after_send is not None and seconds_after_send < min_delay_s:
            return Verdict(True, "too_soon")
        return Verdict(True, "gmail_proxy", proxied=True)
    labels = _labels(ip, signals)
    reason = _ua_reason(user_agent, ip, labels, signals)
    if reason is None and "google" in labels and "cloud:gcp" not in labels:
        reason = "gmail_prefetch"
    if reason is None and seconds_after_send is not None and seconds_after_send < min_delay_s:
        reason = "too_soon"
    return Verdict(reason is not None, reason)


def classify_click(
    user_agent: str | None,
    ip: str | None,
    seconds_after_send: float | None,
    *,
    min_delay_s: float = DEFAULT_MIN_CLICK_DELAY_S,
    signals: Signals | None = None,
) -> Verdict:
    """Classify a click: scanner and robot UAs and networks (as for opens), image proxies, or a click
    right after sending.

    Reasons: the user-agent and network reasons of :func:`classify_open`; ``image_proxy`` for an
    image proxy following a link (no person behind it); ``cloud_scanner`` for a headless browser in
    a data centre; ``too_soon`` for a click less than ``min_delay_s`` after sending, which is how
    gateways that scan every link on arrival look (notes §4, mautic#9162). Bursts over an email's
    links, re-scans and cloud clicks from addresses that never opened need the email's other hits:
    :mod:`pipeline.stages.hit_sequence`; HEAD requests are judged by the caller.
    """
    if user_agent and _GMAIL_PROXY_UA.search(user_agent):
        return Verdict(True, "image_proxy")
    labels = _labels(ip, signals)
    reason = _ua_reason(user_agent, ip, labels, signals)
    if reason == "bot_ua" and is_cloud(labels) and _HEADLESS.search(user_agent or ""):
        reason = "cloud_scanner"
    if reason is None and seconds_after_send is not None and seconds_after_send < min_delay_s:
        reason = "too_soon"
    return Verdict(reason is not None, reason)


def is_machine_open(user_agent: str | None, ip: str | None) -> bool:
    """Whether a pixel fetch is a prefetcher, scanner or robot (see :func:`classify_open`)."""
    return classify_open(user_agent, ip).machine


def is_machine_click(user_agent: str | None, ip: str | None, seconds_after_send: float | None) -> bool:
    """Whether a click is a scanner, robot or a click seconds after sending (see :func:`classify_click`)."""
    return classify_click(user_agent, ip, seconds_after_send).machine
