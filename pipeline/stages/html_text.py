"""HTML → readable plain text, in time linear in the input. Pure: no I/O.

The text alternative of an outgoing HTML message and the text quote under a reply or a forward come
from here. One block per line, a blank line between paragraphs, links as "text (url)", lists as
"- item" / "1. item" with nested lists indented, blockquotes as "> " lines, ``<pre>`` kept as is.

Hostile markup (issue 14) costs time in proportion to its size:

* lxml parses; the tree is walked with an explicit stack (no recursion, whatever the nesting), and
  plain elements write straight into their parent's output, so a character is copied once, not once
  per enclosing element.
* Blockquotes and lists re-read their content to prefix or indent its lines; only
  :data:`~pipeline.stages.budgets.NESTED_BLOCKS` levels of them do (deeper ones render as plain
  blocks), and a link inside a link shows its text only, so no character is re-read more than a
  bounded number of times.
* Every regular expression here is linear: a run of whitespace is tried from its first character
  only (a look-behind), and nothing that can fail after a long scan is retried at each position.
* Input beyond :data:`~pipeline.stages.budgets.HTML_TO_TEXT_CHARS` is not converted; the text ends
  with :data:`~pipeline.stages.budgets.TRUNCATED_NOTICE`.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator

import lxml.etree
import lxml.html

from pipeline.stages.budgets import HTML_TO_TEXT_CHARS, NESTED_BLOCKS, TRUNCATED_NOTICE, clip
from pipeline.stages.html_guard import cap_attributes
from pipeline.stages.slices import (
    SLICE,
    cut_after_non_space,
    cut_anywhere,
    cut_before_newline_run,
    cut_before_non_space,
    cut_before_tag,
    sub_by_match,
    sub_in_slices,
)

__all__ = ["XML_UNSAFE", "html_to_text", "parse_html"]

#: Characters lxml refuses to store (and the internal markers below, which input must not carry).
XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

_LINE = "\x01"  # block boundary: the text around it goes on separate lines
_PARA = "\x02"  # paragraph boundary: a blank line between the text around it
_KEEP = "\x03"  # a space that whitespace collapsing must keep (indentation, <pre>)

_WS = re.compile(r"\s+")
# Block markers and what follows them up to the end of their run of spaces, newlines and markers; the
# spaces and newlines before a run are found with rstrip (see _resolve_breaks). The old single pattern,
# `[ \n\x01\x02]*[\x01\x02][ \n\x01\x02]*`, rescanned a run without a marker from each of its
# positions: quadratic in the run (issue 14: 40,000 newlines in a <pre> took 13 s).
_MARKER_RUN = re.compile(r"[\x01\x02][ \n\x01\x02]*+")
# Whitespace within a line (the set str.split() splits on) that is not already a single space.
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
_BLANK_RUN = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"(?<! ) ++$", re.M)  # from a run's first space only, never backtracking
_TAGS = re.compile(r"(?:<[^<>]*+>)++")  # a run of adjacent tags, read once
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HIDDEN_BLOCK = re.compile(r"(?is)<(head|script|style|title)\b[^<>]*>.*?(?:</\1\s*>|\Z)")
_HIDDEN_OPENERS = ("<head", "<script", "<style", "<title")
_MARKERS_AS_SPACES = str.maketrans({_LINE: " ", _PARA: " "})
_SHOWN_SCHEME = re.compile(r"^(?:https?|mailto|tel|ftp):", re.I)

_DROP_TAGS = frozenset("head script style noscript template title object embed iframe svg math".split())
_PARAGRAPH_TAGS = frozenset("p h1 h2 h3 h4 h5 h6 table hr".split())
_LINE_TAGS = frozenset(
    "address article aside caption center details dialog div dl dt dd fieldset figcaption figure footer form "
    "header li main nav section summary tr".split())
_MAX_DEPTH = 200  # below this, an element's text is taken flat (libxml2 itself stops at 256 levels)
_MAX_LINK_NESTING = 2  # a link inside a link inside a link shows its text only

_PLAIN, _LINK, _QUOTE, _LIST, _ITEM = range(5)


def parse_html(markup: str, *, clean: bool = False) -> lxml.html.HtmlElement | None:
    """An lxml document for ``markup`` (UTF-8, comments dropped, attributes capped), or None when it has
    no content; ``clean`` says ``markup`` has been through :data:`XML_UNSAFE` already."""
    if not markup or not markup.strip():
        return None
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    if not clean:
        markup = sub_in_slices(XML_UNSAFE, "", markup, cut_anywhere)
    data = cap_attributes(markup).encode("utf-8", "replace")
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.LxmlError, ValueError):
        return None
    if "&#" not in markup:  # only character references (&#1;) can put what lxml refuses to store in the tree
        return root
    for el in root.iter():
        text, tail = el.text, el.tail
        if text and _scrubbed(text) != text:
            el.text = _scrubbed(text)
        if tail and _scrubbed(tail) != tail:
            el.tail = _scrubbed(tail)
        for name, value in el.attrib.items():
            if XML_UNSAFE.search(value):
                el.attrib[name] = XML_UNSAFE.sub("", value)
    return root


def _scrubbed(text: str) -> str:
    return XML_UNSAFE.sub("", text) if len(text) <= SLICE else sub_in_slices(XML_UNSAFE, "", text, cut_anywhere)


def _collapse(text: str | None) -> str:
    """Source whitespace (newlines included) collapsed to single spaces."""
    if not text:
        return ""
    return _WS.sub(" ", text) if len(text) <= SLICE else sub_in_slices(_WS, " ", text, cut_before_non_space)


def _resolve_breaks(text: str) -> str:
    """Every maximal run of spaces, newlines and block markers holding a marker as a newline, or a
    blank line when it holds a paragraph marker or two newlines; other text unchanged. Linear: each
    run is found once from its first marker and extended backwards with rstrip."""
    pieces: list[str] = []
    pos = 0
    for match in _MARKER_RUN.finditer(text):
        before = text[pos:match.start()]
        kept = before.rstrip(" \n")
        run = match.group()
        newlines = before.count("\n", len(kept)) + run.count("\n")
        pieces.append(kept)
        pieces.append("\n\n" if _PARA in run or newlines >= 2 else "\n")
        pos = match.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def _normalize(text: str) -> str:
    """Block markers resolved, whitespace collapsed per line, blank-line runs reduced to one, edges trimmed."""
    text = sub_in_slices(_HSPACE, " ", _resolve_breaks(text), cut_before_non_space)
    # Now a line has at most one space at either end; the first line's start and the last line's
    # end go with the final strip.
    text = text.replace("\n ", "\n").replace(" \n", "\n")
    return sub_in_slices(_BLANK_RUN, "\n\n", text, cut_before_newline_run).strip(" \n")


def _words(text: str) -> str:
    """``" ".join(text.split())``, a slice at a time when long."""
    if len(text) <= SLICE:
        return " ".join(text.split())
    return sub_in_slices(_WS, " ", text, cut_before_non_space).strip()


def _link(inner: str, href: str | None) -> str:
    """Link text followed by " (url)", or just the URL when the text is the URL or empty."""
    url = (href or "").strip()
    if not url or not _SHOWN_SCHEME.match(url):
        return inner
    label = _words(inner.translate(_MARKERS_AS_SPACES))
    if not label:
        return url
    bare = url[7:] if url.lower().startswith("mailto:") else url
    if label in (url, bare) or label.rstrip("/") == url.rstrip("/"):
        return inner
    stripped = inner.rstrip(f" \n{_LINE}{_PARA}")
    return f"{stripped} ({url}){inner[len(stripped):]}"


def _quoted(text: str) -> str:
    """Normalized ``text`` as "> " lines (an empty line as ">")."""
    if not text:
        return ">"
    # Normalized text has no blank line at either end and never two in a row, so each blank line is
    # one "\n>\x03\n" once prefixed, and these never overlap.
    return (f">{_KEEP}" + text.replace("\n", f"\n>{_KEEP}")).replace(f"\n>{_KEEP}\n", "\n>\n")


def _item(marker: str, text: str) -> str:
    """One list item: the marker before the first line, the other lines indented under it, no blank lines."""
    indent = _KEEP * (len(marker) + 1)
    return f"{marker}{_KEEP}" + text.replace("\n\n", "\n").replace("\n", f"\n{indent}")


class _Frame:
    """An element being rendered: where its content goes (``buf``) and what closing it writes (to ``out``)."""

    __slots__ = ("kind", "el", "children", "depth", "buf", "out", "close", "quotes", "links", "items", "number",
                 "ordered", "owner", "marker")

    def __init__(self, kind: int, el: lxml.html.HtmlElement, depth: int, buf: list[str], out: list[str],
                 quotes: int, links: int) -> None:
        self.kind = kind
        self.el = el
        self.children: Iterator[lxml.html.HtmlElement] = iter(el)
        self.depth = depth  # the depth its children are rendered at, minus one
        self.buf = buf
        self.out = out
        self.close = ""
        self.quotes = quotes  # enclosing blockquotes and lists that prefix or indent (this one included)
        self.links = links  # enclosing links that show their URL (this one included)
        self.items: list[str] = []
        self.number = 0
        self.ordered = False
        self.owner: _Frame | None = None
        self.marker = ""


def _open(el: lxml.html.HtmlElement, depth: int, out: list[str], quotes: int, links: int) -> _Frame | None:
    """Render what ``el`` contributes up front; a frame when its children still have to be visited."""
    if not isinstance(el.tag, str):
        return None
    tag = el.tag.lower()
    if tag in _DROP_TAGS:
        return None
    if depth > _MAX_DEPTH:
        out.append(_collapse(el.text_content()))
        return None
    if tag == "br":
        out.append("\n")
        return None
    if tag == "img":
        out.append(_collapse(el.get("alt")))
        return None
    if tag == "pre":
        body = el.text_content().replace("\r\n", "\n").replace("\t", _KEEP * 4).replace(" ", _KEEP)
        out.append(f"{_PARA}{body}{_PARA}")
        return None
    text = _collapse(el.text)
    if tag in ("ul", "ol", "blockquote") and quotes < NESTED_BLOCKS:
        frame = _Frame(_QUOTE if tag == "blockquote" else _LIST, el, depth, [text], out, quotes + 1, links)
        frame.ordered = tag == "ol"
        return frame
    if tag == "a" and links < _MAX_LINK_NESTING:
        return _Frame(_LINK, el, depth, [text], out, quotes, links + 1)
    if tag in _PARAGRAPH_TAGS or tag in ("ul", "ol", "blockquote"):
        edge = _PARA
    elif tag in _LINE_TAGS:
        edge = _LINE
    else:
        edge = ""
    out.append(edge)
    out.append(text)
    close = " " if tag in ("td", "th") else edge
    if next(iter(el), None) is None:  # no children (len(el) would count them all)
        out.append(close)
        return None
    frame = _Frame(_PLAIN, el, depth, out, out, quotes, links)
    frame.close = close
    return frame


def _finish(frame: _Frame) -> None:
    """Write what closing ``frame`` contributes to its output."""
    if frame.kind == _PLAIN:
        frame.out.append(frame.close)
    elif frame.kind == _LINK:
        frame.out.append(_link("".join(frame.buf), frame.el.get("href")))
    elif frame.kind == _QUOTE:
        frame.out.append(f"{_PARA}{_quoted(_normalize(''.join(frame.buf)))}{_PARA}")
    elif frame.kind == _ITEM:
        assert frame.owner is not None
        frame.owner.items.append(_item(frame.marker, _normalize("".join(frame.buf))))
    else:  # a list: loose content first, then one item per line
        stray = _normalize("".join(frame.buf))
        frame.out.append(f"{_PARA}{chr(10).join(([stray] if stray else []) + frame.items)}{_PARA}")


def _render(root: lxml.html.HtmlElement) -> str:
    """The marked-up text of ``root`` (markers resolved later by :func:`_normalize`)."""
    top: list[str] = []
    first = _open(root, 0, top, 0, 0)
    stack = [first] if first is not None else []
    while stack:
        frame = stack[-1]
        child = next(frame.children, None)
        if child is None:
            stack.pop()
            _finish(frame)
            if stack:
                stack[-1].buf.append(_collapse(frame.el.tail))
            continue
        if frame.kind == _LIST and isinstance(child.tag, str) and child.tag.lower() == "li":
            item = _Frame(_ITEM, child, frame.depth + 1, [_collapse(child.text)], frame.buf, frame.quotes, frame.links)
            frame.number += 1
            item.marker = f"{frame.number}." if frame.ordered else "-"
            item.owner = frame
            stack.append(item)
            continue
        opened = _open(child, frame.depth + 1, frame.buf, frame.quotes, frame.links)
        if opened is None:
            frame.buf.append(_collapse(child.tail))
        else:
            stack.append(opened)
    return "".join(top)


def _stripped_tags(markup: str) -> str:
    """The text of markup lxml could not make a tree of: comments and hidden blocks dropped, tags removed."""
    markup = sub_by_match(_COMMENT, " ", markup)
    lowered = markup.lower()
    if any(opener in lowered for opener in _HIDDEN_OPENERS):
        markup = sub_by_match(_HIDDEN_BLOCK, " ", markup)
    return _normalize(html_lib.unescape(sub_in_slices(_TAGS, " ", markup, cut_before_tag)))


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: one line per block, links as "text (url)", lists as "- item"."""
    html, clipped = clip(html or "", HTML_TO_TEXT_CHARS)
    markup = sub_in_slices(XML_UNSAFE, "", html, cut_anywhere)  # also removes any stray marker characters
    root = parse_html(markup, clean=True)
    text = ""
    if root is not None:
        text = _normalize(_render(root))
        if not text:  # libxml2 drops content nested deeper than 256 levels: strip the tags instead
            text = _stripped_tags(markup)
        text = sub_in_slices(_TRAILING_SPACE, "", text.replace(_KEEP, " "), cut_after_non_space)
    if clipped:
        text = f"{text}\n\n{TRUNCATED_NOTICE}".lstrip("\n")
    return text
