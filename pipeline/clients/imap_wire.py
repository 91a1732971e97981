"""Parse the raw response data imaplib hands back (FETCH, LIST, STATUS, SEARCH) and build arguments.

imaplib returns each untagged response as zero or more ``(text ending in {n}, literal)`` tuples
followed by one bytes item with the rest of the line. ``parse_responses`` turns that into nested
Python values: atoms are ``str``, quoted strings and literals are ``bytes``, NIL is ``None`` and
parenthesised lists are ``list``. Nothing here talks to a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import Final, TypeAlias

__all__ = [
    "ParseError",
    "Value",
    "appenduid",
    "check_header_name",
    "fetch_items",
    "flag_list",
    "imap_date",
    "parse_internaldate",
    "parse_responses",
    "parse_search",
    "quote",
    "response_code",
    "uid_set",
]

Value: TypeAlias = str | bytes | None | list["Value"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_LITERAL_TAIL = re.compile(rb"\{(\d+)\+?\}\s*$")
_ATOM_STOP = frozenset(b' ()"\r\n')
_INTERNALDATE = re.compile(r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*$")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
_CODE = re.compile(r"^\s*\[([A-Za-z0-9-]+)")
_FLAG_FORBIDDEN = frozenset(' ()"{}\r\n%*]')


class ParseError(ValueError):
    """Response data that does not follow IMAP syntax."""


class _Literal(bytes):
    """Marks a literal spliced into the token stream (so it is never read as an atom)."""


class _Paren(Enum):
    """A parenthesis in the token stream."""

    OPEN = "("
    CLOSE = ")"


_OPEN: Final = _Paren.OPEN
_CLOSE: Final = _Paren.CLOSE
_Token: TypeAlias = str | bytes | None | _Paren


def parse_responses(data: Iterable[object]) -> list[list[Value]]:
    """Split imaplib response data into responses and parse each into a list of values."""
    responses: list[list[Value]] = []
    tokens: list[_Token] = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            text, literal = item[0], item[1]
            match = _LITERAL_TAIL.search(text)
            if match is None:
                raise ParseError(f"literal without a {{n}} marker: {text[-60:]!r}")
            tokens.extend(_tokenize(text[: match.start()]))
            tokens.append(_Literal(literal))
            continue
        if not isinstance(item, bytes):
            raise ParseError(f"unexpected response item {type(item).__name__}")
        tokens.extend(_tokenize(item))
        responses.append(_build(tokens))
        tokens = []
    if tokens:
        responses.append(_build(tokens))
    return responses


def _tokenize(text: bytes) -> Iterator[_Token]:
    """Yield _OPEN/_CLOSE, atoms (str), quoted strings (bytes) and None for NIL."""
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char in b" \r\n":
            pos += 1
        elif char in b"()":
            yield _OPEN if char == ord("(") else _CLOSE
            pos += 1
        elif char == ord('"'):
            value, pos = _quoted(text, pos)
            yield value
        else:
            atom, pos = _atom(text, pos)
            yield None if atom.upper() == "NIL" else atom


def _quoted(text: bytes, pos: int) -> tuple[bytes, int]:
    """Read a quoted string starting at pos (the opening quote)."""
    out = bytearray()
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == ord("\\") and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == ord('"'):
            return bytes(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise ParseError(f"unterminated quoted string: {text[-60:]!r}")


def _atom(text: bytes, pos: int) -> tuple[str, int]:
    """Read an atom; a [...] section (e.g. BODY[HEADER.FIELDS (A B)]) may hold spaces and parens."""
    start, depth = pos, 0
    while pos < len(text):
        char = text[pos]
        if char == ord("["):
            depth += 1
        elif char == ord("]"):
            depth = max(depth - 1, 0)
        elif depth == 0 and char in _ATOM_STOP:
            break
        pos += 1
    return text[start:pos].decode("utf-8", "replace"), pos


def _build(tokens: Sequence[_Token]) -> list[Value]:
    """Nest tokens into lists by parentheses."""
    stack: list[list[Value]] = [[]]
    for token in tokens:
        if token is _OPEN:
            stack.append([])
        elif token is _CLOSE:
            if len(stack) == 1:
                raise ParseError("unbalanced ')'")
            inner = stack.pop()
            stack[-1].append(inner)
        elif isinstance(token, _Literal):
            stack[-1].append(bytes(token))
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise ParseError("unbalanced '('")
    return stack[0]


def fetch_items(response: Sequence[Value]) -> dict[str, Value] | None:
    """Turn a parsed FETCH response ``[seq, [KEY, value, ...]]`` into {KEY: value}; None if not one."""
    if len(response) != 2 or not isinstance(response[0], str) or not response[0].isdigit():
        return None
    items = response[1]
    if not isinstance(items, list) or len(items) % 2:
        return None
    result: dict[str, Value] = {}
    for key, value in zip(items[0::2], items[1::2], strict=True):
        if not isinstance(key, str):
            return None
        result[key.upper()] = value
    return result


def parse_internaldate(value: str | bytes) -> datetime:
    """Parse an INTERNALDATE like "14-Nov-2023 22:13:20 +0000" into an aware datetime."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    match = _INTERNALDATE.match(text)
    if match is None:
        raise ParseError(f"bad INTERNALDATE {text!r}")
    day, month, year, hour, minute, second, sign, off_h, off_m = match.groups()
    try:
        month_no = _MONTHS.index(month.capitalize()) + 1
    except ValueError as exc:
        raise ParseError(f"bad month in INTERNALDATE {text!r}") from exc
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
    return datetime(int(year), month_no, int(day), int(hour), int(minute), int(second), tzinfo=timezone(offset))


def parse_search(data: Iterable[object]) -> list[int]:
    """Collect the numbers of (UID) SEARCH responses, ascending and without duplicates."""
    numbers: set[int] = set()
    for item in data:
        if isinstance(item, bytes):
            numbers.update(int(word) for word in item.split() if word.isdigit())
    return sorted(numbers)


def appenduid(data: Iterable[object]) -> tuple[int, int] | None:
    """Extract (uidvalidity, uid) from an APPEND response's [APPENDUID v u] code."""
    for item in data:
        if isinstance(item, bytes):
            match = _APPENDUID.search(item)
            if match:
                return int(match.group(1)), int(match.group(2))
    return None


def response_code(text: str) -> str | None:
    """Return the response code of a server text like "[AUTHENTICATIONFAILED] ...", upper-cased."""
    match = _CODE.match(text)
    return match.group(1).upper() if match else None


def uid_set(uids: Iterable[int]) -> str:
    """Render UIDs as a compact IMAP sequence set, e.g. [1, 2, 3, 7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def imap_date(day: date) -> str:
    """Format a date for SEARCH SINCE/BEFORE, e.g. "1-Feb-2024" (locale independent)."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def quote(text: str) -> str:
    """Quote an ASCII string for IMAP; raise ValueError if it needs a literal instead."""
    if not text.isascii() or any(ch in text for ch in "\r\n\0"):
        raise ValueError("text needs a literal")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flag_list(flags: Sequence[str]) -> str:
    """Render flags as "(\\Seen $Label)", rejecting anything that could break the command or \\Recent."""
    for flag in flags:
        if not flag or not flag.isascii() or any(ch in flag for ch in _FLAG_FORBIDDEN):
            raise ValueError(f"bad flag {flag!r}")
        if flag.lower() == "\\recent":
            raise ValueError("\\Recent cannot be set by a client")
    return "(" + " ".join(flags) + ")"


def check_header_name(name: str) -> None:
    """Raise ValueError unless name is a valid header field name (printable ASCII, no colon)."""
    if not name or not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
        raise ValueError(f"bad header name {name!r}")
