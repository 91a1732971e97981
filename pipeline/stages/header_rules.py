"""What may go into an outgoing message's headers: addresses (RFC 5321/5322 with IDNA domains),
Message-IDs and header values without line breaks. Pure; a refusal is a :class:`ComposeError`
naming the field, which the API answers with 422."""

from __future__ import annotations

import re
from email.headerregistry import Address

import idna

__all__ = ["MAX_ADDRESS", "ComposeError", "addr_spec", "check_header_value", "display_name", "msgid", "parse_address", "validate_address"]

MAX_ADDRESS = 254
_MAX_LOCAL = 64
_MAX_DOMAIN = 255
_MAX_MSGID = 250
_LINE_BREAKS = frozenset("\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines() boundaries + NUL
_ATEXT_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ANGLE_FORM = re.compile(r"^(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>$", re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MSGID_TEXT = re.compile(r"^[!-;=?-~]+$")  # printable ASCII without space, '<' and '>'


class ComposeError(ValueError):
    """Input that cannot become a safe message (the API turns it into 422); ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def check_header_value(field: str, value: str) -> str:
    """``value`` without surrounding whitespace; any line break or NUL is refused as header injection."""
    if not isinstance(value, str):
        raise ComposeError(field, f"must be a string, not {type(value).__name__}")
    if any(ch in _LINE_BREAKS for ch in value):
        raise ComposeError(field, "line break or NUL in a header value (header injection)")
    return value.strip()


def display_name(field: str, value: str | None) -> str:
    """A checked display name with internal whitespace collapsed; control characters refused."""
    if value is None:
        return ""
    value = check_header_value(field, value)
    if _CONTROL.search(value):
        raise ComposeError(field, "control character in display name")
    return " ".join(value.split())


def _ascii_domain(field: str, domain: str) -> str:
    """``domain`` lowercased and, when internationalized, converted to punycode (IDNA 2008, UTS 46)."""
    if not domain:
        raise ComposeError(field, "missing domain after @")
    if domain.isascii():
        ascii_domain = domain.lower()
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ComposeError(field, f"invalid internationalized domain ({exc})") from None
    if len(ascii_domain) > _MAX_DOMAIN:
        raise ComposeError(field, f"domain longer than {_MAX_DOMAIN} characters")
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise ComposeError(field, "domain needs at least one dot")
    if not all(_LABEL.match(label) for label in labels):
        raise ComposeError(field, f"invalid domain {ascii_domain!r}")
    if labels[-1].isdigit():
        raise ComposeError(field, "top-level domain cannot be numeric")
    return ascii_domain


def addr_spec(field: str, value: str) -> str:
    """A checked ``local@domain`` with the domain in ASCII; RFC 5321 length limits enforced."""
    if any(ch.isspace() for ch in value):
        raise ComposeError(field, "spaces in the address")
    if "@" not in value:
        raise ComposeError(field, "missing @ in the address")
    if value.count("@") > 1:
        raise ComposeError(field, "more than one @ in the address")
    local, _, domain = value.partition("@")
    if not local:
        raise ComposeError(field, "missing local part before @")
    if not local.isascii():
        raise ComposeError(field, "non-ASCII local part (SMTPUTF8) is not supported")
    if not _ATEXT_LOCAL.match(local):
        raise ComposeError(field, f"invalid local part {local!r}")
    if len(local) > _MAX_LOCAL:
        raise ComposeError(field, f"local part longer than {_MAX_LOCAL} characters")
    address = f"{local}@{_ascii_domain(field, domain)}"
    if len(address) > MAX_ADDRESS:
        raise ComposeError(field, f"address longer than {MAX_ADDRESS} characters")
    return address


def parse_address(value: str, field: str) -> Address:
    """One checked address from "Name <addr>", '"Doe, Jane" <addr>', "<addr>" or a bare "addr"."""
    value = check_header_value(field, value)
    if not value:
        raise ComposeError(field, "empty address")
    match = _ANGLE_FORM.match(value)
    if match:
        name, addr = match.group("name").strip(), match.group("addr").strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    elif "<" in value or ">" in value:
        raise ComposeError(field, "malformed address (unbalanced or repeated angle brackets)")
    else:
        name, addr = "", value
    return Address(display_name=display_name(field, name), addr_spec=addr_spec(field, addr))


def validate_address(value: str, *, field: str = "address") -> str:
    """The normalized form of one address ("Name <addr>" or "addr", domain in punycode) or a ComposeError."""
    address = parse_address(value, field)
    return str(address) if address.display_name else address.addr_spec


def msgid(field: str, value: str, *, need_at: bool) -> str:
    """A Message-ID without angle brackets; printable ASCII, no spaces, at most 250 characters."""
    value = check_header_value(field, value)
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not value:
        raise ComposeError(field, "empty message id")
    if not _MSGID_TEXT.match(value):
        raise ComposeError(field, "message id must be printable ASCII without spaces or angle brackets")
    if len(value) > _MAX_MSGID:
        raise ComposeError(field, f"message id longer than {_MAX_MSGID} characters")
    if need_at and "@" not in value:
        raise ComposeError(field, "message id needs an @")
    return value
