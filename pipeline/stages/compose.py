"""Compose stage: a :class:`Draft` in, the raw RFC 5322 bytes to send (CRLF line ends) out. Pure: no I/O.

The MIME tree is built with the stdlib ``email`` package under a 7-bit SMTP policy, so every body part
is 7bit, quoted-printable or base64 and lines stay within 78 characters wherever they can be folded;
an unbreakable token (a long unsubscribe URL, a Message-ID) is bounded so no line exceeds 998. Header
values are checked for line breaks before they reach the message (header injection is a
:class:`ComposeError`, which the API answers with 422).

Shapes: text only → ``text/plain``; HTML → ``multipart/alternative`` (text first, derived from the HTML
when not given); inline images (``content_id`` set) → ``multipart/related`` around the HTML; other
attachments → ``multipart/mixed`` around the body. Bcc recipients belong to the SMTP envelope only
(:func:`envelope_recipients`), never to a header. What headers may hold is
:mod:`pipeline.stages.header_rules`; the text alternative of an HTML body comes from
:mod:`pipeline.stages.html_text`; replies and forwards are :mod:`pipeline.stages.quoting`.
"""

from __future__ import annotations

import html as html_lib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from urllib.parse import urlsplit

from pipeline.stages.header_rules import ComposeError, addr_spec, check_header_value, display_name, msgid, parse_address, validate_address
from pipeline.stages.html_text import html_to_text
from pipeline.stages.mime_bytes import as_bytes
from pipeline.stages.slices import SLICE

__all__ = ["ComposeError", "Draft", "OutgoingAttachment", "compose", "envelope_recipients", "html_part_bytes", "recipient_groups",
           "swap_html", "validate_address"]

_MAX_URL = 900
_EMAIL_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,200}$")
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,128}$")
_URL_TEXT = re.compile(r"^[!#-;=?-~]+$")  # printable ASCII without space, '"', '<', '>'
_MAILTO_QUERY = re.compile(r"^[A-Za-z0-9%._~!$&'()*+,;=:@/?-]*$")
_LONG_LINE = re.compile(r"[^\r\n]{79}")  # longer than EmailPolicy.max_line_length
_LARGE_PART = 1_000_000  # characters
_BOUNDARY = re.compile(rb'boundary="([^"\r\n]{1,200})"', re.I)
_BODY_CLOSE = re.compile(r"</body\s*>", re.I)
_HTML_CLOSE = re.compile(r"</html\s*>", re.I)
_RESERVED_HEADERS = frozenset(
    "from to cc bcc sender subject date message-id in-reply-to references mime-version content-type "
    "content-transfer-encoding content-disposition content-id x-mailpipe-email-id list-unsubscribe "
    "list-unsubscribe-post return-path received".split())
_VERBATIM_HEADERS = frozenset(
    "message-id in-reply-to references list-unsubscribe list-unsubscribe-post x-mailpipe-email-id".split())
_FOOTER_STYLE = "margin-top:24px;font-size:12px;color:#666"


@dataclass(frozen=True, slots=True)
class OutgoingAttachment:
    """A file to attach; inline (referenced as ``cid:`` from the HTML) when ``content_id`` is set."""

    filename: str
    content_type: str
    content: bytes = field(repr=False)
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything needed to build one outgoing message; addresses are "Name <addr>" or bare."""

    from_email: str
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    html: str | None = None
    text: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    message_id: str | None = None
    date: datetime | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    mailpipe_email_id: str | None = None
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


class _OutboundPolicy(EmailPolicy):
    """SMTP policy whose identifier headers are folded at spaces only, never as RFC 2047 encoded words."""

    def fold(self, name: str, value: str) -> str:
        """Fold ``name: value``; identifier headers verbatim, the rest as ``EmailPolicy`` does."""
        if name.lower() in _VERBATIM_HEADERS:
            return _fold_words(name, str(value), self.linesep, self.max_line_length or 78)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        """Binary twin of :meth:`fold`."""
        if name.lower() in _VERBATIM_HEADERS:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _OutboundPolicy(linesep="\r\n", cte_type="7bit")


def _fold_words(name: str, value: str, linesep: str, limit: int) -> str:
    """``name: value`` folded at whitespace so lines stay within ``limit`` where the words allow."""
    line, lines = f"{name}:", []
    for word in value.split():
        if len(line) + 1 + len(word) > limit and line != f"{name}:":
            lines.append(line)
            line = f" {word}"
        else:
            line = f"{line} {word}"
    lines.append(line)
    return linesep.join(lines) + linesep


def _as_tuple(value: Iterable[str] | str | None) -> tuple[str, ...]:
    """A tuple of strings, a lone string counting as one item."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _recipients(draft: Draft) -> tuple[tuple[Address, ...], tuple[Address, ...], tuple[Address, ...]]:
    """Checked To, Cc and Bcc; at least one recipient overall."""
    groups = tuple(
        tuple(parse_address(v, f"{name}[{i}]") for i, v in enumerate(_as_tuple(values)))
        for name, values in (("to", draft.to), ("cc", draft.cc), ("bcc", draft.bcc)))
    if not any(groups):
        raise ComposeError("to", "at least one recipient is required")
    return groups[0], groups[1], groups[2]


def recipient_groups(draft: Draft) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The checked addr-specs of To, Cc and Bcc, as they go on the wire."""
    to, cc, bcc = _recipients(draft)
    return tuple(a.addr_spec for a in to), tuple(a.addr_spec for a in cc), tuple(a.addr_spec for a in bcc)


def envelope_recipients(draft: Draft) -> tuple[str, ...]:
    """The SMTP RCPT TO addresses for ``draft`` (To, Cc and Bcc; checked, deduplicated, in order)."""
    seen: dict[str, str] = {}
    for group in _recipients(draft):
        for address in group:
            seen.setdefault(address.addr_spec.lower(), address.addr_spec)
    return tuple(seen.values())


def _unsubscribe_url(value: str) -> str:
    """A checked absolute http(s) unsubscribe URL."""
    url = check_header_value("unsubscribe_url", value)
    parts = urlsplit(url) if _URL_TEXT.match(url) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ComposeError("unsubscribe_url", "must be an absolute http(s) URL of printable ASCII")
    if len(url) > _MAX_URL:
        raise ComposeError("unsubscribe_url", f"longer than {_MAX_URL} characters")
    return url


def _unsubscribe_mailto(value: str) -> str:
    """A ``mailto:`` URI from an address or a mailto URI, the address checked."""
    raw = check_header_value("unsubscribe_mailto", value)
    if raw.lower().startswith("mailto:"):
        raw = raw[7:]
    addr, _, query = raw.partition("?")
    if not _MAILTO_QUERY.match(query):
        raise ComposeError("unsubscribe_mailto", "query must be percent-encoded printable ASCII")
    uri = f"mailto:{addr_spec('unsubscribe_mailto', addr)}" + (f"?{query}" if query else "")
    if len(uri) > _MAX_URL:
        raise ComposeError("unsubscribe_mailto", f"longer than {_MAX_URL} characters")
    return uri


def _body(field: str, value: str | None) -> str | None:
    """Body text with LF line ends, refused when it cannot be encoded as UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ComposeError(field, f"must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ComposeError(field, "text is not valid Unicode (lone surrogates)") from None
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _with_footer(html: str, url: str) -> str:
    """``html`` with a visible unsubscribe link spliced in before ``</body>`` (appended when absent)."""
    footer = (f'<div style="{_FOOTER_STYLE}">If you no longer wish to receive these emails, '
              f'<a href="{html_lib.escape(url)}">unsubscribe</a>.</div>')
    closers = list(_BODY_CLOSE.finditer(html)) or list(_HTML_CLOSE.finditer(html))
    if closers:
        at = closers[-1].start()
        return f"{html[:at]}{footer}\n{html[at:]}"
    return f"{html}\n{footer}\n"


def _attachment_part(index: int, att: OutgoingAttachment, disposition: str) -> MIMEPart:
    """One attachment as a MIME part; base64, or 7bit for a clean message/rfc822."""
    base = f"attachments[{index}]"
    if not isinstance(att.content, (bytes, bytearray, memoryview)):
        raise ComposeError(f"{base}.content", "must be bytes")
    content = bytes(att.content)
    filename = display_name(f"{base}.filename", att.filename) or "attachment"
    ctype = check_header_value(f"{base}.content_type", att.content_type).lower()
    if not _CONTENT_TYPE.match(ctype) or ctype.startswith("multipart/"):
        raise ComposeError(f"{base}.content_type", f"invalid content type {ctype!r}")
    cid = None
    if att.content_id is not None:
        cid = "<" + msgid(f"{base}.content_id", att.content_id, need_at=False) + ">"
    part = MIMEPart(policy=_POLICY)
    maintype, subtype = ctype.split("/", 1)
    if maintype == "message":
        lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        clean = content.isascii() and b"\x00" not in content and max(map(len, lines), default=0) <= 998
        if ctype == "message/rfc822" and clean:
            # RFC 2046 §5.2.1: message/rfc822 must not be base64; the parser also reads it unencoded.
            part["Content-Type"] = ctype
            part["Content-Transfer-Encoding"] = "7bit"
            part["Content-Disposition"] = disposition
            part.set_param("filename", filename, header="Content-Disposition")
            if cid:
                part["Content-ID"] = cid
            part.set_payload("\r\n".join(line.decode("ascii") for line in lines))
            return part
        maintype, subtype = "application", "octet-stream"  # 8-bit or odd message/*: opaque .eml bytes
    part.set_content(content, maintype, subtype, disposition=disposition, filename=filename, cid=cid)
    return part


def _text_part(text: str, subtype: str) -> MIMEPart:
    """A UTF-8 text part; the policy picks 7bit, quoted-printable or base64.

    A part over a megabyte is 7bit when it can be, else base64: the stdlib's quoted-printable
    encoder translates the whole body in one C call, which holds the GIL for ~100 ms at 10 MB,
    while its base64 encoder works a line at a time.
    """
    part = MIMEPart(policy=_POLICY)
    cte = None
    if len(text) > _LARGE_PART:
        cte = "7bit" if text.isascii() and not _has_long_line(text) else "base64"
    part.set_content(text, subtype=subtype, charset="utf-8", cte=cte)
    return part


def _has_long_line(text: str) -> bool:
    """Whether a line of ``text`` is longer than the policy's 78 characters (searched a slice at a time)."""
    pos = 0
    while pos < len(text):
        cut = text.find("\n", pos + SLICE)
        end = len(text) if cut < 0 else cut + 1
        if _LONG_LINE.search(text, pos, end):
            return True
        pos = end
    return False


def _container(subtype: str, parts: Sequence[MIMEPart]) -> MIMEPart:
    """A multipart part holding ``parts``."""
    container = MIMEPart(policy=_POLICY)
    container["Content-Type"] = f"multipart/{subtype}"
    for part in parts:
        container.attach(part)
    return container


def _structure(text: str, html: str | None, attachments: tuple[OutgoingAttachment, ...]) -> MIMEPart:
    """The MIME tree: alternative(text, related(html, inline...)) inside mixed(…, attachments)."""
    inline = [(i, a) for i, a in enumerate(attachments) if a.content_id is not None and html is not None]
    regular = [(i, a) for i, a in enumerate(attachments) if a.content_id is None or html is None]
    seen_cids: set[str] = set()
    for i, att in inline:
        cid = msgid(f"attachments[{i}].content_id", att.content_id or "", need_at=False)
        if cid in seen_cids:
            raise ComposeError(f"attachments[{i}].content_id", f"duplicate content id {cid!r}")
        seen_cids.add(cid)
    body = _text_part(text, "plain")
    if html is not None:
        html_part = _text_part(html, "html")
        if inline:
            html_part = _container("related", [html_part, *(_attachment_part(i, a, "inline") for i, a in inline)])
            html_part.set_param("type", "text/html")
        body = _container("alternative", [body, html_part])
    if regular:
        body = _container("mixed", [body, *(_attachment_part(i, a, "attachment") for i, a in regular)])
    return body


def compose(draft: Draft) -> tuple[bytes, str]:
    """Build the message for ``draft``: (raw bytes with CRLF line ends, Message-ID without brackets)."""
    given = parse_address(draft.from_email, "from_email")
    sender = Address(display_name=display_name("from_name", draft.from_name) or given.display_name,
                     addr_spec=given.addr_spec)
    to, cc, _bcc = _recipients(draft)
    subject = check_header_value("subject", draft.subject or "")
    if draft.message_id is not None:
        message_id = msgid("message_id", draft.message_id, need_at=True)
    else:
        message_id = f"{secrets.token_hex(16)}@{sender.domain}"
    date = draft.date if draft.date is not None else datetime.now(UTC)
    if not isinstance(date, datetime) or date.utcoffset() is None:
        raise ComposeError("date", "must be a timezone-aware datetime")
    in_reply_to = msgid("in_reply_to", draft.in_reply_to, need_at=False) if draft.in_reply_to else None
    references = tuple(dict.fromkeys(
        msgid(f"references[{i}]", ref, need_at=False) for i, ref in enumerate(_as_tuple(draft.references))))
    if not references and in_reply_to:
        references = (in_reply_to,)
    email_id = None
    if draft.mailpipe_email_id is not None:
        email_id = check_header_value("mailpipe_email_id", draft.mailpipe_email_id)
        if not _EMAIL_ID.match(email_id):
            raise ComposeError("mailpipe_email_id", "must be 1-200 characters of [A-Za-z0-9._:@+-]")
    unsubscribe = [_unsubscribe_url(draft.unsubscribe_url)] if draft.unsubscribe_url else []
    if draft.unsubscribe_mailto:
        unsubscribe.append(_unsubscribe_mailto(draft.unsubscribe_mailto))
    extra = _extra_headers(draft.extra_headers)

    html = _body("html", draft.html)
    text = _body("text", draft.text)
    if text is None:
        text = html_to_text(html) if html is not None else ""
    if unsubscribe:
        link = unsubscribe[0]
        text = f"{text.rstrip()}\n\nUnsubscribe: {link}\n".lstrip("\n")
        if html is not None:
            html = _with_footer(html, link)

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    if to:
        msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{ref}>" for ref in references)
    if email_id:
        msg["X-Mailpipe-Email-Id"] = email_id
    if unsubscribe:
        msg["List-Unsubscribe"] = ", ".join(f"<{uri}>" for uri in unsubscribe)
        if unsubscribe[0].lower().startswith("https://"):
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for i, (name, value) in enumerate(extra):
        try:
            msg[name] = value
        except ValueError as exc:  # e.g. a second Reply-To: the policy allows one
            raise ComposeError(f"extra_headers[{i}]", str(exc)) from None
    msg["MIME-Version"] = "1.0"
    body = _structure(text, html, tuple(draft.attachments))
    for name, value in body.items():
        msg[name] = value
    msg.set_payload(body.get_payload())
    return as_bytes(msg), message_id


def _extra_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str | Address]]:
    """Checked caller headers; structural ones are refused and Reply-To must be one valid address."""
    checked: list[tuple[str, str | Address]] = []
    for i, item in enumerate(headers):
        field_name = f"extra_headers[{i}]"
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ComposeError(field_name, "must be a (name, value) pair")
        name = check_header_value(field_name, item[0])
        if not _HEADER_NAME.match(name):
            raise ComposeError(field_name, f"invalid header name {name!r}")
        if name.lower() in _RESERVED_HEADERS or name.lower().startswith("content-"):
            raise ComposeError(field_name, f"header {name} is set by mailpipe and cannot be overridden")
        if name.lower() == "reply-to":
            checked.append((name, parse_address(item[1], field_name)))
        else:
            checked.append((name, check_header_value(field_name, item[1])))
    return checked


def html_part_bytes(html: str) -> bytes:
    """The HTML body part exactly as :func:`compose` writes it into a message (headers, blank line,
    encoded body; CRLF line ends), for swapping one copy's HTML into an already composed message."""
    body = _body("html", html)
    assert body is not None
    return as_bytes(_text_part(body, "html"))


def swap_html(raw: bytes, html: str | bytes, new_html: str) -> bytes | None:
    """``raw`` (a message :func:`compose` wrote with the HTML body ``html``) with ``new_html`` in its
    place, every other byte kept: a per-recipient copy without composing the message again. ``html``
    may be given as its :func:`html_part_bytes` already (computed once for many copies).

    None when that cannot be done safely (the HTML part is not found exactly once, or the new part
    contains a line one of the message's multipart boundaries would collide with): compose instead.
    """
    old = html if isinstance(html, bytes) else html_part_bytes(html)
    at = raw.find(old)
    if at < 0 or raw.find(old, at + 1) >= 0:
        return None
    new = html_part_bytes(new_html)
    if any(b"--" + boundary in new for boundary in _BOUNDARY.findall(raw, 0, at)):
        return None
    return raw[:at] + new + raw[at + len(old):]
