"""Storage's shared part: the interface every backend implements, its errors, and the key rules.

Keys look like ``org/<org_id>/emails/<email_id>/<part>-<name>``; build them with :func:`safe_key`,
which turns any filename into a valid key. Every backend checks keys the same way
(:func:`validate_key`), so a key that works in tests works in production.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

__all__ = ["CHUNK_SIZE", "DEFAULT_CONTENT_TYPE", "MAX_KEY_LENGTH", "InvalidKey", "Storage", "StorageError", "StorageNotFound",
           "as_bytes", "safe_key", "validate_key"]

CHUNK_SIZE = 64 * 1024
MAX_KEY_LENGTH = 500  # Documents.storage_key and Emails.raw_key are VARCHAR(500)
MAX_SEGMENT_LENGTH = 150  # well under NAME_MAX (255) even with the temp-file prefix and suffix
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_KEY_RE = re.compile(r"[A-Za-z0-9._/-]+")
_SEGMENT_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}")


class StorageError(Exception):
    """The storage backend failed or is misconfigured; the message is one readable line."""


class StorageNotFound(StorageError):
    """No object is stored under the key."""


class InvalidKey(StorageError, ValueError):
    """The key is not a safe relative path of [A-Za-z0-9._/-] segments."""


@runtime_checkable
class Storage(Protocol):
    """Blob storage for attachments and raw messages, addressed by validated keys."""

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Store data under key, replacing any previous object (idempotent)."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes under key; raise StorageNotFound if there are none."""
        ...

    def exists(self, key: str) -> bool:
        """Tell whether an object is stored under key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under key; a missing key is not an error."""
        ...

    def open_stream(self, key: str) -> Iterator[bytes]:
        """Return an iterator of CHUNK_SIZE chunks; raise StorageNotFound before yielding anything."""
        ...


def validate_key(key: str) -> str:
    """Return key unchanged if it is safe for every backend; raise InvalidKey otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"storage key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if "\x00" in key:
        raise InvalidKey("storage key contains a NUL character")
    if key.startswith("/"):
        raise InvalidKey(f"storage key {key!r} is absolute; keys are relative like org/<id>/...")
    if ".." in key:
        raise InvalidKey(f"storage key {key!r} contains '..'")
    if not _KEY_RE.fullmatch(key):
        raise InvalidKey(f"storage key {key!r} has characters outside [A-Za-z0-9._/-]; build it with safe_key()")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"storage key {key!r} has an empty path segment")
        if segment.startswith("."):
            raise InvalidKey(f"storage key {key!r} has a segment starting with '.'")
    return key


def _safe_segment(part: str | int) -> str:
    """Turn one arbitrary string into one valid key segment (lossy, readable, bounded, extension kept)."""
    text = unicodedata.normalize("NFKD", str(part))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    stem, dot, ext = text.rpartition(".")
    if not (dot and stem.strip(".") and _EXTENSION.fullmatch(ext)):
        stem, ext = text, ""
    stem = re.sub(r"[._]*\.[._]*", ".", _SEGMENT_BAD.sub("_", stem)).strip(".") or "_"  # no '..', no leading dot
    ext = f".{ext}" if ext else ""
    if len(stem) + len(ext) > MAX_SEGMENT_LENGTH:
        digest = hashlib.sha256(str(part).encode("utf-8", "surrogatepass")).hexdigest()[:12]
        stem = f"{stem[: MAX_SEGMENT_LENGTH - len(ext) - 13]}-{digest}"
    return stem + ext


def safe_key(*parts: str | int) -> str:
    """Build a valid key from arbitrary strings, one path segment per part ('/' inside a part is replaced)."""
    if not parts:
        raise InvalidKey("safe_key() needs at least one part")
    return validate_key("/".join(_safe_segment(p) for p in parts))


def as_bytes(data: bytes) -> bytes:
    """Accept bytes-like data; refuse str so text is never stored with a guessed encoding."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"storage data must be bytes, not {type(data).__name__}")
