"""Regular-expression substitutions over long strings, one slice at a time. Pure: no I/O.

A regular expression runs in C with the GIL held: one ``sub`` over megabytes with a match every few
characters holds it for most of a second, and every other thread of the process waits (the event
loop answering ``/healthz`` among them; issue 14). :func:`sub_in_slices` applies a substitution to
consecutive slices of about :data:`SLICE` characters, cut only where the ``cut`` function says no
match can straddle and the pattern sees the same context at a slice's start, so the result is the
one ``pattern.sub`` over the whole string would give, while threads can switch between slices.
Patterns whose matches cannot be cut (a comment, a ``<script>`` block) use :func:`sub_by_match`,
which takes one Python step per match instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SLICE", "cut_after_newline", "cut_after_non_space", "cut_anywhere", "cut_before_newline_run", "cut_before_non_space",
           "cut_before_tag", "sub_by_match", "sub_in_slices"]

#: Characters per slice: a slice costs a few milliseconds whatever the pattern.
SLICE = 65_536

#: ``cut(text, pos)``: the first offset at or after ``pos`` where a slice may end.
Cut = Callable[[str, int], int]

_SPACES = re.compile(r"\s*+")
_SPACE_CHARS = re.compile(r" *+")
_NEWLINES = re.compile(r"\n++")


def cut_anywhere(text: str, pos: int) -> int:
    """For patterns matching single characters."""
    return pos


def cut_before_non_space(text: str, pos: int) -> int:
    """For patterns matching runs of whitespace: past the run ``pos`` is in, if any."""
    return _SPACES.match(text, pos).end()  # type: ignore[union-attr]  # \s*+ always matches


def cut_after_newline(text: str, pos: int) -> int:
    """For patterns working within lines (``^``/``$`` with MULTILINE, nothing matching a newline):
    after the next newline (a line longer than a slice is one slice)."""
    at = text.find("\n", pos)
    return len(text) if at < 0 else at + 1


def cut_after_non_space(text: str, pos: int) -> int:
    """For patterns matching runs of spaces at a line's end: right after a character that is not a
    space, so no run is split and no run ends at a slice's end that does not end a line."""
    return min(len(text), _SPACE_CHARS.match(text, pos).end() + 1)  # type: ignore[union-attr]  # ' *+' always matches


def cut_before_newline_run(text: str, pos: int) -> int:
    """For patterns matching runs of newlines: before the first newline that starts a run (anywhere
    when no newline follows)."""
    at = text.find("\n", pos)
    if at < 0:
        return pos
    if at > 0 and text[at - 1] == "\n":  # inside a run: cut where it ends
        return _NEWLINES.match(text, at).end()  # type: ignore[union-attr]  # text[at] is a newline
    return at


def cut_before_tag(text: str, pos: int) -> int:
    """For patterns matching tags, which never contain "<"."""
    at = text.find("<", pos)
    return len(text) if at < 0 else at


def sub_in_slices(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str, cut: Cut) -> str:
    """``pattern.sub(repl, text)``, computed a slice at a time (slices end where ``cut`` says)."""
    if len(text) <= SLICE:
        return pattern.sub(repl, text)
    pieces: list[str] = []
    pos, size = 0, len(text)
    while pos < size:
        end = cut(text, min(pos + SLICE, size))
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
