"""HTML (or plain text) email bodies → Notion blocks, and how to send them within Notion's limits.

Pure: bytes in, block dicts out. Mapping (../shared/notes/nextcrm-templates-notion.md §3.4):
``p``/``div`` → paragraph, ``h1``–``h3`` → heading_1..3 (``h4``–``h6`` → heading_3), ``ul``/``ol``
→ bulleted/numbered list items with nested lists as children, ``blockquote`` → quote, ``pre`` →
code, ``hr`` → divider, data tables → table/table_row (layout tables, the ones holding blocks or
other tables, are read as containers), ``img`` → external image (tracking pixels dropped). Inline:
one rich-text run per style change with bold/italic/underline/strikethrough/code and http(s)/mailto
links. ``script``, ``style``, ``head`` and friends are dropped.

Hostile bodies cost linear time (issue 14): attributes are capped before lxml parses, inline runs
are gathered into one list (not copied at each nesting level), and a body longer than
:data:`~pipeline.stages.budgets.NOTION_HTML_CHARS` is cut, ending with a notice paragraph.

Limits (developers.notion.com/reference/request-limits): a text run ≤ 2,000 characters (longer
runs are split), a link ≤ 2,000, ≤ 100 runs per rich-text array (longer paragraphs become several),
and per request ≤ 100 children, ≤ 2 levels of nesting and ≤ 1,000 block elements.
:func:`split_for_request` and :func:`batches` turn any tree into requests that respect them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from lxml import etree
from lxml import html as lxml_html

from pipeline.stages.budgets import NOTION_HTML_CHARS, TRUNCATED_NOTICE, clip
from pipeline.stages.html_guard import cap_attributes

__all__ = ["MAX_CHILDREN", "MAX_DEPTH", "MAX_ELEMENTS", "MAX_RUNS", "MAX_TEXT", "attachment_note", "batches", "depth",
           "element_count", "file_block", "html_to_blocks", "paragraph", "split_for_request", "text_to_blocks"]

MAX_TEXT = 2000
MAX_URL = 2000
MAX_RUNS = 100
MAX_CHILDREN = 100
MAX_DEPTH = 2
MAX_ELEMENTS = 1000
MAX_PAYLOAD = 450_000  # bytes of JSON per request (Notion's cap is 500 KB)

_DROP = {"script", "style", "head", "title", "meta", "link", "noscript", "template", "svg", "object", "iframe", "form",
         "input", "button", "select", "textarea", "base"}
_CONTAINERS = {"div", "p", "section", "article", "header", "footer", "main", "aside", "nav", "center", "body", "html",
               "address", "figure", "figcaption", "details", "summary", "dl", "dd", "dt", "fieldset", "tbody", "thead",
               "tfoot", "tr", "td", "th", "caption", "font-block"}
_BLOCKS = _CONTAINERS | {"h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "hr", "table", "img"}
_WS = re.compile(r"[ \t\r\n\f\v\u00a0]+")
# Spaces around a line break, tried from a run's first space only (so a run is read once), or from the
# break itself when the spaces before it went with the previous match.
_SPACES_AT_BREAK = re.compile(r"(?<! ) *+\n *+|\n *+")
_BREAK_RUN = re.compile(r"\n{3,}")
_ANY_TAG = re.compile(r"<[^<>]*+>")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # tried at newlines only; a failed try reads one whitespace run


@dataclass(frozen=True, slots=True)
class _Style:
    bold: bool = False
    italic: bool = False
    underline: bool = False
    strikethrough: bool = False
    code: bool = False
    link: str | None = None


_INLINE_STYLES = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "cite": "italic", "u": "underline",
                  "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
                  "code": "code", "kbd": "code", "samp": "code", "tt": "code"}


# -- rich text ----------------------------------------------------------------------------------------


def _safe_link(href: str | None) -> str | None:
    if not href:
        return None
    href = href.strip()
    low = href.lower()
    if not (low.startswith("http://") or low.startswith("https://") or low.startswith("mailto:")) or len(href) > MAX_URL:
        return None
    if any(c.isspace() for c in href):
        return None
    return href


def _run(text: str, style: _Style) -> dict[str, Any]:
    return {"type": "text", "text": {"content": text, "link": {"url": style.link} if style.link else None},
            "annotations": {"bold": style.bold, "italic": style.italic, "strikethrough": style.strikethrough,
                            "underline": style.underline, "code": style.code, "color": "default"}}


def _rich_text(runs: list[tuple[str, _Style]], trim: bool = True) -> list[dict[str, Any]]:
    """Merge runs of one style, trim the ends (not for code), split every run at MAX_TEXT characters."""
    groups: list[tuple[list[str], _Style]] = []  # pieces joined once: appending to a str per run is quadratic
    for text, style in runs:
        if not text:
            continue
        if groups and groups[-1][1] == style:
            groups[-1][0].append(text)
        else:
            groups.append(([text], style))
    merged = [("".join(pieces), style) for pieces, style in groups]
    if merged and trim:
        merged[0] = (merged[0][0].lstrip(" "), merged[0][1])
        merged[-1] = (merged[-1][0].rstrip(" "), merged[-1][1])
    out = []
    for text, style in merged:
        for i in range(0, len(text), MAX_TEXT):
            chunk = text[i : i + MAX_TEXT]
            if chunk:
                out.append(_run(chunk, style))
    return out


def _text_blocks(kind: str, rich: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    """One block (more when over MAX_RUNS runs: the rest continue as paragraphs)."""
    if not rich:
        return []
    first = {"object": "block", "type": kind, kind: {"rich_text": rich[:MAX_RUNS], **extra}}
    rest = [paragraph_rich(rich[i : i + MAX_RUNS]) for i in range(MAX_RUNS, len(rich), MAX_RUNS)]
    if kind in ("paragraph", "quote"):
        rest = [{"object": "block", "type": kind, kind: {"rich_text": b["paragraph"]["rich_text"]}} for b in rest]
    return [first, *rest]


def paragraph_rich(rich: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "block", "type": "paragraph", "paragraph": {"rich_text": rich}}


def paragraph(text: str, *, bold: bool = False, link: str | None = None) -> list[dict[str, Any]]:
    """Paragraph blocks holding ``text`` (split as needed)."""
    return _text_blocks("paragraph", _rich_text([(text, _Style(bold=bold, link=_safe_link(link)))]))


# -- HTML walk ------------------------------------------------------------------------------------------


def _tag(el: Any) -> str | None:
    return el.tag.lower() if isinstance(el.tag, str) else None


def _collapse(text: str | None) -> str:
    return _WS.sub(" ", text) if text else ""


def _style_of(el: Any, style: _Style) -> _Style:
    tag = _tag(el) or ""
    attr = _INLINE_STYLES.get(tag)
    if attr:
        flag: dict[str, Any] = {attr: True}
        style = replace(style, **flag)
    if tag == "a":
        style = replace(style, link=_safe_link(el.get("href")) or style.link)
    css = (el.get("style") or "").lower().replace(" ", "")
    if "font-weight:bold" in css or "font-weight:700" in css:
        style = replace(style, bold=True)
    if "font-style:italic" in css:
        style = replace(style, italic=True)
    if "text-decoration:underline" in css:
        style = replace(style, underline=True)
    if "text-decoration:line-through" in css:
        style = replace(style, strikethrough=True)
    return style


def _hidden(el: Any) -> bool:
    css = (el.get("style") or "").lower().replace(" ", "")
    return "display:none" in css or el.get("hidden") is not None


def _inline(el: Any, style: _Style, pre: bool = False, runs: list[tuple[str, _Style]] | None = None
            ) -> list[tuple[str, _Style]]:
    """Every text under ``el`` as styled runs (block children flattened, separated by line breaks),
    appended to ``runs`` (one list for the whole subtree, whatever its depth)."""
    if runs is None:
        runs = []
    tag = _tag(el)
    if tag is None or tag in _DROP or _hidden(el):
        return runs
    if tag == "br":
        runs.append(("\n", style))
        return runs
    if tag == "img":
        alt = (el.get("alt") or "").strip()
        if alt and not _is_pixel(el):
            runs.append((alt, style))
        return runs
    style = _style_of(el, style)
    start = len(runs)
    keep = pre or tag == "pre"
    if el.text:
        runs.append((el.text if keep else _collapse(el.text), style))
    for child in el:
        ctag = _tag(child)
        if ctag in _BLOCKS and ctag not in ("img",) and len(runs) > start and not runs[-1][0].endswith("\n"):
            runs.append(("\n", style))
        _inline(child, style, keep, runs)
        if child.tail:
            runs.append((child.tail if keep else _collapse(child.tail), style))
    return runs


def _clean_lines(runs: list[tuple[str, _Style]]) -> list[tuple[str, _Style]]:
    """Drop spaces around line breaks and repeated breaks; strip the ends."""
    out: list[tuple[str, _Style]] = []
    for text, style in runs:
        if "\n" in text:
            text = _BREAK_RUN.sub("\n\n", _SPACES_AT_BREAK.sub("\n", text))
        out.append((text, style))
    first = next((i for i, (text, _) in enumerate(out) if text.strip()), len(out))
    del out[:first]  # at once: pop(0) per blank run is quadratic (200,000 <br>s)
    while out and not out[-1][0].strip():
        out.pop()
    if out:
        out[0] = (out[0][0].lstrip(), out[0][1])
        out[-1] = (out[-1][0].rstrip(), out[-1][1])
    return out


def _is_pixel(el: Any) -> bool:
    def small(v: str | None) -> bool:
        return v is not None and v.strip().rstrip("px").isdigit() and int(v.strip().rstrip("px")) <= 2

    src = (el.get("src") or "").lower()
    css = (el.get("style") or "").lower().replace(" ", "")
    return (small(el.get("width")) or small(el.get("height")) or "/track/open/" in src or "display:none" in css
            or "width:1px" in css or "height:1px" in css or "width:0" in css)


class _Walker:
    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []

    def container(self, el: Any, out: list[dict[str, Any]], style: _Style) -> None:
        runs: list[tuple[str, _Style]] = []
        style = _style_of(el, style)

        def flush() -> None:
            cleaned = _clean_lines(runs)
            if any(t.strip() for t, _ in cleaned):
                out.extend(_text_blocks("paragraph", _rich_text(cleaned)))
            runs.clear()

        if el.text:
            runs.append((_collapse(el.text), style))
        for child in el:
            tag = _tag(child)
            if tag is None or tag in _DROP or _hidden(child):
                pass
            elif tag == "br":
                runs.append(("\n", style))
            elif tag in _BLOCKS:
                flush()
                self.block(child, out, style)
            else:
                _inline(child, style, runs=runs)
            if child.tail:
                runs.append((_collapse(child.tail), style))
        flush()

    def block(self, el: Any, out: list[dict[str, Any]], style: _Style) -> None:
        tag = _tag(el) or ""
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            kind = {"h1": "heading_1", "h2": "heading_2"}.get(tag, "heading_3")
            out.extend(_text_blocks(kind, _rich_text(_clean_lines(_inline(el, style)))))
        elif tag in ("ul", "ol"):
            kind = "numbered_list_item" if tag == "ol" else "bulleted_list_item"
            for li in el:
                ltag = _tag(li)
                if ltag == "li":
                    out.extend(self.list_item(li, kind, style))
                elif ltag in ("ul", "ol") and out and out[-1]["type"].endswith("list_item"):
                    children = out[-1][out[-1]["type"]].setdefault("children", [])
                    self.block(li, children, style)  # a list nested directly in a list belongs to the last item
                elif ltag is not None and ltag not in _DROP:
                    self.container(li, out, style)
        elif tag == "li":
            out.extend(self.list_item(el, "bulleted_list_item", style))
        elif tag == "blockquote":
            out.extend(_text_blocks("quote", _rich_text(_clean_lines(_inline(el, style)))))
        elif tag == "pre":
            text = el.text_content()
            if text.strip():
                rich = _rich_text([(text.strip("\n"), _Style())], trim=False)
                out.extend(_text_blocks("code", rich, language="plain text"))
        elif tag == "hr":
            out.append({"object": "block", "type": "divider", "divider": {}})
        elif tag == "table":
            if _is_data_table(el):
                out.extend(_table(el, style))
            else:
                self.container(el, out, style)
        elif tag == "img":
            src = (el.get("src") or "").strip()
            if not _is_pixel(el) and src.lower().startswith(("http://", "https://")) and len(src) <= MAX_URL and " " not in src:
                out.append({"object": "block", "type": "image", "image": {"type": "external", "external": {"url": src}}})
        else:
            self.container(el, out, style)

    def list_item(self, li: Any, kind: str, style: _Style) -> list[dict[str, Any]]:
        runs: list[tuple[str, _Style]] = []
        children: list[dict[str, Any]] = []
        style = _style_of(li, style)
        if li.text:
            runs.append((_collapse(li.text), style))
        for child in li:
            tag = _tag(child)
            if tag is None or tag in _DROP or _hidden(child):
                pass
            elif tag in ("ul", "ol", "table", "pre", "blockquote", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "img"):
                self.block(child, children, style)
            elif tag in ("p", "div") and not children and not any(t.strip() for t, _ in runs):
                _inline(child, style, runs=runs)  # <li><p>text</p></li>: the paragraph is the item's text
            elif tag in _BLOCKS:
                self.block(child, children, style)
            elif tag == "br":
                runs.append(("\n", style))
            else:
                _inline(child, style, runs=runs)
            if child.tail:
                if not children:
                    runs.append((_collapse(child.tail), style))
                elif child.tail.strip():  # text after a nested block: a paragraph below it
                    children.extend(paragraph(_collapse(child.tail)))
        rich = _rich_text(_clean_lines(runs))
        if not rich and not children:
            return []
        block: dict[str, Any] = {"object": "block", "type": kind, kind: {"rich_text": rich[:MAX_RUNS]}}
        extra = [paragraph_rich(rich[i : i + MAX_RUNS]) for i in range(MAX_RUNS, len(rich), MAX_RUNS)]
        if extra or children:
            block[kind]["children"] = [*extra, *children]
        return [block]


def _is_data_table(table: Any) -> bool:
    """A table of text: no nested tables or block content in its cells (layout tables have both)."""
    for cell in table.iter("td", "th"):
        for el in cell.iterdescendants():
            if _tag(el) in ("table", "p", "div", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "img"):
                return False
    return any(True for _ in table.iter("td", "th"))


def _rows(table: Any) -> list[Any]:
    rows = []
    for el in table:
        tag = _tag(el)
        if tag == "tr":
            rows.append(el)
        elif tag in ("thead", "tbody", "tfoot"):
            rows.extend(r for r in el if _tag(r) == "tr")
    return rows


def _table(table: Any, style: _Style) -> list[dict[str, Any]]:
    rows = _rows(table)
    cells = [[c for c in row if _tag(c) in ("td", "th")] for row in rows]
    cells = [r for r in cells if r]
    if not cells:
        return []
    width = min(max(len(r) for r in cells), 100)
    header = all(_tag(c) == "th" for c in cells[0]) or _tag(rows[0].getparent()) == "thead"
    out_rows = []
    for r in cells:
        texts = [_rich_text(_clean_lines(_inline(c, style)))[:MAX_RUNS] for c in r[:width]]
        texts += [[] for _ in range(width - len(texts))]
        out_rows.append({"object": "block", "type": "table_row", "table_row": {"cells": texts}})
    return [{"object": "block", "type": "table", "table": {"table_width": width, "has_column_header": header,
                                                           "has_row_header": False, "children": out_rows}}]


def html_to_blocks(html: str) -> list[dict[str, Any]]:
    """Blocks for an HTML body (never raises: unusable markup gives its text, or nothing)."""
    if not html or not html.strip():
        return []
    html, clipped = clip(html, NOTION_HTML_CHARS)
    notice = paragraph(TRUNCATED_NOTICE) if clipped else []
    try:
        doc = lxml_html.document_fromstring(cap_attributes(html).encode("utf-8", "replace"))
    except (etree.ParserError, ValueError):
        return text_to_blocks(_ANY_TAG.sub(" ", html)) + notice
    body = doc.find("body")
    root = body if body is not None else doc
    out: list[dict[str, Any]] = []
    _Walker().container(root, out, _Style())
    return out + notice


def text_to_blocks(text: str) -> list[dict[str, Any]]:
    """Blocks for a plain-text body: a paragraph per blank-line-separated part, line breaks kept."""
    text, clipped = clip(text or "", NOTION_HTML_CHARS)
    out: list[dict[str, Any]] = []
    for part in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").replace("\r", "\n")):
        part = part.strip("\n")
        if part.strip():
            out.extend(_text_blocks("paragraph", _rich_text([(part, _Style())])))
    return out + (paragraph(TRUNCATED_NOTICE) if clipped else [])


def file_block(upload_id: str, filename: str) -> dict[str, Any]:
    """A file block pointing at a File Upload (attached once the block exists)."""
    return {"object": "block", "type": "file",
            "file": {"type": "file_upload", "file_upload": {"id": upload_id}, "name": filename[:900]}}


def attachment_note(filename: str, size: int, reason: str, url: str | None = None) -> list[dict[str, Any]]:
    """A paragraph standing in for an attachment that could not be uploaded."""
    mb = f"{size / 1_048_576:.1f} MB"
    runs = [(f"📎 {filename} ({mb}) — {reason}", _Style(italic=True))]
    if url:
        runs.append((" ", _Style(italic=True)))
        runs.append(("open it in the CRM", _Style(italic=True, link=_safe_link(url))))
    return _text_blocks("paragraph", _rich_text(runs))


# -- requests ---------------------------------------------------------------------------------------------


def _children(block: dict[str, Any]) -> list[dict[str, Any]]:
    return list(block.get(block["type"], {}).get("children") or [])


def depth(block: dict[str, Any]) -> int:
    """Levels of nesting below ``block`` (0 for a block without children)."""
    kids = _children(block)
    return 0 if not kids else 1 + max(depth(k) for k in kids)


def element_count(block: dict[str, Any]) -> int:
    return 1 + sum(element_count(k) for k in _children(block))


def _fits(block: dict[str, Any], level: int = 0) -> bool:
    kids = _children(block)
    if not kids:
        return True
    if level >= MAX_DEPTH or len(kids) > MAX_CHILDREN:
        return False
    return all(_fits(k, level + 1) for k in kids)


def _with_children(block: dict[str, Any], kids: list[dict[str, Any]] | None) -> dict[str, Any]:
    body = {k: v for k, v in block[block["type"]].items() if k != "children"}
    if kids:
        body["children"] = kids
    return {**block, block["type"]: body}


def split_for_request(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The block as it can go in one request, and the children to append to it afterwards.

    A block whose whole subtree fits (≤ 2 levels, ≤ 100 children at each) goes as it is. Otherwise
    it goes alone and its children are appended to it once it exists (a table keeps its first 100
    rows, since Notion creates a table with its rows).
    """
    if _fits(block) and element_count(block) <= MAX_ELEMENTS and len(json.dumps(block)) <= MAX_PAYLOAD:
        return block, []
    kids = _children(block)
    if block["type"] == "table":
        return _with_children(block, kids[:MAX_CHILDREN]), kids[MAX_CHILDREN:]
    return _with_children(block, None), kids


def batches(blocks: list[dict[str, Any]]) -> list[list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Top-level blocks grouped into requests: ≤ 100 blocks, ≤ 1,000 elements, ≤ MAX_PAYLOAD bytes each."""
    out: list[list[tuple[dict[str, Any], list[dict[str, Any]]]]] = []
    current: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    elements = size = 0
    for block in blocks:
        sent, later = split_for_request(block)
        n, b = element_count(sent), len(json.dumps(sent))
        if current and (len(current) >= MAX_CHILDREN or elements + n > MAX_ELEMENTS or size + b > MAX_PAYLOAD):
            out.append(current)
            current, elements, size = [], 0, 0
        current.append((sent, later))
        elements += n
        size += b
    if current:
        out.append(current)
    return out
