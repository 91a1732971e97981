"""Inject open/click tracking into outbound HTML, and tell machine opens and clicks from human ones.

Pure stage: no I/O, no clock, no keys. Hashes come from a :data:`Signer` the caller builds, e.g.
``functools.partial(keyring.sign, "click")`` (:meth:`ops.crypto.Keyring.sign`), and are checked
with the matching :data:`Verifier` (``functools.partial(keyring.verify, "click")``), which tries
every configured key so mail signed before a key rotation keeps working.

How :func:`inject` edits a document (see ../shared/notes/anchors-tracking.md, §3 and checklist 9):

* The output is the input text with splices, never a re-serialisation: ``lxml.html.tostring``
  percent-encodes hrefs and re-spells entities, quoting and whitespace, so only the spliced href
  values and the inserted pixel differ from the input, byte for byte.
* An HTML5-style scanner locates ``<a>``/``<area>`` start tags and the exact span of their first
  ``href`` value, skipping comments (``<!--[if mso]>`` blocks included), bogus comments, doctypes,
  ``<script>``/``<style>``/``<textarea>``/``<title>`` and the other raw-text elements. lxml (libxml2
  2.14's HTML5 tokenizer) parses the same text, and a located href is rewritten only when lxml has
  the same element, in the same order, with the same attribute value. Where the two disagree
  (pathological markup; nesting deeper than libxml2's ~2,000-element limit) the link is left
  alone: an untracked link is better than a broken one.
* Attribute values are decoded as a browser does (``&amp;``, numeric references, the HTML5 rule
  that keeps ``&not=`` literal inside attributes), then trimmed and stripped of tab/newline as URL
  parsing does; the decoded URL is what is hashed and stored, and the tracking URL written back is
  entity-escaped for the attribute's quoting.
* Rewritten: absolute ``http``/``https`` hrefs (any case). Untouched: ``mailto:``, ``tel:``,
  ``#fragment``, relative and scheme-relative links, ``javascript:``, ``data:``, anything under
  ``public_url`` (our tracking and unsubscribe pages) and every URL in ``skip_urls``.
* The pixel goes right before the last real ``</body>`` end tag (one in a comment or script does
  not count), or at the very end when there is none (before an unterminated comment, tag or
  ``<script>`` that would swallow it). It is a 1x1 image sized by attributes and inline style
  rather than hidden with ``display:none``, so a client that skips hidden images still fetches it.
* Links inside ``<!--[if mso]>`` conditional comments (VML buttons) are comments to HTML parsers,
  though Outlook's Word engine renders them; they stay byte-for-byte untouched, so Outlook-desktop
  clicks on them are not tracked (the gap the notes record in §3).

Machine opens and clicks (notes §4 and checklist 7): flagged, never dropped, by
:func:`classify_open` / :func:`classify_click`, whose :class:`Verdict` carries a reason code.
"""

from __future__ import annotations

import html as _html
import ipaddress
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from html.entities import html5 as _HTML5_ENTITIES
from urllib.parse import quote

from lxml import etree

from pipeline.stages.autolink import normalize_email
from pipeline.stages.html_guard import cap_attributes

__all__ = [
    "APPLE_NETWORKS",
    "DEFAULT_MIN_CLICK_DELAY_S",
    "DEFAULT_MIN_OPEN_DELAY_S",
    "Injected",
    "Signer",
    "TrackedLinkSpec",
    "Verdict",
    "Verifier",
    "classify_click",
    "classify_open",
    "click_url",
    "inject",
    "is_machine_click",
    "is_machine_open",
    "link_hash",
    "open_url",
    "recipient_hash",
    "verify_link_hash",
    "verify_recipient_hash",
]

#: ``sign(*parts) -> hex``, e.g. ``functools.partial(keyring.sign, "click")``.
Signer = Callable[..., str]
#: ``verify(signature, *parts) -> bool``, e.g. ``functools.partial(keyring.verify, "click")``.
Verifier = Callable[..., bool]


@dataclass(frozen=True, slots=True)
class TrackedLinkSpec:
    """One distinct tracked URL of an email: its hash, decoded target, first position and link text."""

    link_hash: str
    url: str
    #: 0-based index, among the rewritten links of the document, of the URL's first occurrence.
    position: int
    #: The first occurrence's visible text (``alt`` for ``<area>``), whitespace collapsed, may be "".
    text: str = ""


@dataclass(frozen=True, slots=True)
class Injected:
    """The tracked HTML, the links it points at (one per distinct URL) and the pixel URL if any."""

    html: str
    links: tuple[TrackedLinkSpec, ...]
    pixel_url: str | None


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
# Hashes and URLs


def _recipient_key(recipient: str) -> str:
    """The form of a recipient address that is signed: unbracketed, stripped, lowercased."""
    return normalize_email(recipient) or recipient.strip().lower()


def recipient_hash(sign: Signer, email_id: str, recipient: str) -> str:
    """HMAC over the email id and the lowercased recipient address (the pixel's id)."""
    return sign(email_id, _recipient_key(recipient))


def link_hash(sign: Signer, email_id: str, url: str) -> str:
    """HMAC over the email id and a decoded target URL (what :func:`inject` stores)."""
    return sign(email_id, url)


def verify_recipient_hash(verify: Verifier, email_id: str, recipient: str, signature: str) -> bool:
    """Whether ``signature`` is :func:`recipient_hash` of this email and recipient under any key."""
    return verify(signature, email_id, _recipient_key(recipient))


def verify_link_hash(verify: Verifier, email_id: str, url: str, signature: str) -> bool:
    """Whether ``signature`` is :func:`link_hash` of this email and stored URL under any key."""
    return verify(signature, email_id, url)


def open_url(public_url: str, email_id: str, rhash: str) -> str:
    """The pixel URL ``PUBLIC_URL/track/open/{email_id}/{recipient_hash}``."""
    return f"{public_url.rstrip('/')}/track/open/{quote(email_id, safe='')}/{quote(rhash, safe='')}"


def click_url(public_url: str, email_id: str, lhash: str) -> str:
    """The click URL ``PUBLIC_URL/track/click/{email_id}/{link_hash}``."""
    return f"{public_url.rstrip('/')}/track/click/{quote(email_id, safe='')}/{quote(lhash, safe='')}"


# --------------------------------------------------------------------------------------------------
# Scanning the original text (HTML5 tokenizer states, enough to find real start tags)

_WS = "\t\n\f\r "
# A tag's attribute section. Possessive quantifiers keep a tag left open at EOF linear; once a
# name is followed by "=", its value must parse (an unterminated quote leaves the tag open to EOF).
_ATTRS = (
    rf"(?:[{_WS}/]++|[^{_WS}/>][^{_WS}/>=]*+"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"[^\"]*+\"|'[^']*+'|(?![\"'])[^{_WS}>]*+)|(?![{_WS}]*+=)))*+"
)
_TAG = re.compile(rf"<(/?)([A-Za-z][^{_WS}/>]*+)({_ATTRS})>")
_ATTR = re.compile(
    rf"[{_WS}/]*+([^{_WS}/>][^{_WS}/>=]*+)"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"([^\"]*+)\"|'([^']*+)'|(?![\"'])([^{_WS}>]*+))|(?![{_WS}]*+=))"
)
_COMMENT_END = re.compile(r"--!?>")
# Elements whose content is text up to their own end tag (scripting off, as libxml2 parses).
_RAW_TEXT = frozenset({"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes"})
_RAW_END: dict[str, re.Pattern[str]] = {
    name: re.compile(rf"</{name}[{_WS}/>]", re.IGNORECASE) for name in _RAW_TEXT
}
_SCRIPT_TOKEN = re.compile(rf"<!--|-->|</?script(?=[{_WS}/>])", re.IGNORECASE)
_LINK_TAGS = frozenset({"a", "area"})
_INTERESTING = "|".join(sorted(_LINK_TAGS | _RAW_TEXT | {"plaintext"}, key=len, reverse=True))
# Text, complete comments, doctypes, bogus comments and every tag that matters to nobody, consumed in
# one C-level match, so Python only handles link tags, raw-text elements, </body> and unterminated
# constructs (see _scan).
_SKIP_TOKEN = (
    rf"(?:[^<]++"
    rf"|<!--(?:>|->|(?s:.*?)--!?>)"
    rf"|<(?:!(?!--)|\?)[^>]*+>"
    rf"|</>"
    rf"|</(?![A-Za-z])[^>]++>"
    rf"|</(?!(?i:body)[{_WS}/>])[A-Za-z][^{_WS}/>]*+{_ATTRS}>"
    rf"|<(?!(?i:{_INTERESTING})[{_WS}/>])[A-Za-z][^{_WS}/>]*+{_ATTRS}>"
    rf"|<(?![!?/A-Za-z])"
    rf")"
)
_SKIP = re.compile(rf"{_SKIP_TOKEN}*+")
_SKIP_ONE = re.compile(_SKIP_TOKEN)
# _SKIP runs over at most this many characters per call (ending right before a "<"), so one
# megabyte-long match never holds the GIL for long (issue 14; see _skip).
_SKIP_SLICE = 65_536


@dataclass(frozen=True, slots=True)
class _Found:
    """A located ``<a>``/``<area>`` start tag and the span of its first href value."""

    tag: str
    href: str | None  # decoded attribute value, None without an href attribute
    start: int  # value span in the original text (inside the quotes when quoted)
    end: int
    quote: str  # '"', "'" or "" (unquoted)


@dataclass(frozen=True, slots=True)
class _Scan:
    """What the scanner found: link tags, the last ``</body>`` and where parsed content ends."""

    links: list[_Found]
    body_end: int | None
    #: len(text), or the start of an unterminated comment, tag or raw-text element that swallows the rest.
    content_end: int


def _scan(text: str) -> _Scan:
    """Find every real ``<a>``/``<area>`` start tag in ``text``, the last ``</body>`` and the end of content."""
    found: list[_Found] = []
    body_end: int | None = None
    pos = 0
    size = len(text)
    while (start := _skip(text, pos)) < size:
        kind = text[start + 1 : start + 2]
        if text.startswith("<!--", start):
            if text.startswith(">", start + 4):
                pos = start + 5
            elif text.startswith("->", start + 4):
                pos = start + 6
            else:
                close = _COMMENT_END.search(text, start + 4)
                if close is None:
                    return _Scan(found, body_end, start)
                pos = close.end()
            continue
        after = text[start + 2 : start + 3]
        if kind in "!?" or (kind == "/" and not (after.isascii() and after.isalpha())):
            if kind == "/" and after == ">":
                pos = start + 3  # "</>" is dropped
                continue
            if not after and kind == "/":
                return _Scan(found, body_end, start)
            close_at = text.find(">", start + 2)  # doctype or bogus comment
            if close_at < 0:
                return _Scan(found, body_end, start)
            pos = close_at + 1
            continue
        tag = _TAG.match(text, start)
        if tag is None:
            return _Scan(found, body_end, start)  # a tag still open at the end is no tag at all
        pos = tag.end()
        name = tag.group(2).lower()
        if tag.group(1):
            if name == "body":
                body_end = start
            continue
        if name in _LINK_TAGS:
            found.append(_link_in_tag(text, name, tag.start(3), tag.end(3)))
        elif name in _RAW_TEXT:
            close_at = _script_end(text, pos) if name == "script" else _raw_end(text, pos, name)
            if close_at is None:
                return _Scan(found, body_end, start)
            pos = close_at
        elif name == "plaintext":
            return _Scan(found, body_end, start)
    return _Scan(found, body_end, size)


def _skip(text: str, pos: int) -> int:
    """Offset of the next token :func:`_scan` must look at (``_SKIP`` can always match empty).

    ``_SKIP`` runs a slice at a time, each slice ending right before a "<" (so a lone "<" at a
    slice's end sees the same next character as in the whole text). Where a slice's match stops
    short of its end, the token there may run past the slice: one token is tried on the whole text,
    and only if none matches is that the offset.
    """
    size = len(text)
    while pos < size:
        limit = text.find("<", pos + _SKIP_SLICE) if size - pos > _SKIP_SLICE else -1
        if limit < 0:
            limit = size
        skipped = _SKIP.match(text, pos, limit)
        stop = pos if skipped is None else skipped.end()
        if stop < limit:
            token = _SKIP_ONE.match(text, stop)
            if token is None or token.end() == stop:
                return stop
            stop = token.end()
        pos = stop
    return pos


def _raw_end(text: str, pos: int, name: str) -> int | None:
    """Offset of the end tag closing a raw-text element whose content starts at ``pos``."""
    close = _RAW_END[name].search(text, pos)
    return None if close is None else close.start()


def _script_end(text: str, pos: int) -> int | None:
    """Offset of the ``</script>`` closing a script, honouring HTML5's escaped and double-escaped states."""
    state = 0  # 0 data, 1 escaped (after "<!--"), 2 double-escaped (a "<script" inside "<!--")
    while (m := _SCRIPT_TOKEN.search(text, pos)) is not None:
        token = m.group().lower()
        pos = m.end()
        if token == "<!--":
            pos = m.start() + 2  # its dashes may also end it: "<!-->"
            if state == 0:
                state = 1
        elif token == "-->":
            state = 0
        elif token.startswith("</"):
            if state == 2:
                state = 1
            else:
                return m.start()
        elif state == 1:
            state = 2
    return None


def _link_in_tag(text: str, name: str, pos: int, end: int) -> _Found:
    """The first href attribute between ``pos`` and ``end`` (a start tag's attribute section)."""
    while pos < end:
        attr = _ATTR.match(text, pos, end)
        if attr is None or attr.end() == pos:
            break
        pos = attr.end()
        if attr.group(1).lower() != "href":
            continue
        for group, quote_char in ((2, '"'), (3, "'"), (4, "")):
            if attr.group(group) is not None:
                raw = attr.group(group)
                return _Found(name, _decode_attribute(raw), attr.start(group), attr.end(group), quote_char)
        return _Found(name, "", attr.end(1), attr.end(1), "")
    return _Found(name, None, -1, -1, "")


_CHARREF = re.compile(r"&(?:#[xX]([0-9A-Fa-f]+);?|#([0-9]+);?|([A-Za-z][A-Za-z0-9]*;?))")


def _decode_attribute(raw: str) -> str:
    """Decode an attribute value as an HTML5 tokenizer does (newlines normalised, references resolved)."""
    value = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    if "&" not in value:
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            name = m.group(3)
            if name.endswith(";"):
                return _HTML5_ENTITIES.get(name, m.group())
            if name in _HTML5_ENTITIES and not value.startswith("=", m.end()):
                return _HTML5_ENTITIES[name]
            return m.group()  # "&not=1", "&copyx": literal inside attribute values
        number = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2))
        if number == 0 or number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
            return "\ufffd"
        if 0x80 <= number <= 0x9F:
            return _html.unescape(f"&#{number};") or chr(number)
        return chr(number)

    return _CHARREF.sub(replace, value)


def _lxml_links(text: str) -> list[tuple[str, str | None, str]]:
    """``(tag, href, text)`` of every ``<a>``/``<area>`` element lxml builds, in document order."""
    # Bytes with a fixed encoding: a str with an XML declaration is refused, and a <meta charset>
    # must not make libxml2 re-decode text that is already decoded.
    parser = etree.HTMLParser(encoding="utf-8", huge_tree=True, no_network=True, recover=True)
    root = etree.fromstring(cap_attributes(text).encode("utf-8", "surrogatepass"), parser)
    if root is None:
        return []
    return [(element.tag, element.get("href"), _label(element)) for element in root.iter("a", "area")]


_LABEL_CHARS = 200


def _label(element: etree._Element) -> str:
    """A link's visible text (``alt`` for ``<area>``), whitespace collapsed, at most 200 characters."""
    if element.tag == "area":
        text = element.get("alt") or ""
    else:
        chunks: list[str] = []
        gathered = 0
        for chunk in element.itertext():  # bounded, so nested unclosed anchors stay linear
            chunks.append(chunk)
            gathered += len(chunk)
            if gathered > 4 * _LABEL_CHARS:
                break
        text = "".join(chunks)
    return " ".join(text.split())[:_LABEL_CHARS]


_LOOKAHEAD = 16


def _confirmed(found: list[_Found], parsed: list[tuple[str, str | None, str]]) -> Iterator[tuple[_Found, str]]:
    """Pair scanned tags with lxml's elements (same tag and value, same order); yield pairs with link text."""
    j = 0
    for item in found:
        for k in range(j, min(j + _LOOKAHEAD, len(parsed))):
            tag, href, label = parsed[k]
            if tag == item.tag and href == item.href:
                j = k + 1
                yield item, label
                break


# --------------------------------------------------------------------------------------------------
# Injection

_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = re.compile(r"[\t\n\r]")
_HTTP = re.compile(r"https?://", re.IGNORECASE)
_UNQUOTED_UNSAFE = re.compile(rf"[{_WS}\"'=<>`]")


def _clean_url(value: str) -> str:
    """A URL as browsers read an href: outer spaces and controls trimmed, tabs and newlines removed."""
    return _TAB_NEWLINE.sub("", value.strip(_C0_AND_SPACE))


def _is_own(url: str, base: str) -> bool:
    """Whether ``url`` lies under ``base`` (our public URL), compared case-insensitively."""
    lowered = url.lower()
    return lowered.startswith(base) and (len(lowered) == len(base) or lowered[len(base)] in "/?#")


def _attribute_text(value: str, quote_char: str) -> str:
    """``value`` escaped for an attribute written with ``quote_char`` (quoted when unquoted is unsafe)."""
    escaped = value.replace("&", "&amp;")
    if quote_char == '"':
        return escaped.replace('"', "&quot;")
    if quote_char == "'":
        return escaped.replace("'", "&#39;")
    if escaped and not _UNQUOTED_UNSAFE.search(escaped):
        return escaped
    return '"' + escaped.replace('"', "&quot;") + '"'


def _pixel_tag(url: str) -> str:
    """The 1x1 open-tracking image."""
    src = _attribute_text(url, '"')
    return (
        f'<img src="{src}" width="1" height="1" alt="" border="0" '
        'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
    )


def inject(
    html: str,
    *,
    email_id: str,
    recipient: str,
    public_url: str,
    open_signer: Signer | None,
    click_signer: Signer | None,
    skip_urls: Collection[str] = (),
) -> Injected:
    """Add a per-recipient open pixel and rewrite absolute http(s) links to click-tracking URLs."""
    if open_signer is None and click_signer is None:
        return Injected(html, (), None)
    if not email_id:
        raise ValueError("inject needs an email id")
    base = public_url.rstrip("/")
    if not _HTTP.match(base):
        raise ValueError(f"public_url must be an absolute http(s) URL, got {public_url!r}")
    scan = _scan(html)

    splices: list[tuple[int, int, str]] = []
    specs: dict[str, TrackedLinkSpec] = {}
    if click_signer is not None and scan.links:
        base_key = base.lower()
        skipped = {_clean_url(u) for u in skip_urls}
        parsed = _lxml_links(html)
        position = 0
        for item, label in _confirmed(scan.links, parsed):
            url = _clean_url(item.href or "")
            if not _HTTP.match(url) or url in skipped or _is_own(url, base_key):
                continue
            spec = specs.get(url)
            if spec is None:
                spec = specs[url] = TrackedLinkSpec(link_hash(click_signer, email_id, url), url, position, label)
            target = click_url(base, email_id, spec.link_hash)
            splices.append((item.start, item.end, _attribute_text(target, item.quote)))
            position += 1

    pixel: str | None = None
    if open_signer is not None:
        pixel = open_url(base, email_id, recipient_hash(open_signer, email_id, recipient))
        at = scan.content_end if scan.body_end is None else scan.body_end
        splices.append((at, at, _pixel_tag(pixel)))
        splices.sort(key=lambda s: s[0])

    pieces: list[str] = []
    cursor = 0
    for start, end, replacement in splices:
        pieces.append(html[cursor:start])
        pieces.append(replacement)
        cursor = end
    pieces.append(html[cursor:])
    return Injected("".join(pieces), tuple(specs.values()), pixel)


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
