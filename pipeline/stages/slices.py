"""Regular-expression substitutions over long strings, one slice at a time. Pure: no I/O.

A regular expression runs in C with the GIL held: one ``sub`` over megabytes with a match every few
characters holds it for most of a second, and every other thread of the process waits (the event
loop answering ``/healthz`` among them; issue 14). :func:`sub_in_slices` applies a substitution to
consecutive slices of about :data:`SLICE` characters, cut only where ``cut`` guarantees that no match
straddles the cut and that the pattern sees the same context at a slice's start, so the result is
the one ``pattern.sub`` over the whole string would give, while threads can switch between slices.
Patterns whose matches cannot be cut (a comment, a ``<script>`` block) use :func:`sub_by_match`,
which takes one Python step per match instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["CUT_AFTER_NEWLINE", "CUT_ANYWHERE", "CUT_BEFORE_NEWLINE_RUN", "CUT_BEFORE_NON_SPACE", "CUT_BEFORE_TAG",
           "SLICE", "sub_by_match", "sub_in_slices"]

#: Characters per slice: a slice costs a few milliseconds whatever the pattern.
SLICE = 65_536
#: For patterns matching single characters.
CUT_ANYWHERE: re.Pattern[str] | None = None
#: For patterns matching runs of whitespace (a run is never split).
CUT_BEFORE_NON_SPACE = re.compile(r"(?=\S)")
#: For patterns that work within lines (``^``/``$`` with MULTILINE, nothing matching a newline).
CUT_AFTER_NEWLINE = re.compile(r"\n")
#: For patterns matching runs of newlines (a run is never split).
CUT_BEFORE_NEWLINE_RUN = re.compile(r"(?<!\n)(?=\n)")
#: For patterns matching tags, which never contain "<".
CUT_BEFORE_TAG = re.compile(r"(?=<)")


def sub_in_slices(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str,
                  cut: re.Pattern[str] | None) -> str:
    """``pattern.sub(repl, text)``, computed a slice at a time (slices end where ``cut`` matches)."""
    if len(text) <= SLICE:
        return pattern.sub(repl, text)
    pieces: list[str] = []
    pos, size = 0, len(text)
    while pos < size:
        end = pos + SLICE
        if end >= size:
            end = size
        elif cut is not None:
            found = cut.search(text, end)
            end = found.end() if found is not None else size
        pieces.append(pattern.sub(repl, text[pos:end]))
        pos = end
    return "".join(pieces)


def sub_by_match(pattern: re.Pattern[str], repl: str, text: str) -> str:
    """``pattern.sub(repl, text)`` (``repl`` taken literally) with one Python step per match, so
    threads can switch between matches however many there are."""
    pieces: list[str] = []
    pos = 0
    for match in pattern.finditer(text):
        pieces.append(text[pos:match.start()])
        pieces.append(repl)
        pos = match.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)
