"""The real-world message corpus (tests/data/corpus) and an independent judge of its sources.

``source_check`` reads a message with the stdlib alone (no mailpipe code) and says whether every
byte of the text a reader sees (Subject, From/To/Cc, body text parts, attachment names) was valid
in its declared charset, and whether that text already holds mojibake or U+FFFD. The corpus tests
demand no U+FFFD and no mojibake from mailpipe exactly where the source had neither.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from pathlib import Path

__all__ = ["CORPUS", "EXPECTED_FILENAMES", "MOJIBAKE", "SPOOFS", "SourceCheck", "corpus_files", "has_mojibake", "source_check"]

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"

#: UTF-8 read as cp1252/latin-1: a lead byte (Â..ß) followed by what a continuation byte becomes.
MOJIBAKE = re.compile("[\u00c2-\u00df][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                      "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]|\u00e2\u20ac")

#: Attachment file names a reader must see, exactly, for files whose names are hard to get right.
EXPECTED_FILENAMES: dict[str, list[str]] = {
    "handwritten/eight_bit_utf8_filename.eml": ["ciële.txt"],
    "handwritten/folded_encoded_word_filename.eml": ["été résumé de la réunion du conseil d'administration.pdf"],
    "enmime/mail__mime-bad-8bit-filename.eml": ["管理.doc"],  # enmime's own test asserts this name
    "spamscope-mail-parser/mail_test_1.eml": ["ФНС_РФ558.zip"],
    "mikel-mail/attachment_emails__attachment_with_quoted_filename.eml": ["Eelanalüüsi päring.jpg"],
    "mikel-mail/multi_charset__japanese_attachment.eml": ["てすと.txt"],
    "mikel-mail/multi_charset__japanese_attachment_long_name.eml": ["かきくけこ" * 5 + ".txt"],
    "mime4j/russian-headers.eml": ["Список.doc"],
    "spamassassin/nice__unicode1.eml": ["документы для отдела кадров.pdf"],
    "nodemailer-mailparser/nodemailer.eml": ["image.png", "nyan cat ✔.gif", "notes.txt"],
    "spamscope-mail-parser/mail_test_11.eml": [
        "Prokuratura Rejonowa Warszawa-Śródmieście północ sygn. 2Ds. 137414 - RSK pracowników Skarbowych NSZZ "
        "Solidarność - Zarządzenie o odmowie dopuszczenia SOWP do udziału w postepowaniu.pdf"],
    "mail-mime-parser/m1015.eml": ["HasenundFrösche.txt"],
    "mail-mime-parser/m2011.eml": ["blueball.png", "HasenundFrösche.txt"],  # Eudora: raw 8-bit latin-1
    "mail-mime-parser/m2013.eml": ["HasenundFrösche.txt", "farmerandstork.txt"],
    "mail-mime-parser/m3004.eml": ["HasenundFrösche.txt"],  # PINE: RFC 2231 name*=
}

#: Corpus files whose From display name holds a different address, and the real sender.
SPOOFS: dict[str, str] = {
    "handwritten/spoof_display_address.eml": "mallory@evil.example",
    "handwritten/spoof_quoted_display_address.eml": "mallory@evil.example",
    "spamscope-mail-parser/mail_test_19.eml": "bob@example.com",
    # "jang.abcdef@xyzlinu" <jang.abcdef@xyzlinux12345678.it>: a truncated copy of the sender's own
    # address; a prefix is how look-alike domains are built too, so it is flagged all the same.
    "mimekit/issue358.eml": "jang.abcdef@xyzlinux12345678.it",
}

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_META = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
_READER_HEADERS = ("subject", "from", "to", "cc")


def corpus_files() -> list[Path]:
    """Every corpus message, in a stable order."""
    return sorted(p for p in CORPUS.rglob("*.eml"))


def has_mojibake(text: str) -> bool:
    return MOJIBAKE.search(text) is not None


@dataclass(frozen=True)
class SourceCheck:
    """``clean``: every reader-visible byte was valid in its declared charset (or UTF-8 when none was
    declared); ``strings``: that text as the stdlib decodes it (for the source's own mojibake)."""

    clean: bool
    strings: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def mojibake(self) -> bool:
        return any(has_mojibake(s) for s in self.strings)

    @property
    def replacement(self) -> bool:
        return any("\ufffd" in s for s in self.strings)


def _strict(data: bytes, charset: str | None) -> str:
    if charset:
        codec = codecs.lookup(charset.strip().strip("\"'"))
        if not getattr(codec, "_is_text_encoding", True):
            raise LookupError(charset)
        return data.decode(codec.name)
    return data.decode("ascii") if data.isascii() else data.decode("utf-8")


def _header_text(value: str, message_charset: str | None) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")  # raw 8-bit header bytes: RFC 6532 says UTF-8 ...
    except UnicodeDecodeError:
        if not message_charset:
            raise
        text = _strict(raw, message_charset)  # ... legacy clients wrote them in the body's charset
    out = []
    for m in _ENCODED_WORD.finditer(text):
        charset, kind, payload = m.group(1).split("*")[0], m.group(2).upper(), m.group(3)
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True) if kind == "B" else \
                quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"bad encoded word {m.group(0)[:40]}") from exc
        out.append(_strict(data, charset))
    return " ".join([_ENCODED_WORD.sub(" ", text)] + out)


def _message_charset(parts: list[Message]) -> str | None:
    for part in parts:
        if part.get_content_maintype() == "text" and part.get_content_charset():
            return part.get_content_charset()
    return None


def _text_parts(msg: Message) -> list[Message]:
    """Leaves a reader sees as text or by name: everything outside embedded messages."""
    parts, stack = [], [msg]
    while stack:
        part = stack.pop()
        if part.get_content_type() in ("message/rfc822", "message/global"):
            parts.append(part)
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed(payload))
        else:
            parts.append(part)
    return parts


def source_check(raw: bytes) -> SourceCheck:
    """Judge the source bytes with the stdlib only; never raises."""
    strings: list[str] = []
    reasons: list[str] = []
    try:
        msg = message_from_bytes(raw, policy=compat32)
    except Exception as exc:  # e.g. RecursionError on absurd nesting
        return SourceCheck(False, (), (f"stdlib parser failed: {type(exc).__name__}",))
    if b"\xef\xbf\xbd" in raw:
        reasons.append("source holds U+FFFD")
    parts = _text_parts(msg)
    charset = _message_charset(parts)
    for name, value in msg.raw_items():
        if name.strip().lower() in _READER_HEADERS:
            try:
                strings.append(_header_text(str(value), charset))
            except (UnicodeError, LookupError, ValueError) as exc:
                reasons.append(f"header {name}: {exc}"[:120])
    for part in parts:
        if any("Base64" in type(d).__name__ for d in part.defects):
            reasons.append("invalid base64")
        for name, value in part.raw_items():
            if name.strip().lower() in ("content-disposition", "content-type"):
                try:
                    str(value).encode("utf-8", "surrogateescape").decode("utf-8")
                except UnicodeDecodeError:
                    reasons.append(f"raw 8-bit {name} that is not UTF-8")
        if part.get_content_maintype() != "text" or part.get_filename() or part.get_content_disposition() == "attachment":
            continue
        data = part.get_payload(decode=True) or b""
        charset = part.get_content_charset()
        if not charset and part.get_content_type() == "text/html":
            meta = _META.search(data[:4096])
            charset = meta.group(1).decode("ascii") if meta else None
        try:
            strings.append(_strict(data, charset))
        except (UnicodeError, LookupError) as exc:
            reasons.append(f"text part ({charset}): {type(exc).__name__}")
    return SourceCheck(not reasons, tuple(strings), tuple(reasons))
