"""Parse stage: raw RFC 5322 bytes in, ``ParsedEmail`` out. Pure (no I/O) and total: never raises.

Problems are reported as human-readable ``defects``; ``error`` is set only when the input is unusable.
The MIME tree is split under ``policy.compat32`` (``policy.default`` re-parses Content-Type on every
access, ~4x slower); headers are decoded with ``policy.default``'s header registry, falling back to
the compat32 helpers (``decode_header``, ``getaddresses``) where it raises or would be too slow.
"""
from __future__ import annotations

import codecs
import hashlib
import html as html_lib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy, utils
from email.generator import BytesGenerator
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from io import BytesIO
from types import MappingProxyType
from typing import Mapping

import lxml.html

from pipeline.stages.budgets import PARSED_HTML_TO_TEXT_CHARS, clip
from pipeline.stages.html_guard import cap_attributes, drop_elements
from pipeline.stages.slices import SLICE, cut_before_non_space, cut_before_tag, sub_by_match, sub_in_slices

__all__ = ["Address", "ParsedAttachment", "ParsedEmail", "parse_email", "normalize_message_id", "snippet"]


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str

    @property
    def normalized(self) -> str:
        return self.email.strip().lower()


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    filename: str
    content_type: str
    content: bytes = field(repr=False)
    content_id: str | None
    inline: bool
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    message_id: str | None
    dedupe_key: str
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_: Address | None
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    date: datetime | None
    text: str
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    headers: Mapping[str, str] = field(hash=False)  # read-only; keys like "list_unsubscribe"
    size: int
    defects: tuple[str, ...]
    error: str | None

    @property
    def bulk(self) -> bool:
        """True for mailing-list, bulk or automatically submitted mail."""
        h = self.headers
        if "list_unsubscribe" in h or "list_id" in h:
            return True
        if h.get("precedence", "").strip().lower() in ("bulk", "list", "junk"):
            return True
        auto = h.get("auto_submitted")
        return auto is not None and auto.split(";")[0].strip().lower() != "no"


_PARSER = BytesParser(policy=policy.compat32)
_GEN_POLICY = policy.compat32.clone(linesep="\r\n", max_line_length=None)
_SURROGATES = re.compile(r"[\ud800-\udfff]+")
_MSGID = re.compile(r"<([^<>]*)>")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^<>]*>")
_SCRIPT_STYLE = re.compile(r"(?is)<(script|style)\b[^<>]*>.*?(?:</\1\s*>|\Z)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_MAX_DEFECTS = 50
_FAST_HEADER_CHARS = 8192  # policy.default header parsing turns superlinear beyond this
_MAX_HEADER_CHARS = 65536
_MAX_ADDRESS_CHARS = 262_144  # ~10k recipients; bounds worst-case getaddresses time
_HASH_BODY_CHARS = 4096
_KNOWN_HEADERS = frozenset(
    "from to cc bcc date subject message-id received return-path mime-version content-type sender reply-to "
    "delivered-to in-reply-to references x-mailer user-agent dkim-signature list-id x-gm-thrid".split())
_DOWNSTREAM_HEADERS = ("list-unsubscribe", "list-unsubscribe-post", "list-id", "precedence", "auto-submitted",
                       "x-auto-response-suppress", "x-gm-thrid", "x-gmail-labels")
_CHARSET_ALIASES = {  # labels Python lacks, or whose real-world meaning is a superset (as browsers do)
    "iso-8859-8-i": "iso-8859-8", "x-user-defined": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "iso-8859-1": "cp1252", "latin1": "cp1252", "unicode-1-1-utf-7": "utf-7"}
_EXTENSIONS = {
    "application/pdf": ".pdf", "application/zip": ".zip", "application/json": ".json", "image/png": ".png",
    "image/jpeg": ".jpg", "image/gif": ".gif", "text/plain": ".txt", "text/html": ".html", "text/csv": ".csv",
    "text/calendar": ".ics", "message/rfc822": ".eml", "message/global": ".eml", "message/delivery-status": ".txt"}
_STD_DEFECTS = {"StartBoundaryNotFoundDefect": "MIME boundary declared but never found",
                "CloseBoundaryNotFoundDefect": "MIME closing boundary missing"}
_BLOCK_TAGS = frozenset("p div br tr li h1 h2 h3 h4 h5 h6 table ul ol blockquote pre hr dt dd".split())
_HIDDEN_TAGS = frozenset("script style noscript template head".split())
_WORD = re.compile(r"\S+")
_LINE = re.compile(r"[^\n]+")


def normalize_message_id(value: str | None) -> str | None:
    """Strip whitespace and angle brackets; lowercase the part after the last '@'."""
    if not isinstance(value, str):
        return None
    value = _clean(value)
    match = _MSGID.search(value)
    if match:
        value = "".join(match.group(1).split())
    else:
        tokens = value.replace("<", " ").replace(">", " ").split()
        value = tokens[0] if tokens else ""
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}" if at else value


def snippet(text: str, limit: int = 100) -> str:
    """Collapse whitespace; if too long, cut at a word boundary and end with '…', within ``limit`` chars."""
    if limit <= 0 or not text:
        return ""
    words = _leading_words(text, limit)
    if len(words) <= limit:
        return words
    head = words[: limit - 1]
    if words[limit - 1] != " ":
        cut = head.rfind(" ")
        if cut > limit // 2:
            head = head[:cut]
    return head.rstrip() + "…"


def _leading_words(text: str, limit: int) -> str:
    """The words of ``text`` joined by single spaces, stopping once more than ``limit`` characters are
    gathered: the work is bounded by the snippet, not by the text (a body may hold megabytes)."""
    words: list[str] = []
    size = -1
    for match in _WORD.finditer(text):
        words.append(match.group())
        size += len(words[-1]) + 1
        if size > limit:
            break
    return " ".join(words)


def parse_email(raw: bytes, *, max_depth: int = 20) -> ParsedEmail:
    """Parse ``raw`` into a ParsedEmail; never raises."""
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        return _failed(b"", f"input is {type(raw).__name__}, not bytes", ())
    if not raw.strip():
        return _failed(raw, "empty input", ())
    state = _State()
    try:
        return _parse(raw, max(0, int(max_depth)), state)
    except Exception as exc:  # last resort: the stage must never raise
        return _failed(raw, f"parser failure: {type(exc).__name__}: {exc}"[:300], state.defects)


class _State:
    __slots__ = ("defects", "texts", "htmls", "attachments", "truncated")

    def __init__(self) -> None:
        self.defects: list[str] = []
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.truncated = False

    def add(self, defect: str) -> None:
        if defect not in self.defects and len(self.defects) < _MAX_DEFECTS:
            self.defects.append(defect)


def _failed(raw: bytes, error: str, defects) -> ParsedEmail:
    return ParsedEmail(
        message_id=None, dedupe_key=f"hash:{hashlib.sha256(raw).hexdigest()}", in_reply_to=None, references=(),
        subject="", from_=None, sender=None, reply_to=(), to=(), cc=(), bcc=(), date=None, text="", html=None,
        attachments=(), headers=MappingProxyType({}), size=len(raw), defects=tuple(defects), error=error)


def _parse(raw: bytes, max_depth: int, st: _State) -> ParsedEmail:
    try:
        root, structured = _PARSER.parsebytes(raw), True
    except RecursionError:  # the stdlib parser recurses once per nesting level
        root, structured = _PARSER.parsebytes(raw, headersonly=True), False
        st.add("MIME structure too deeply nested to parse; body not extracted")
    hv: dict[str, str] = {}
    for name, value in root.raw_items():
        hv.setdefault(str(name).strip().lower(), _clean(str(value).replace("\r", "").replace("\n", "")).strip())
    error = None if _KNOWN_HEADERS.intersection(hv) else "not an email: no recognizable RFC 5322 headers"
    if structured and error is None:
        _walk(root, max_depth, st)

    message_id = normalize_message_id(hv.get("message-id"))
    if message_id is None:
        st.add("missing Message-ID" if "message-id" not in hv else "empty Message-ID")
    from_ = _addresses("from", hv.get("from"), st)
    if "from" not in hv:
        st.add("missing From")
    text = "\n".join(st.texts).strip("\n")
    html = "\n".join(st.htmls) if st.htmls else None
    if html is not None and not text.strip():
        markup, clipped = clip(html, PARSED_HTML_TO_TEXT_CHARS)
        if clipped:
            st.add(f"HTML body longer than {PARSED_HTML_TO_TEXT_CHARS} characters: text taken from the first "
                   f"{PARSED_HTML_TO_TEXT_CHARS} only")
        text = _html_to_text(markup)
    if message_id:
        dedupe_key = f"mid:{message_id}"
    elif error:
        dedupe_key = f"hash:{hashlib.sha256(raw).hexdigest()}"
    else:
        dedupe_key = f"hash:{_content_hash(hv, text, st.attachments)}"
    in_reply_to = _msgid_list(hv.get("in-reply-to"))
    return ParsedEmail(
        message_id=message_id, dedupe_key=dedupe_key, in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=_msgid_list(hv.get("references")), subject=_text_header(hv.get("subject", ""), st),
        from_=from_[0] if from_ else None, sender=next(iter(_addresses("sender", hv.get("sender"), st)), None),
        reply_to=_addresses("reply-to", hv.get("reply-to"), st), to=_addresses("to", hv.get("to"), st),
        cc=_addresses("cc", hv.get("cc"), st), bcc=_addresses("bcc", hv.get("bcc"), st),
        date=_parse_date(hv.get("date"), st), text=text, html=html, attachments=tuple(st.attachments),
        headers=MappingProxyType({k.replace("-", "_"): hv[k] for k in _DOWNSTREAM_HEADERS if k in hv}),
        size=len(raw), defects=tuple(st.defects), error=error)


def _walk(root: Message, max_depth: int, st: _State) -> None:
    """Iterative depth-first walk (IMAP-style part numbers) collecting body text and attachments."""
    stack = [(root, 0, "" if root.is_multipart() else "1")]
    while stack:
        part, depth, section = stack.pop()
        label = f"part {section}" if section else "message"
        ctype = _safe(part.get_content_type, "text/plain")
        children = part.get_payload() if part.is_multipart() else None
        if ctype.startswith("multipart/") and isinstance(children, list):
            if depth < max_depth:
                prefix = f"{section}." if section else ""
                stack.extend((child, depth + 1, f"{prefix}{i}") for i, child in reversed(list(enumerate(children, 1))))
            elif not st.truncated:
                st.truncated = True
                st.add(f"MIME nesting deeper than {max_depth} levels truncated")
        else:
            _leaf(part, ctype, label, st)
        for defect in part.defects:
            name = type(defect).__name__
            reason = _STD_DEFECTS.get(name) or _CAMEL.sub(" ", name.removesuffix("Defect")).lower()
            st.add(f"{reason} in {label}")


def _leaf(part: Message, ctype: str, label: str, st: _State) -> None:
    disposition = _safe(part.get_content_disposition, None)
    filename = _safe(part.get_filename, None)
    is_body = ctype in ("text/plain", "text/html") or ctype.startswith("multipart/")  # broken multipart: text
    if is_body and disposition != "attachment" and not filename:
        charset = _safe(part.get_content_charset, None)
        text = _decode_text(_payload_bytes(part), charset, ctype == "text/html", label, st)
        (st.htmls if ctype == "text/html" else st.texts).append(text)
        return
    if part.is_multipart():  # message/rfc822 and other message/* with parsed content
        content = _serialize_embedded(part, label, st)
        if ctype in ("message/rfc822", "message/global"):  # named after the inner Subject unless given a name
            inner_subject = _safe(lambda: str(part.get_payload(0).get("subject") or ""), "")
            filename = filename or _text_header(_clean(inner_subject))
            filename = filename if not filename or filename.lower().endswith(".eml") else f"{filename}.eml"
    else:
        content = _payload_bytes(part)
    content_id = "".join(_clean(_safe(lambda: str(part.get("content-id") or ""), "")).split()).strip("<>")
    st.attachments.append(ParsedAttachment(
        filename=_safe_filename(filename, ctype, len(st.attachments) + 1), content_type=ctype, content=content,
        content_id=content_id or None, inline=disposition == "inline" or (bool(content_id) and disposition is None),
        size=len(content), sha256=hashlib.sha256(content).hexdigest()))


def _payload_bytes(part: Message) -> bytes:
    data = _safe(lambda: part.get_payload(decode=True), None)
    if isinstance(data, bytes):
        return data
    payload = _safe(part.get_payload, None)
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _serialize_embedded(part: Message, label: str, st: _State) -> bytes:
    """Bytes of an embedded message, regenerated with CRLF line ends and raw 8-bit bytes preserved."""
    chunks = []
    try:
        for inner in part.get_payload():
            buf = BytesIO()
            BytesGenerator(buf, mangle_from_=False, policy=_GEN_POLICY).flatten(inner, unixfrom=False)
            chunks.append(buf.getvalue())
    except Exception as exc:
        st.add(f"embedded message in {label} could not be serialized ({type(exc).__name__})")
        return b""
    return b"\r\n".join(chunks)


def _decode_text(data: bytes, charset: str | None, is_html: bool, label: str, st: _State) -> str:
    """Declared charset, then utf-8, then cp1252 with replacements; every fallback is a defect."""
    if not charset and is_html:
        meta = _META_CHARSET.search(data[:4096])
        charset = meta.group(1).decode("ascii") if meta else None
    text = None
    if charset:
        codec = _codec(charset)
        shown = _clean(charset)[:40]
        if codec is None:
            st.add(f"undecodable charset {shown!r} in {label}")
        else:
            try:
                text = data.decode(codec)
            except Exception:
                st.add(f"bytes invalid for charset {shown!r} in {label}")
    if text is None and data.isascii():
        text = data.decode("ascii")
    if text is None:
        try:
            text = data.decode("utf-8")
            if not charset:
                st.add(f"8-bit text without declared charset in {label} decoded as utf-8")
        except UnicodeDecodeError:
            st.add(f"undecodable 8-bit text in {label} decoded as cp1252 with replacements")
            text = data.decode("cp1252", errors="replace")
    return _clean(text.replace("\r\n", "\n").replace("\r", "\n")).lstrip("\ufeff")


def _codec(charset: str) -> str | None:
    name = charset.strip().strip("\"'").lower()
    try:
        info = codecs.lookup(_CHARSET_ALIASES.get(name, name))
    except Exception:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None  # refuse zlib, base64, rot13...


def _clean(value: str) -> str:
    """Storable text: surrogate-escaped 8-bit bytes decoded (utf-8, else cp1252), other surrogates and NULs dropped."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not _SURROGATES.search(value):
        return value

    def fix(match: re.Match) -> str:
        run = match.group(0)
        if not all("\udc80" <= ch <= "\udcff" for ch in run):
            return "\ufffd"
        data = bytes(ord(ch) - 0xDC00 for ch in run)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", errors="replace")

    return _SURROGATES.sub(fix, value)


def _safe(func, default):
    try:
        return func()
    except Exception:
        return default


def _text_header(value: str, st: _State | None = None) -> str:
    if len(value) > _MAX_HEADER_CHARS:
        value = value[:_MAX_HEADER_CHARS]
        if st is not None:
            st.add(f"header Subject longer than {_MAX_HEADER_CHARS} characters truncated")
    compat = lambda: str(make_header(decode_header(value)))  # noqa: E731
    try:
        decoded = str(policy.default.header_factory("subject", value)) if len(value) <= _FAST_HEADER_CHARS else compat()
    except Exception:
        decoded = _safe(compat, value)
    return _clean(decoded).strip()


def _addresses(name: str, value: str | None, st: _State) -> tuple[Address, ...]:
    if value is None or not value.strip():
        return ()
    found: list[Address] = []
    header = None
    if value.isascii() and "=?" not in value and ":" not in value and len(value) <= _FAST_HEADER_CHARS:
        # Plain ASCII without encoded words or groups (nearly all mail): the compat parser gives the
        # same answer as policy.default's, several times faster.
        try:
            pairs = utils.getaddresses([value])
        except Exception:
            pairs = []
        found = [Address(email=_clean(addr).strip(), name=_clean(display).strip()) for display, addr in pairs if "@" in addr]
        if found and all(" " not in a.email and a.email.count("@") == 1 for a in found):
            return tuple(found)
        found = []
    if len(value) <= _FAST_HEADER_CHARS:
        try:
            header = policy.default.header_factory(name, value)
            found = [Address(email=_clean(a.addr_spec).strip(), name=_clean(a.display_name).strip())
                     for a in header.addresses if "@" in a.addr_spec]
        except Exception:
            header = None
    if not found and (header is None or header.defects):
        if len(value) > _MAX_ADDRESS_CHARS:
            value = value[:_MAX_ADDRESS_CHARS]
            st.add(f"header {name.title()} longer than {_MAX_ADDRESS_CHARS} characters truncated")
        try:
            found = [Address(email=addr.strip(), name=_text_header(display))
                     for display, addr in utils.getaddresses([value]) if "@" in addr]
        except Exception:  # e.g. RecursionError on thousands of nested comments
            found = []
    if not found and not (header is not None and header.groups and not header.defects):
        st.add(f"header {name.title()} unparseable")
    return tuple(found)


def _parse_date(value: str | None, st: _State) -> datetime | None:
    if value is None:
        st.add("missing Date")
        return None
    try:
        parsed = utils.parsedate_to_datetime(value)
        if parsed.tzinfo is None:  # "-0000": UTC with unknown origin zone
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except Exception:
        st.add(f"unparseable Date {value[:80]!r}")
        return None


def _msgid_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = (normalize_message_id(c) for c in (_MSGID.findall(value) or value.replace(",", " ").split()))
    return tuple(dict.fromkeys(i for i in ids if i))


def _content_hash(hv: dict[str, str], text: str, attachments: list[ParsedAttachment]) -> str:
    """Stable fingerprint for messages without a Message-ID."""
    digest = hashlib.sha256()
    for name in ("date", "from", "to", "cc", "subject"):
        digest.update(f"{name}:{' '.join(hv.get(name, '').split())}\n".encode("utf-8", "surrogatepass"))
    digest.update(text[:_HASH_BODY_CHARS].encode("utf-8", "surrogatepass"))
    for att in attachments:
        digest.update(f"\natt:{att.sha256}".encode("ascii"))
    return digest.hexdigest()


def _spaced(text: str) -> str:
    return _WHITESPACE.sub(" ", text) if len(text) <= SLICE else sub_in_slices(_WHITESPACE, " ", text, cut_before_non_space)


def _html_to_text(markup: str) -> str:
    """Readable text from HTML: script/style dropped, whitespace collapsed, one line per block.

    Linear in the markup: attributes capped before lxml parses, hidden elements removed in one pass,
    long substitutions made a slice at a time (see :mod:`pipeline.stages.slices`)."""
    try:
        parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
        root = lxml.html.document_fromstring(cap_attributes(markup).encode("utf-8", "surrogatepass"), parser=parser)
        drop_elements(root, _HIDDEN_TAGS)
        for el in root.iter():
            text, tail = el.text, el.tail
            if text:
                el.text = _spaced(text)
            if tail:
                el.tail = _spaced(tail)
            tag = el.tag.lower() if isinstance(el.tag, str) else ""
            if tag in _BLOCK_TAGS:
                el.text, el.tail = "\n" + (el.text or ""), "\n" + (el.tail or "")
            elif tag in ("td", "th"):
                el.tail = " " + (el.tail or "")
        pieces = []
        for piece in root.itertext():  # a Python loop, so other threads get the GIL in between
            pieces.append(piece)
        raw_text = "".join(pieces)
    except Exception:
        raw_text = ""
    if not raw_text.strip():  # lxml failed or gave up (e.g. excessive nesting): strip tags by regex
        raw_text = html_lib.unescape(sub_in_slices(_TAG, "\n", sub_by_match(_SCRIPT_STYLE, " ", markup), cut_before_tag))
    lines = []
    for match in _LINE.finditer(raw_text):  # one line at a time: a split of megabytes is one long C call
        line = match.group()
        line = " ".join(line.split()) if len(line) <= SLICE else _spaced(line).strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


def _safe_filename(name: str | None, ctype: str, index: int) -> str:
    """Basename only, no control characters or leading dots, at most 255 UTF-8 bytes (extension kept)."""
    if name:
        name = _clean(str(name))
        if "=?" in name:
            name = _text_header(name)
        name = _CONTROL.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip().lstrip(".").strip()
    if not name:
        return f"attachment-{index}{_EXTENSIONS.get(ctype, '.bin')}"
    if len(name.encode("utf-8")) > 255:
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext}" if dot and stem and len(ext) <= 16 else ""
        budget = 255 - len(ext.encode("utf-8"))
        name = name[: len(name) - len(ext)].encode("utf-8")[:budget].decode("utf-8", "ignore") + ext
    return name
