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
import quopri
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy, utils
from email.generator import BytesGenerator
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from io import BytesIO
from types import MappingProxyType
from typing import TypeVar, cast

import lxml.html

from pipeline.stages.budgets import PARSED_HTML_TO_TEXT_CHARS, clip
from pipeline.stages.html_guard import cap_attributes, drop_elements
from pipeline.stages.slices import SLICE, cut_before_non_space, cut_before_tag, sub_by_match, sub_in_slices

__all__ = ["Address", "ParsedAttachment", "ParsedEmail", "normalize_message_id", "parse_email", "repair_header_block",
           "snippet"]


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
    #: The From display name holds an address other than the real one (``"ceo@corp" <x@evil>``):
    #: never trust the name for linking or naming.
    suspicious_sender: bool = False

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


_T = TypeVar("_T")
_D = TypeVar("_D")

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
_BOM = b"\xef\xbb\xbf"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_OBSOLETE_NAME = re.compile(rb"(?m)^([!-9;-~]+)[ \t]+:")  # RFC 5322 §4.5: "Subject  : x" (obsolete field syntax)
_ADDRESS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|<[^<>]*>?|[^"(<,]+|.', re.S)
_ADDRESS_LIKE = re.compile(r"""[^\s@<>()\[\],;:"']{1,64}@[^\s@<>()\[\],;:"']{1,255}""")
_ENCODED_WORD_START = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?")
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*\?=")
_ASCII_BYTES = bytes(range(128))
_UTF8_FFFD = "\ufffd".encode()
_ADDRESS_HEADERS = ("to", "cc", "bcc", "reply-to")  # every occurrence counts (RFC 5322 allows one; mail has two)
_MAX_DEFECTS = 50
_FAST_HEADER_CHARS = 8192  # policy.default header parsing turns superlinear beyond this
_MAX_HEADER_CHARS = 65536
_MAX_ADDRESS_CHARS = 262_144  # ~10k recipients; bounds worst-case getaddresses time
_HASH_BODY_CHARS = 4096
_KNOWN_HEADERS = frozenset(
    "from to cc bcc date subject message-id received return-path mime-version content-type sender reply-to "
    "delivered-to in-reply-to references x-mailer user-agent dkim-signature list-id x-gm-thrid".split())
_DOWNSTREAM_HEADERS = ("list-unsubscribe", "list-unsubscribe-post", "list-id", "precedence", "auto-submitted",
                       "x-auto-response-suppress", "x-gm-thrid", "x-gmail-labels", "thread-index", "thread-topic")
_CHARSET_ALIASES = {  # labels Python lacks, or whose real-world meaning is a superset (as browsers do)
    "iso-8859-8-i": "iso-8859-8", "x-user-defined": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "iso-8859-1": "cp1252", "latin1": "cp1252",
    "unicode-1-1-utf-7": "utf-7", "big5": "big5hkscs", "shift_jis": "cp932", "x-sjis": "cp932",
    "tis-620": "cp874", "iso-8859-11": "cp874"}
_LENIENT_Q_WORD = re.compile(r"=\?([^?\s]{1,75})\?[qQ]\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"\?=[ \t]+=\?")
_EW_CHARSET = re.compile(r"=\?([^?\s*]{1,75})((?:\*[^?\s]{0,40})?\?[bBqQ]\?)")
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


def repair_header_block(raw: bytes) -> bytes:
    """``raw`` as the header parser needs it; ``raw`` itself (the same object) when nothing changes.

    A leading UTF-8 byte-order mark (``.eml`` files saved by Windows editors) is dropped, and
    whitespace between a top-level header's name and its colon is removed: RFC 5322 §4.5 says to
    accept the obsolete ``Subject  : x`` form, and the stdlib parser takes such a line for the start
    of the body, which loses every header after it.
    """
    return _repair_header_block(raw)[0]


def _repair_header_block(raw: bytes) -> tuple[bytes, list[str]]:
    repairs = []
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
        repairs.append("leading byte-order mark ignored")
    end = _HEADER_END.search(raw)
    cut = end.start() if end else len(raw)
    if (raw.find(b" :", 0, cut) != -1 or raw.find(b"\t:", 0, cut) != -1) and _OBSOLETE_NAME.search(raw, 0, cut):
        raw = _OBSOLETE_NAME.sub(rb"\1:", raw[:cut]) + raw[cut:]
        repairs.append("obsolete header syntax (whitespace before the colon) accepted")
    return raw, repairs


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
    __slots__ = ("defects", "texts", "htmls", "attachments", "truncated", "hint")

    def __init__(self) -> None:
        self.hint: str | None = None  # the message's declared legacy charset, for raw 8-bit header bytes
        self.defects: list[str] = []
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.truncated = False

    def add(self, defect: str) -> None:
        if defect not in self.defects and len(self.defects) < _MAX_DEFECTS:
            self.defects.append(defect)


def _failed(raw: bytes, error: str, defects: Iterable[str]) -> ParsedEmail:
    return ParsedEmail(
        message_id=None, dedupe_key=f"hash:{hashlib.sha256(raw).hexdigest()}", in_reply_to=None, references=(),
        subject="", from_=None, sender=None, reply_to=(), to=(), cc=(), bcc=(), date=None, text="", html=None,
        attachments=(), headers=MappingProxyType({}), size=len(raw), defects=tuple(defects), error=error)


def _parse(raw: bytes, max_depth: int, st: _State) -> ParsedEmail:
    source, repairs = _repair_header_block(raw)
    for repair in repairs:
        st.add(repair)
    try:
        root, structured = _PARSER.parsebytes(source), True
    except RecursionError:  # the stdlib parser recurses once per nesting level
        root, structured = _PARSER.parsebytes(source, headersonly=True), False
        st.add("MIME structure too deeply nested to parse; body not extracted")
    st.hint = None if source.isascii() else _charset_hint(root)  # only raw 8-bit bytes need it
    hv: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in root.raw_items():
        key = str(name).strip().lower()
        text = _clean(str(value).replace("\r", "").replace("\n", ""), st.hint).strip()
        hv.setdefault(key, text)
        if key in _ADDRESS_HEADERS:
            repeated.setdefault(key, []).append(text)
    for key, values in repeated.items():
        if len(values) > 1:  # a second To:/Cc: is as real to the sender's client as the first
            hv[key] = ", ".join(v for v in (v.strip().strip(",").strip() for v in values) if v)
            st.add(f"{len(values)} {key.title()} headers merged")
    error = None if _KNOWN_HEADERS.intersection(hv) else "not an email: no recognizable RFC 5322 headers"
    if structured and error is None:
        _walk(root, max_depth, st)

    message_id = normalize_message_id(hv.get("message-id"))
    if message_id is None:
        st.add("missing Message-ID" if "message-id" not in hv else "empty Message-ID")
    from_ = _addresses("from", hv.get("from"), st)
    if "from" not in hv:
        st.add("missing From")
    suspicious = bool(from_) and _impersonates(from_[0])
    if suspicious:
        st.add("From display name holds a different address")
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
        size=len(raw), defects=tuple(st.defects), error=error, suspicious_sender=suspicious)


def _impersonates(sender: Address) -> bool:
    """True when the display name contains an address other than the sender's real one."""
    real = sender.email.strip().lower()
    return any(m.group(0).strip(".").lower() != real for m in _ADDRESS_LIKE.finditer(sender.name[:1000]))


def _charset_hint(root: Message) -> str | None:
    """The codec of the first declared charset among the first text parts, unless it is UTF-8 or
    ASCII: raw 8-bit bytes in headers and filenames that are not UTF-8 are most likely in it."""
    stack, seen = [root], 0
    while stack and seen < 50:
        part = stack.pop(0)
        seen += 1
        children = _safe(part.get_payload, None) if part.is_multipart() else None
        if isinstance(children, list):
            stack.extend(c for c in children if isinstance(c, Message))  # the parser puts only Messages there
            continue
        charset = _safe(part.get_content_charset, None) if _safe(part.get_content_maintype, "") == "text" else None
        codec = _codec(charset) if charset else None
        if codec is not None:
            return None if codec in ("utf-8", "ascii") else codec
    return None


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
    filename = _filename(part, st.hint)
    is_body = ctype in ("text/plain", "text/html") or ctype.startswith("multipart/")  # broken multipart: text
    if is_body and disposition != "attachment" and not filename:
        charset = _safe(part.get_content_charset, None)
        text = _decode_text(_payload_bytes(part), charset, ctype == "text/html", label, st)
        (st.htmls if ctype == "text/html" else st.texts).append(text)
        return
    if part.is_multipart():  # message/rfc822 and other message/* with parsed content
        content = _serialize_embedded(part, label, st)
        if ctype in ("message/rfc822", "message/global"):  # named after the inner Subject unless given a name
            inner_subject = _safe(lambda: _inner_subject(part), "")
            filename = filename or _text_header(_clean(inner_subject))
            filename = filename if not filename or filename.lower().endswith(".eml") else f"{filename}.eml"
    else:
        content = _payload_bytes(part)
    content_id = "".join(_clean(_safe(lambda: str(part.get("content-id") or ""), "")).split()).strip("<>")
    st.attachments.append(ParsedAttachment(
        filename=_safe_filename(filename, ctype, len(st.attachments) + 1), content_type=ctype, content=content,
        content_id=content_id or None, inline=disposition == "inline" or (bool(content_id) and disposition is None),
        size=len(content), sha256=hashlib.sha256(content).hexdigest()))


def _inner_subject(part: Message) -> str:
    inner = part.get_payload(0)
    return str(inner.get("subject") or "") if isinstance(inner, Message) else ""


def _filename(part: Message, hint: str | None) -> str | None:
    """The part's file name as ``policy.default`` reads it (RFC 2231, encoded words, raw 8-bit names
    decoded rather than replaced, folding removed); the compat32 reading where that finds nothing."""
    found: dict[str, str] = {}
    for name, value in part.raw_items():
        key = str(name).strip().lower()
        if key in ("content-disposition", "content-type") and key not in found:
            found[key] = str(value)
    if all(v.isascii() and "=?" not in v and "*" not in v for v in found.values()):
        return _safe(part.get_filename, None)  # plain names: the same answer, ~10x faster
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        declared = found.get(header)
        if declared is None or len(declared) > _FAST_HEADER_CHARS or param not in declared.lower():
            continue
        try:
            given = policy.default.header_fetch_parse(header, _alias_encoded_words(_clean(declared, hint))).params.get(param)
        except Exception:
            given = None
        if given:
            return str(given)
    return _safe(part.get_filename, None)


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
            # the parser puts Messages in a multipart's payload (anything else would raise here, reported below)
            BytesGenerator(buf, mangle_from_=False, policy=_GEN_POLICY).flatten(cast(Message, inner), unixfrom=False)
            chunks.append(buf.getvalue())
    except Exception as exc:
        st.add(f"embedded message in {label} could not be serialized ({type(exc).__name__})")
        return b""
    return b"\r\n".join(chunks)


def _decode_text(data: bytes, charset: str | None, is_html: bool, label: str, st: _State) -> str:
    """Declared charset, then UTF-8, then the declared charset with replacements (legacy charsets),
    then UTF-8 or cp1252 line by line (:func:`_decode_mixed`); every fallback is a defect."""
    if not charset and is_html:
        meta = _META_CHARSET.search(data[:4096])
        charset = meta.group(1).decode("ascii") if meta else None
    text = None
    codec = _codec(charset) if charset else None
    if charset:
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
            pass
    if text is None and codec is not None and codec not in ("utf-8", "ascii"):
        # Not UTF-8 either: the declared (legacy, often multi-byte) charset it is, stray bytes replaced.
        text = _safe(lambda: data.decode(codec, "replace"), None)
        if text is not None:
            st.add(f"invalid bytes for charset {shown!r} in {label} replaced")
    if text is None:
        text, replaced, cp1252 = _decode_mixed(data)
        if replaced:
            st.add(f"invalid utf-8 bytes in {label} replaced")
        if cp1252:
            st.add(f"undecodable 8-bit text in {label} decoded as cp1252 with replacements")
    return _clean(text.replace("\r\n", "\n").replace("\r", "\n")).lstrip("\ufeff")


def _utf8_evidence(data: bytes) -> tuple[int, int]:
    """(characters that decode as UTF-8 multi-byte sequences, invalid sequences) in ``data``."""
    text = data.decode("utf-8", "replace")
    high = len(data.translate(None, _ASCII_BYTES))
    bad = text.count("\ufffd") - data.count(_UTF8_FFFD)
    return len(text) - (len(data) - high) - bad, bad


def _decode_mixed(data: bytes) -> tuple[str, bool, bool]:
    """Text from bytes that are not valid UTF-8, as (text, some bytes replaced, cp1252 used).

    Decided line by line: a valid line is UTF-8; a line with more valid UTF-8 sequences than
    invalid ones is UTF-8 with U+FFFD for the bad bytes (one stray byte must not turn the rest into
    mojibake); a line with no UTF-8 at all follows the whole text's verdict, and otherwise, like a
    text with no UTF-8 anywhere, is cp1252 (the usual label-less legacy charset), with replacements.
    """
    good, bad = _utf8_evidence(data)
    mostly_utf8 = good > 0 and good >= bad
    out: list[str] = []
    replaced = cp1252 = False
    for line in data.split(b"\n"):
        try:
            out.append(line.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            pass
        good, bad = _utf8_evidence(line)
        if (good >= bad) if good else mostly_utf8:
            out.append(line.decode("utf-8", "replace"))
            replaced = True
        else:
            out.append(line.decode("cp1252", "replace"))
            cp1252 = True
    return "\n".join(out), replaced, cp1252


def _codec(charset: str) -> str | None:
    name = charset.strip().strip("\"'").lower()
    try:
        info = codecs.lookup(_CHARSET_ALIASES.get(name, name))
    except Exception:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None  # refuse zlib, base64, rot13...


def _clean(value: str, hint: str | None = None) -> str:
    """Storable text: raw 8-bit bytes (surrogate-escaped by the parser) decoded as UTF-8, else in the
    message's declared charset ``hint`` when they are valid in it, else UTF-8 with U+FFFD for stray
    bytes or cp1252 (see :func:`_decode_mixed`); other surrogates and NULs dropped."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not _SURROGATES.search(value):
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes: decode each run alone
        return _SURROGATES.sub(_clean_run, value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if hint:
        try:
            return data.decode(hint)
        except (UnicodeDecodeError, LookupError):
            pass
    return _decode_mixed(data)[0]


def _clean_run(match: re.Match) -> str:
    run = match.group(0)
    if not all("\udc80" <= ch <= "\udcff" for ch in run):
        return "\ufffd"
    return _decode_mixed(bytes(ord(ch) - 0xDC00 for ch in run))[0]


def _safe(func: Callable[[], _T], default: _D) -> _T | _D:
    try:
        return func()
    except Exception:
        return default


def _text_header(value: str, st: _State | None = None) -> str:
    if len(value) > _MAX_HEADER_CHARS:
        value = _cut_header(value, _MAX_HEADER_CHARS)
        if st is not None:
            st.add(f"header Subject longer than {_MAX_HEADER_CHARS} characters truncated")
    value = _alias_encoded_words(value)
    compat = lambda: _decode_words(value)  # noqa: E731
    try:
        decoded = str(policy.default.header_factory("subject", value)) if len(value) <= _FAST_HEADER_CHARS else compat()
    except Exception:
        decoded = _safe(compat, value)
    return _lenient_encoded_words(_clean(decoded)).strip()


def _decode_words(value: str) -> str:
    """``make_header(decode_header(value))`` in linear time.

    The stdlib's encoded-word pattern scans to the end of the line from every ``=?cs?q?`` that has
    no ``?=`` after it (a hostile Subject of such starts took seconds). Nothing after a line's last
    ``?=`` can be part of an encoded word, so only the text up to it goes through the decoder.
    """
    out = []
    for line in value.splitlines() or [""]:
        end = line.rfind("?=") + 2
        head, tail = line[:end], line[end:]
        out.append((str(make_header(decode_header(head))) if head else "") + tail)
    return "".join(out)


def _lenient_encoded_words(text: str) -> str:
    """Decode Q encoded words the strict decoders left alone because raw 8-bit characters sit
    inside them (Eudora 4 wrote ``=?iso-8859-1?Q?Fr<byte 0xF6>sche?=``); ASCII words are left as they are."""
    if "=?" not in text:
        return text

    def decode(match: re.Match) -> str:
        codec = _codec(match.group(1).split("*")[0])
        if codec is None or match.group(2).isascii():  # an ASCII word the strict decoders refused: leave it
            return match.group(0)
        try:
            data = match.group(2).replace("_", " ").encode(codec)
            return quopri.decodestring(data, header=True).decode(codec)
        except Exception:
            return match.group(0)

    return _LENIENT_Q_WORD.sub(decode, _BETWEEN_WORDS.sub("?==?", text))  # RFC 2047: no space between words


def _alias_encoded_words(value: str) -> str:
    """Encoded words relabelled like bodies (``=?gb2312?`` → gb18030, ...): the label's real-world
    meaning is a superset, and the strict codec would turn the extra characters into U+FFFD."""
    if "=?" not in value:
        return value

    def relabel(match: re.Match) -> str:
        alias = _CHARSET_ALIASES.get(match.group(1).lower())
        return f"=?{alias}{match.group(2)}" if alias else match.group(0)

    return _EW_CHARSET.sub(relabel, value)


def _cut_header(value: str, limit: int) -> str:
    """At most ``limit`` characters of an unstructured header, cut before an encoded word the limit
    would split (its tail would show as ``=?utf-8?b?w6l0...``), else at the last space."""
    head = value[:limit]
    last = None
    for last in _ENCODED_WORD_START.finditer(head, max(0, limit - 1000)):  # noqa: B007  # the loop only keeps the last match
        pass
    if last is not None and not _ENCODED_WORD.match(head, last.start()):
        return head[: last.start()].rstrip()
    if not value[limit].isspace():
        space = head.rfind(" ", limit - 200)
        head = head[:space] if space > 0 else head
    return head.rstrip()


def _quote_address_names(value: str) -> str:
    """Quote a bare display name that holds an '@' (``alice@x.com <bob@y.com>``).

    RFC 5322 allows no '@' in an unquoted phrase, and the stdlib parsers then read the name as an
    address of its own (the real one being dropped, or kept as a second recipient). The address in
    angle brackets is the one mail is delivered from or to; the name stays the display name.
    """
    if "<" not in value or value.count("@") <= value.count("<"):
        return value
    elements: list[list[str]] = [[]]
    for token in _ADDRESS_TOKEN.findall(value):
        if token == ",":
            elements.append([])
        else:
            elements[-1].append(token)
    fixed = [_quote_element(tokens) for tokens in elements]
    return ",".join(fixed)


def _quote_element(tokens: list[str]) -> str:
    original = "".join(tokens)
    angle = next((i for i, t in enumerate(tokens) if t.startswith("<")), None)
    if angle is None or not any("@" in t for t in tokens[:angle] if not t.startswith(('"', "("))):
        return original
    if any(t.strip(" \t;") and not t.startswith("(") for t in tokens[angle + 1:]):
        return original  # something after the address: leave it to the parsers
    prefix, words = "", []
    for token in tokens[:angle]:
        if token.startswith("("):
            continue
        if token.startswith('"'):
            words.append(re.sub(r"\\(.)", r"\1", token[1:-1] if token.endswith('"') and len(token) > 1 else token[1:]))
            continue
        if ":" in token:  # a group name ("Team: ...") stays outside the quotes
            group, _, token = token.rpartition(":")
            prefix, words = prefix + "".join(words) + group + ":", []
        words.append(token)
    display = " ".join("".join(words).split())
    if not display:
        return original
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'{prefix} "{quoted}" {"".join(tokens[angle:])}'


def _addresses(name: str, value: str | None, st: _State) -> tuple[Address, ...]:
    if value is None or not value.strip():
        return ()
    value = _alias_encoded_words(_quote_address_names(value))
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
            found = [Address(email=_clean(a.addr_spec).strip(), name=_lenient_encoded_words(_clean(a.display_name)).strip())
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
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
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
