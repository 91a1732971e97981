"""Merge fields: ``{{field}}`` and ``{{field|fallback text}}`` (pure; no I/O).

Grammar (../shared/notes/nextcrm-templates-notion.md §2.3): a tag is ``{{`` ws? NAME (``|``
FALLBACK)? ws? ``}}``; NAME is ``[A-Za-z_][A-Za-z0-9_.]*``; FALLBACK is any text up to ``}}``,
trimmed, spaces allowed. An unclosed ``{{`` or an empty or malformed name is a
:class:`MergeSyntaxError` with its offset. A value that is missing, None or blank takes the
fallback (or "" when there is none, which :func:`render` reports in ``missing``).

Escaping by context: in HTML every value and fallback is HTML-escaped (no raw form exists), and a
tag inside an ``href``/``src`` attribute may only produce an http, https or mailto URL (anything
else renders as "" and is reported in ``unsafe``); in subjects and plain text CR/LF and other
control characters are removed, so record data can never inject markup or headers.

Cost is linear in the text (issue 14): a text holds at most :data:`MAX_TAGS` tags (more is a
:class:`MergeSyntaxError`), and whether a tag sits in a URL attribute is decided from the 2,000
characters before it with ``rfind`` and one anchored match, not a search that rescans the window
from every ``href``.
"""

from __future__ import annotations

import difflib
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FIELDS", "MAX_TAGS", "MergeSyntaxError", "Rendered", "Tag", "parse", "render", "render_parts", "suggest", "unknown_fields"]

#: The merge fields of API.md.
FIELDS = ("firstName", "lastName", "email", "company", "position", "accountName", "industry", "website", "annualRevenue",
          "dealAmount", "closeDate", "salesStage", "senderName", "senderEmail", "senderPhone")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
#: Tags per text; a template has a handful, so more is refused rather than rendered.
MAX_TAGS = 10_000
_URL_WINDOW = 2000  # characters before a tag searched for the attribute it may sit in
_ATTR_OPEN = re.compile(r"(?:href|src)\s*=\s*", re.IGNORECASE)  # an href/src attribute up to its value
_ATTR_OPEN_END = re.compile(r"(?:href|src)\s*=\s*\Z", re.IGNORECASE)  # ... ending right there
_SPECIALS = "\"'<>"  # characters an attribute value in progress cannot hold (its quote aside)
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


class MergeSyntaxError(ValueError):
    """A malformed tag: ``position`` is its offset in the text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class Tag:
    start: int
    end: int
    name: str
    fallback: str | None


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    missing: tuple[str, ...]  # fields with no value and no fallback (rendered as "")
    unsafe: tuple[str, ...] = ()  # fields whose value was refused inside a URL attribute


def parse(text: str) -> list[Tag]:
    """Every tag of ``text`` in order; raises :class:`MergeSyntaxError`."""
    tags: list[Tag] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            return tags
        end = text.find("}}", start + 2)
        if end < 0:
            raise MergeSyntaxError("unclosed '{{'", start)
        inner = text[start + 2 : end]
        name, bar, fallback = inner.partition("|")
        name = name.strip()
        if not name:
            raise MergeSyntaxError("empty field name", start)
        if not _NAME.match(name):
            raise MergeSyntaxError(f"invalid field name {name!r}", start)
        if len(tags) == MAX_TAGS:
            raise MergeSyntaxError(f"more than {MAX_TAGS} merge fields", start)
        tags.append(Tag(start, end + 2, name, fallback.strip() if bar else None))
        pos = end + 2


def unknown_fields(texts: list[str], known: tuple[str, ...] = FIELDS) -> list[str]:
    """Field names used in ``texts`` that are not ``known`` (raises on a syntax error)."""
    seen: dict[str, None] = {}
    for text in texts:
        for tag in parse(text):
            if tag.name not in known:
                seen.setdefault(tag.name, None)
    return list(seen)


def suggest(name: str, known: tuple[str, ...] = FIELDS) -> list[str]:
    """Close matches for a misspelt field name ("fistName" → ["firstName"])."""
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def render(text: str, values: Mapping[str, object], *, mode: str) -> Rendered:
    """Fill ``text``'s tags from ``values``; ``mode`` is "html", "text" or "subject"."""
    if mode not in ("html", "text", "subject"):
        raise ValueError("mode must be html, text or subject")
    pieces: list[str] = []
    missing: dict[str, None] = {}
    unsafe: dict[str, None] = {}
    cursor = 0
    for tag in parse(text):
        pieces.append(text[cursor : tag.start])
        cursor = tag.end
        value = values.get(tag.name)
        out = tag.fallback if _blank(value) else str(value)
        if out is None:
            missing.setdefault(tag.name, None)
            out = ""
        if mode == "html":
            value_so_far = _url_value_before(text, tag.start)
            in_url = value_so_far is not None
            at_start = value_so_far is not None and not value_so_far.strip()  # the value would choose the scheme
            if at_start and not _blank(value) and not str(value).strip().lower().startswith(_SAFE_SCHEMES):
                unsafe.setdefault(tag.name, None)
                out = ""
            pieces.append(html.escape(_CONTROL.sub(" ", out).strip() if in_url else out, quote=True))
        else:
            pieces.append(_CONTROL.sub(" ", out))
    pieces.append(text[cursor:])
    return Rendered("".join(pieces), tuple(missing), tuple(unsafe))


def _url_value_before(text: str, at: int) -> str | None:
    """The part of an ``href``/``src`` value written before offset ``at`` when ``at`` lies in one
    (looking back at most 2,000 characters), else None.

    The value runs from its opening quote (or the ``=``) to ``at`` without any of ``"'<>``, so it
    starts right after the last of those characters: either that character is the value's quote,
    preceded by ``href=``, or the whole attribute follows it.
    """
    start = max(0, at - _URL_WINDOW)
    cut = max(text.rfind(ch, start, at) for ch in _SPECIALS)
    if cut >= 0 and text[cut] in "\"'" and _ATTR_OPEN_END.search(text, start, cut):
        return text[cut + 1 : at]
    opened = _ATTR_OPEN.search(text, max(start, cut + 1), at)
    return None if opened is None else text[opened.end() : at]


def render_parts(parts: Mapping[str, tuple[str | None, str]], values: Mapping[str, object]
                 ) -> tuple[dict[str, str | None], tuple[str, ...], tuple[str, ...]]:
    """Render several parts (name → (text or None, mode)): the texts, and the missing and unsafe fields of all."""
    out: dict[str, str | None] = {}
    missing: dict[str, None] = {}
    unsafe: dict[str, None] = {}
    for name, (text, mode) in parts.items():
        if text is None:
            out[name] = None
            continue
        done = render(text, values, mode=mode)
        out[name] = done.text
        missing.update(dict.fromkeys(done.missing))
        unsafe.update(dict.fromkeys(done.unsafe))
    return out, tuple(missing), tuple(unsafe)
