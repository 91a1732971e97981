"""Untrusted HTML and lxml: a linear pre-pass before parsing, a linear removal after. Pure: no I/O.

libxml2 checks each new attribute of a tag against all the earlier ones, and lxml looks every
attribute value up by name, so a tag with n attributes costs n² (100,000 attributes on one ``<a>``:
minutes, with the GIL held). :func:`cap_attributes` keeps the first
:data:`~pipeline.stages.budgets.MAX_ATTRIBUTES` attributes of a start tag and drops the rest, in one
left-to-right pass of possessive regular expressions (nothing is ever re-scanned), a few thousand
tokens per call. Markup without such a tag comes back unchanged (the same object).

lxml's ``drop_tree`` appends the dropped element's tail to the text before it, copying that text
each time: dropping the 200,000 ``<script>``s of one parent is quadratic. :func:`drop_elements`
removes them with one pass over each parent's children.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from lxml import etree

from pipeline.stages.budgets import MAX_ATTRIBUTES

__all__ = ["cap_attributes", "drop_elements"]

_SPACE = r"\t\n\f\r "
# One attribute with the separator before it: name, then optionally = and a quoted or bare value.
# HTML lets a tag or attribute name contain "<"; here "<" ends a name and separates attributes, so
# an attribute "x<b" counts twice, which only makes the cap stricter.
_ATTR = (rf"[{_SPACE}/<]++[^{_SPACE}/>=<]++"
         rf"""(?:[{_SPACE}]*+=[{_SPACE}]*+(?:"[^"]*+"|'[^']*+'|[^{_SPACE}>]*+))?+""")
_TAG_START = rf"<[A-Za-z][^{_SPACE}/><]*+"
# Text, a "<" that starts no tag, or a start tag with at most MAX_ATTRIBUTES attributes: consumed
# left to right, each character once (a pattern searched for at every "<" rescans what an earlier
# tag already covered: "<div" x 40,000 was quadratic), at most _TOKENS tokens per call so that no
# call holds the GIL for long. It stops at a start tag with more attributes than that.
_TOKENS = 4096
_PLAIN = re.compile(
    rf"(?:[^<]++|<(?![A-Za-z])|{_TAG_START}(?:{_ATTR}){{0,{MAX_ATTRIBUTES}}}+(?!{_ATTR})){{0,{_TOKENS}}}+")
_CROWDED_TAG = re.compile(rf"({_TAG_START}(?:{_ATTR}){{{MAX_ATTRIBUTES}}})(?:{_ATTR})++")


def cap_attributes(markup: str) -> str:
    """``markup`` with every start tag cut to its first ``MAX_ATTRIBUTES`` attributes."""
    pieces: list[str] = []
    pos, done, size = 0, 0, len(markup)
    while pos < size:
        stop = _PLAIN.match(markup, pos).end()  # type: ignore[union-attr]  # can match empty
        if stop > pos:
            pos = stop
            continue
        crowded = _CROWDED_TAG.match(markup, pos)  # the only token _PLAIN does not take
        if crowded is None:  # unreachable; stepping over the "<" keeps the loop finite regardless
            pos += 1
            continue
        pieces.append(markup[done:pos])
        pieces.append(crowded.group(1))
        pos = done = crowded.end()
    if not pieces:
        return markup
    pieces.append(markup[done:])
    return "".join(pieces)


def drop_elements(root: etree._Element, tags: Collection[str]) -> None:
    """Remove every element under ``root`` whose tag is one of ``tags`` (lowercase, as lxml's HTML
    parser names them), with its content; its tail text stays where it was, joined to the text
    before it, as lxml's ``drop_tree`` would leave it."""
    names = frozenset(tags)
    parents: dict[etree._Element, None] = {}
    for el in root.iter(*names):
        parent = el.getparent()
        if parent is not None:
            parents[parent] = None
    for parent in parents:
        _drop_children(parent, names)


def _drop_children(parent: etree._Element, names: frozenset[str]) -> None:
    """Remove ``parent``'s children named in ``names``; each run of their tails is written once (and
    text is only written where a tail was joined to it, as ``drop_tree`` does)."""
    pieces = [parent.text or ""]
    target: etree._Element | None = None
    for child in list(parent):
        if child.tag in names:
            if child.tail:
                pieces.append(child.tail)
            parent.remove(child)  # its tail goes with it
            continue
        if len(pieces) > 1:
            _set_text(parent, target, "".join(pieces))
        target, pieces = child, [child.tail or ""]
    if len(pieces) > 1:
        _set_text(parent, target, "".join(pieces))


def _set_text(parent: etree._Element, target: etree._Element | None, value: str) -> None:
    if target is None:
        parent.text = value or None
    else:
        target.tail = value or None
