"""Text a tenant gives that ends up on a protocol command line: hosts, usernames, passwords, tokens.

IMAP and SMTP are line protocols: a CR or LF inside a LOGIN argument ends the command and starts
another one, a NUL or \\x01 splits SASL fields (PLAIN, XOAUTH2). Such characters are never part
of a real credential, so they are refused outright (422 at the API, an error before connecting in
the clients) rather than escaped. Pure functions: a problem as a short sentence, or None.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_HOST_LENGTH", "Unsafe", "control_character", "host_problem", "unsafe_login"]

MAX_HOST_LENGTH = 253
_NAMES = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\t": "TAB", "\x7f": "DEL"}
_HOST_PUNCTUATION = frozenset(".-_:")


def control_character(text: str) -> str | None:
    """The name of the first control character in text (CR, LF, NUL, U+0001, ...), or None.

    Control characters are Unicode category Cc (C0, DEL and C1) plus the line and paragraph
    separators, which some parsers also take for line ends.
    """
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return _NAMES.get(ch, f"U+{ord(ch):04X}")
    return None


def host_problem(host: str) -> str | None:
    """Why host is not a host name or IP address we would look up, or None when it is fine.

    Names (IDN allowed), dotted IPv4 in any spelling and bare IPv6 pass; control characters,
    spaces, URL pieces (``/``, ``@``, ``[``...), zone ids (``%eth0``) and over-long names do not.
    """
    if not host:
        return "must not be empty"
    bad = control_character(host)
    if bad is not None:
        return f"must not contain control characters ({bad})"
    if len(host) > MAX_HOST_LENGTH:
        return f"must be at most {MAX_HOST_LENGTH} characters"
    if any(ch.isspace() for ch in host):
        return "must not contain spaces"
    if not all(ch.isalnum() or ch in _HOST_PUNCTUATION for ch in host):
        return "must be a host name or an IP address (letters, digits, '.', '-', '_', ':' only)"
    if ":" not in host:
        try:
            host.encode("idna")
        except UnicodeError:
            return "is not a valid host name (a label is empty or longer than 63 characters)"
    return None


@dataclass(frozen=True, slots=True)
class Unsafe:
    """Why a login must not be attempted: ``kind`` is the connection-failure kind the client reports."""

    kind: Literal["connect", "auth"]
    message: str


def unsafe_login(host: str, username: str | None, password: str | None, oauth_token: str | None) -> Unsafe | None:
    """A host or credential that could break the command line (checked before any connection), or None."""
    problem = host_problem(host)
    if problem is not None:
        return Unsafe("connect", f"the host {problem}")
    for what, value in (("username", username), ("password", password), ("OAuth token", oauth_token)):
        bad = control_character(value or "")
        if bad is not None:
            return Unsafe("auth", f"the {what} contains a control character ({bad}); nothing was sent")
    return None
