"""A MIME message serialized to bytes without long GIL holds. Pure: no I/O.

The stdlib generator splits each part's whole payload into lines with one regular expression, and
searches the whole content of a multipart for a line that would collide with its boundary: for a
5 MB body each is one C call of tens of milliseconds with the GIL held, during which no other thread
of the process runs (issue 14). :func:`as_bytes` returns exactly what ``msg.as_bytes()`` returns,
with both done a slice at a time (slices end right after a newline, so no line and no ``\\r\\n`` is
ever split), and each slice's lines written with one call instead of two per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.generator import NLCRE, BytesGenerator  # type: ignore[attr-defined]  # the stdlib's own line splitter; typeshed omits it
from email.message import Message
from io import BytesIO
from typing import AnyStr, ClassVar

from pipeline.stages.slices import SLICE

__all__ = ["as_bytes"]


def _line_slices(text: AnyStr) -> list[tuple[int, int]]:
    """(start, end) of consecutive slices of about SLICE characters, each ending after a newline."""
    newline = b"\n" if isinstance(text, bytes) else "\n"
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(text):
        cut = text.find(newline, pos + SLICE)
        end = len(text) if cut < 0 else cut + 1
        spans.append((pos, end))
        pos = end
    return spans


class _SlicedGenerator(BytesGenerator):
    """``BytesGenerator`` whose two whole-payload regular-expression passes run a slice at a time."""

    # The stdlib generator's internals this class uses, which typeshed does not declare.
    _NL: str  # set by flatten()
    _compile_re: ClassVar[Callable[[str, int], re.Pattern[bytes]]]  # BytesGenerator compiles to a bytes pattern

    def _write_lines(self, lines: str) -> None:
        # The stdlib writes line, separator, line… one call each (two per line of a 5 MB body);
        # joining a slice's lines with the separator writes the same bytes in one call.
        if len(lines) <= SLICE:
            self.write(self._NL.join(NLCRE.split(lines)))
            return
        for start, end in _line_slices(lines):
            self.write(self._NL.join(NLCRE.split(lines[start:end])))

    @classmethod
    def _make_boundary(cls, text: bytes | None = None) -> str:  # BytesGenerator hands it the bytes of the parts
        if text is None or len(text) <= SLICE:
            return str(super()._make_boundary(text))  # type: ignore[misc]  # Generator._make_boundary: stdlib, not in typeshed
        boundary = str(super()._make_boundary())  # type: ignore[misc]  # as above
        candidate, counter = boundary, 0
        while True:  # as the stdlib does: a boundary no line of the content equals
            line = cls._compile_re("^--" + re.escape(candidate) + "(--)?$", re.MULTILINE)
            if not any(line.search(text, start, end) for start, end in _line_slices(text)):
                return candidate
            candidate = f"{boundary}.{counter}"
            counter += 1


def as_bytes(msg: Message) -> bytes:
    """``msg.as_bytes()`` (the message's own policy, no Unix From line), computed slice by slice."""
    out = BytesIO()
    _SlicedGenerator(out, mangle_from_=False, policy=msg.policy).flatten(msg, unixfrom=False)
    return out.getvalue()
