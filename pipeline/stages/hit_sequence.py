"""Machine hits that only show against an email's other hits: scans over several links, a gateway's
pixel fetch beside its link scan, cloud scanners that never opened, and time-of-click re-scans.

Pure: :func:`judge` takes the email's hits around the ones being settled (with their addresses'
labels from :class:`pipeline.stages.netranges.RangeTable`) and returns a reason for each hit it
flags. It is deterministic over its input: the verdict of a click that is still waiting is
computed the same way whether an open beside it is settled before or after it.

Rules (sources: ../shared/notes/anchors-tracking.md §4; issue 22):

* ``link_burst`` (clicks): three or more distinct links of one email within :data:`BURST_S` of each
  other, or every link of a two-link email (a scanner following every link); or two distinct links
  within :data:`BURST_S` from one address when the email's pixel was not fetched at least
  :data:`COMPANION_S` before (two-link scans; a person reads before clicking, and a Gmail reader's
  open comes from the proxy's address, so any earlier open counts).
* ``cloud_scanner`` (clicks): from a data centre (AWS, Google, Azure/Microsoft), less than
  :data:`CLOUD_SCAN_S` after sending, unless that address fetched the pixel as a person at least
  :data:`COMPANION_S` before, or Gmail's proxy did (a person on a virtual desktop opens, then
  clicks, from there).
* ``rescan`` (clicks): the same link clicked by a person within :data:`RESCAN_S` before, from
  another network (Safe Links' time-of-click check; Resend saw one 12 s later, resend-node#901).
* ``security_gateway`` (opens): a pixel fetch within :data:`COMPANION_S` of a flagged click from the
  same address (the gateway that scanned the links also fetched the images).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.stages.hit_classify import is_cloud
from pipeline.stages.netranges import same_network

__all__ = ["BURST_S", "CLOUD_SCAN_S", "COMPANION_S", "RESCAN_S", "Hit", "judge"]

BURST_S = 1.0
COMPANION_S = 2.0
CLOUD_SCAN_S = 600.0
RESCAN_S = 30.0


@dataclass(frozen=True, slots=True)
class Hit:
    """One stored hit of an email, as the sequence rules see it (``at`` in epoch seconds)."""

    id: str
    kind: str  # open | click
    at: float
    ip: str | None
    labels: frozenset[str] = frozenset()
    link: str | None = None
    machine: bool = False
    after_send: float | None = None
    proxied: bool = False  # Gmail's image proxy: the reader's open, fetched from Google's network


def _burst(c: Hit, clicks: list[Hit], total_links: int, opens: list[Hit]) -> bool:
    near = [k for k in clicks if abs(k.at - c.at) <= BURST_S]
    distinct = {k.link for k in near}
    if len(distinct) >= 3 or (len(distinct) >= 2 and len(distinct) >= total_links):
        return True
    same_ip = {k.link for k in near if k.ip == c.ip}
    if len(same_ip) >= 2:
        first = min(k.at for k in near if k.ip == c.ip)
        return not any(o.at <= first - COMPANION_S for o in opens)
    return False


def _click_reason(c: Hit, clicks: list[Hit], total_links: int, opens: list[Hit], flagged: Mapping[str, str]) -> str | None:
    if c.machine:
        return None
    if _burst(c, clicks, total_links, opens):
        return "link_burst"
    if (is_cloud(c.labels) and c.after_send is not None and c.after_send < CLOUD_SCAN_S
            and not any(o.at <= c.at - COMPANION_S and ((o.ip == c.ip and not o.machine) or o.proxied) for o in opens)):
        return "cloud_scanner"
    if any(k.link == c.link and 0 < c.at - k.at <= RESCAN_S and not (k.machine or k.id in flagged)
           and not same_network(k.ip, c.ip) for k in clicks):
        return "rescan"
    return None


def judge(hits: Iterable[Hit], total_links: int) -> dict[str, str]:
    """Reasons for the hits of ONE email that these rules flag, by hit id (hits already flagged machine
    are left alone, but a flagged click still marks the open beside it). ``total_links`` is how many
    tracked links the email has."""
    ordered = sorted(hits, key=lambda h: (h.at, h.id))
    clicks = [h for h in ordered if h.kind == "click"]
    opens = [h for h in ordered if h.kind == "open"]
    reasons: dict[str, str] = {}
    flagged_clicks: list[Hit] = []
    for c in clicks:
        reason = _click_reason(c, clicks, total_links, opens, reasons)
        if reason is not None:
            reasons[c.id] = reason
        if reason is not None or c.machine:
            flagged_clicks.append(c)
    for o in opens:
        if not o.machine and any(k.ip == o.ip and abs(k.at - o.at) <= COMPANION_S for k in flagged_clicks):
            reasons[o.id] = "security_gateway"
    return reasons
