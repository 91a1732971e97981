"""Inject open/click tracking into outbound HTML: tracked links and the pixel.

Pure stage: no I/O, no clock, no keys (the hashes come from the caller's :data:`Signer`, see
:mod:`pipeline.stages.tracking_ids`).

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
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from html.entities import html5 as _HTML5_ENTITIES

from lxml import etree

from pipeline.stages.html_guard import cap_attributes
from pipeline.stages.tracking_ids import Signer, click_url, link_hash, open_url, recipient_hash

__all__ = ["Injected", "TrackedLinkSpec", "inject"]


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
            raw_end = _script_end(text, pos) if name == "script" else _raw_end(text, pos, name)
            if raw_end is None:
                return _Scan(found, body_end, start)
            pos = raw_end
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
    return [(str(element.tag), element.get("href"), _label(element)) for element in root.iter("a", "area")]


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
