"""Opaque, validated page cursors.

A cursor is URL-safe base64 of a short tagged string: ``k|<ISO time>|<id>`` for keyset pages
(newest first by time, then id) and ``o|<offset>`` for offset pages. Clients pass back what
``next_cursor`` gave them; anything else (a number, a foreign cursor, a time that does not
exist) is a 422 naming ``cursor``, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from web.errors import field_error
from web.params import Param

__all__ = ["CURSOR", "MAX_OFFSET", "keyset_cursor", "offset_cursor", "read_keyset", "read_offset"]

MAX_OFFSET = 100_000
CURSOR = Param.text("cursor", max_length=200, pattern=r"^[A-Za-z0-9_-]+$",
                    description="the next_cursor of the previous page (opaque)")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def _decode(raw: str, tag: str) -> list[str]:
    if len(raw) > 200 or not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
        raise _malformed()
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _malformed() from None
    parts = text.split("|")
    if parts[0] != tag:
        raise _malformed()
    return parts[1:]


def _malformed() -> Exception:
    return field_error("cursor", "malformed: pass back a next_cursor unchanged", kind="cursor_invalid",
                       text="cursor is malformed")


def keyset_cursor(at: datetime, row_id: str) -> str:
    """The cursor after a row at ``at`` (UTC; naive means UTC) with id ``row_id``."""
    when = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)
    return _encode(f"k|{when.isoformat()}|{row_id}")


def read_keyset(raw: str | None) -> tuple[datetime, str] | None:
    """(time, id) of a keyset cursor; None for no cursor; 422 for a malformed one."""
    if not raw:
        return None
    parts = _decode(raw, "k")
    if len(parts) != 2 or not _ID.fullmatch(parts[1]):
        raise _malformed()
    try:
        when = datetime.fromisoformat(parts[0])
        if when.tzinfo is None:
            raise ValueError("no offset")
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _malformed() from None
    return when, parts[1]


def offset_cursor(offset: int) -> str:
    return _encode(f"o|{offset}")


def read_offset(raw: str | None) -> int:
    """The offset of an offset cursor (0 for none); 422 for a malformed or too-large one."""
    if not raw:
        return 0
    parts = _decode(raw, "o")
    if len(parts) != 1 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 7:
        raise _malformed()
    offset = int(parts[0])
    if offset > MAX_OFFSET:
        raise field_error("cursor", f"pages beyond {MAX_OFFSET} items are not served; narrow the search",
                          kind="cursor_invalid")
    return offset
