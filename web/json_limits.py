"""Reading a hostile JSON request body: UTF-8 only, bounded depth and size, finite bounded numbers.

``json.loads`` alone turns hostile input into 500s and memory: deep nesting raises
``RecursionError``, a 5,000-digit integer raises ``ValueError`` (or, below Python's 4,300-digit
guard, becomes an integer no column can hold), ``NaN``/``Infinity``/``1e999`` become floats no
field should accept, and a body of millions of tiny containers costs far more memory than its
size. :func:`load_json` checks the structure first with C-speed passes over the bytes (strings
removed, only brackets and commas kept), then parses with hooks that turn bad numbers into
markers, and reports every problem as a 422 naming the field (``details.errors[].field``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from web.errors import ApiError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "MAX_ITEMS", "load_json"]

MAX_DEPTH = 32  # nested objects/arrays; request bodies use 3 or 4
MAX_ITEMS = 100_000  # containers plus array elements and object members
MAX_INT_DIGITS = 19  # and within the signed 64-bit range every integer column holds
MAX_NUMBER_CHARS = 100  # a float token longer than this is not a number anyone means
_INT64 = 2**63

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # exact for every valid JSON string
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{}")
_PAIR = re.compile(rb"\[\]|\{\}")


class _Refused:
    """What the parse hooks put where a number may not stand; reported with its path afterwards."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message


def _int(token: str) -> int | _Refused:
    digits = token.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        return _Refused("number_too_large", f"integer with {len(digits)} digits; at most {MAX_INT_DIGITS}")
    value = int(token)
    if not -_INT64 <= value < _INT64:
        return _Refused("number_too_large", "integer outside the signed 64-bit range")
    return value


def _float(token: str) -> float | _Refused:
    if len(token) > MAX_NUMBER_CHARS:
        return _Refused("number_too_large", f"number longer than {MAX_NUMBER_CHARS} characters")
    value = float(token)
    if not math.isfinite(value):
        return _Refused("number_not_finite", "number too large to be finite")
    return value


def _constant(token: str) -> _Refused:
    return _Refused("number_not_finite", f"{token} is not a JSON number")


def _structure_error(raw: bytes) -> ApiError | None:
    """Too deep or too many items, judged on the bytes without parsing (never recursion)."""
    skeleton = _STRING.sub(b"", raw)
    items = skeleton.count(b",")
    skeleton = skeleton.translate(None, _NOT_STRUCTURE)
    if items + len(skeleton) // 2 > MAX_ITEMS:
        return ApiError(422, "json_too_large", f"JSON body has more than {MAX_ITEMS} items",
                        {"max_items": MAX_ITEMS})
    for _ in range(MAX_DEPTH):  # each pass removes the innermost level of every nest
        if not skeleton:
            return None
        skeleton, removed = _PAIR.subn(b"", skeleton)
        if not removed:
            return None  # unbalanced: the parser names the syntax error
    if _PAIR.search(skeleton):
        return ApiError(422, "json_too_deep", f"JSON body is nested deeper than {MAX_DEPTH} levels",
                        {"max_depth": MAX_DEPTH})
    return None


def _field(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(body)"


def _problems(data: Any) -> list[dict[str, str]]:
    """Refused numbers and NUL characters, each with the path of its field (iterative walk)."""
    found: list[dict[str, str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack and len(found) < 20:
        path, value = stack.pop()
        if isinstance(value, _Refused):
            found.append({"field": _field(path), "message": value.message, "type": value.kind})
        elif isinstance(value, str):
            if "\x00" in value:
                found.append({"field": _field(path), "message": "NUL characters are not allowed", "type": "string_nul"})
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found.append({"field": _field(path), "message": "NUL characters are not allowed in keys",
                                  "type": "string_nul"})
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in enumerate(value))
    found.sort(key=lambda p: p["field"])
    return found


def load_json(raw: bytes) -> Any:
    """The decoded body, or a 422 ``ApiError`` naming the problem (and the field where there is one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_json", f"body is not UTF-8 (byte {exc.start})") from None
    error = _structure_error(raw)
    if error is not None:
        raise error
    try:
        data = json.loads(text or "null", parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_json", f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # unreachable after the depth pass; kept so it can never be a 500
        raise ApiError(422, "json_too_deep", f"JSON body is nested deeper than {MAX_DEPTH} levels",
                       {"max_depth": MAX_DEPTH}) from None
    problems = _problems(data)
    if problems:
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        raise ApiError(422, "validation_error", message, {"errors": problems})
    return data
