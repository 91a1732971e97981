"""Where attachment bytes and raw messages live: a local directory or S3, one backend per module.

Code talks to a :class:`Storage` only and gets the process-wide one from :func:`get_storage`
(``MAILPIPE_STORAGE_URL``). Failures surface as :class:`StorageError` (missing keys as
:class:`StorageNotFound`), never as raw ``OSError`` or botocore exceptions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from ops.settings import get_settings
from pipeline.clients.storage.base import (
    CHUNK_SIZE,
    MAX_KEY_LENGTH,
    InvalidKey,
    Storage,
    StorageError,
    StorageNotFound,
    safe_key,
    validate_key,
)
from pipeline.clients.storage.local import LocalStorage
from pipeline.clients.storage.memo import MEMO
from pipeline.clients.storage.s3 import S3Storage

__all__ = ["CHUNK_SIZE", "MAX_KEY_LENGTH", "InvalidKey", "LocalStorage", "S3Storage", "Storage", "StorageError", "StorageNotFound",
           "forget_raw", "get_storage", "put_raw", "read_raw", "reset_storage", "safe_key", "storage_from_url", "validate_key"]


def _file_root(url: str) -> str:
    """The directory named by file:///abs/path, file://./relative or file:relative."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"file storage URL {url!r} must not have a query or fragment")
    if parts.netloc in ("", "localhost"):
        path = unquote(parts.path)
    elif parts.netloc in (".", ".."):
        path = parts.netloc + unquote(parts.path)
    else:
        raise ValueError(f"file storage URL {url!r} names a host; use file:///abs/path or file://./relative")
    if not path or path == "/":
        raise ValueError(f"file storage URL {url!r} needs a directory, e.g. file:///var/lib/mailpipe/attachments")
    return path


def storage_from_url(url: str) -> Storage:
    """Build a backend from file:///abs/path, file://./relative or s3://bucket/prefix?..."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return LocalStorage(_file_root(url))
    if scheme == "s3":
        return S3Storage.from_url(url)
    hint = "use file:///abs/path, file://./relative or s3://bucket/prefix?endpoint_url=...&region=..."
    if not scheme:
        raise ValueError(f"storage URL {url!r} has no scheme; {hint}")
    raise ValueError(f"unsupported storage URL scheme {scheme!r}; {hint}")


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, str, int], Storage] | None = None


def get_storage() -> Storage:
    """The process-wide backend for get_settings().storage_url, rebuilt if the URL, cwd or pid changes."""
    global _cached
    url = get_settings().storage_url
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    ident = (url, cwd, os.getpid())  # relative file:// URLs follow cwd; forked workers get their own client
    with _cache_lock:
        if _cached is None or _cached[0] != ident:
            _cached = (ident, storage_from_url(url))
            MEMO.clear()  # what it remembered was written to another backend
        return _cached[1]


def reset_storage() -> None:
    """Forget the cached backend and the raw messages remembered in memory (tests)."""
    global _cached
    with _cache_lock:
        _cached = None
    MEMO.clear()


def _memo_cap() -> int:
    cap = get_settings().raw_cache_mb * 2**20
    if cap != MEMO.max_bytes:
        MEMO.resize(cap)
    return cap


def put_raw(key: str, data: bytes) -> None:
    """Store a raw message (atomic, not fsynced: the server holds the original) and keep its bytes in
    this process's memory (``MAILPIPE_RAW_CACHE_MB``) for a stage running in the same process."""
    get_storage().put(key, data, "message/rfc822", durable=False)
    if _memo_cap():
        MEMO.remember(key, data)


def read_raw(key: str) -> bytes:
    """A raw message: from this process's memory of recent writes and reads, else from storage (then
    remembered). Raises StorageError like ``get`` when storage has none (a deleted object is never
    served from memory: every backend's put and delete forget the key)."""
    blob = MEMO.recall(key)
    if blob is not None:
        return blob
    blob = get_storage().get(key)
    if _memo_cap():
        MEMO.remember(key, blob)
    return blob


def forget_raw(keys: Iterable[str | None]) -> None:
    """Drop raw messages from memory once no stage of this batch reads them again."""
    for key in keys:
        if key:
            MEMO.forget(key)
