"""Where attachment bytes and raw messages live: a local directory, S3, or memory (tests).

Code talks to a ``Storage`` only and gets the process-wide one from :func:`get_storage`. Keys look
like ``org/<org_id>/emails/<email_id>/<part>-<name>``; build them with :func:`safe_key`, which turns
any filename into a valid key. Every backend checks keys the same way, so a key that works in
tests works in production. Failures surface as :class:`StorageError` (missing keys as
:class:`StorageNotFound`), never as raw ``OSError`` or botocore exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ops.private_files import PRIVATE_DIR, make_private_dirs, tighten

__all__ = [
    "CHUNK_SIZE",
    "InvalidKey",
    "LocalStorage",
    "MAX_KEY_LENGTH",
    "MemoryStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageNotFound",
    "get_storage",
    "reset_storage",
    "safe_key",
    "storage_from_url",
    "validate_key",
]

CHUNK_SIZE = 64 * 1024
MAX_KEY_LENGTH = 500  # Documents.storage_key and Emails.raw_key are VARCHAR(500)
MAX_SEGMENT_LENGTH = 150  # well under NAME_MAX (255) even with the temp-file prefix and suffix
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_KEY_RE = re.compile(r"[A-Za-z0-9._/-]+")
_SEGMENT_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}")
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


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


def _as_bytes(data: bytes) -> bytes:
    """Accept bytes-like data; refuse str so text is never stored with a guessed encoding."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"storage data must be bytes, not {type(data).__name__}")


class MemoryStorage:
    """A dict-backed Storage for unit tests; keeps content types so tests can check them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Store a copy of data under key."""
        validate_key(key)
        blob = _as_bytes(data)
        with self._lock:
            self.objects[key] = blob
            self.content_types[key] = content_type

    def get(self, key: str) -> bytes:
        """Return the stored bytes or raise StorageNotFound."""
        validate_key(key)
        with self._lock:
            try:
                return self.objects[key]
            except KeyError:
                raise StorageNotFound(f"no stored object {key!r}") from None

    def exists(self, key: str) -> bool:
        """Tell whether key is stored."""
        validate_key(key)
        with self._lock:
            return key in self.objects

    def delete(self, key: str) -> None:
        """Forget key if present."""
        validate_key(key)
        with self._lock:
            self.objects.pop(key, None)
            self.content_types.pop(key, None)

    def open_stream(self, key: str) -> Iterator[bytes]:
        """Chunks of the stored bytes."""
        blob = self.get(key)
        return (blob[i : i + CHUNK_SIZE] for i in range(0, len(blob), CHUNK_SIZE))

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self.objects)} objects)"


class LocalStorage:
    """Files under a root directory; writes are atomic (temp file, fsync, rename) so readers never see partial files.

    Everything is private to the process's user: files 0600 (``mkstemp``'s mode, kept by the
    rename), directories 0700, and the root is tightened to 0700 on the first write (a root left
    0755 by an older version would otherwise expose every attachment under it).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._root_ready = False

    def _make_dirs(self, directory: Path) -> None:
        if not self._root_ready:
            make_private_dirs(self.root)
            tighten(self.root, PRIVATE_DIR)
            self._root_ready = True
        make_private_dirs(directory)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Write data under key atomically; the content type is not kept on disk.

        ``durable=False`` skips the fsyncs: the write is still atomic against a killed process,
        but may be lost on power failure (for data that can be fetched again, like raw mail).
        """
        path = self._path(key)
        blob = _as_bytes(data)
        try:
            self._make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise StorageError(f"cannot write {key!r} under {self.root}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {key!r} under {self.root}: {exc.strerror or exc}") from None
            raise
        if durable:
            _fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        """Read the whole file or raise StorageNotFound."""
        with self._open(key) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise StorageError(f"cannot read {key!r} under {self.root}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        """Tell whether a regular file is stored under key."""
        path = self._path(key)
        try:
            return path.is_file()
        except OSError as exc:
            raise StorageError(f"cannot check {key!r} under {self.root}: {exc.strerror or exc}") from None

    def delete(self, key: str) -> None:
        """Unlink the file; missing is fine (empty directories are left for concurrent writers)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            pass
        except OSError as exc:
            if not path.is_dir():
                raise StorageError(f"cannot delete {key!r} under {self.root}: {exc.strerror or exc}") from None

    def open_stream(self, key: str) -> Iterator[bytes]:
        """Open now (so a missing key fails here) and read CHUNK_SIZE chunks lazily."""
        return self._chunks(key, self._open(key))

    def _open(self, key: str) -> IO[bytes]:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StorageNotFound(f"no stored object {key!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r} under {self.root}: {exc.strerror or exc}") from None

    def _chunks(self, key: str, fh: IO[bytes]) -> Iterator[bytes]:
        with fh:
            while True:
                try:
                    chunk = fh.read(CHUNK_SIZE)
                except OSError as exc:
                    raise StorageError(f"cannot read {key!r} under {self.root}: {exc.strerror or exc}") from None
                if not chunk:
                    return
                yield chunk

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _client_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Objects in an S3 (or S3-compatible) bucket under an optional prefix; credentials from the AWS chain."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("S3 storage needs a bucket name, e.g. s3://my-bucket")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region
        style = addressing_style or ("path" if endpoint_url else "auto")
        if style not in {"auto", "path", "virtual"}:
            raise ValueError("S3 addressing_style must be auto, path or virtual")
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},  # attempts including the first
            s3={"addressing_style": style},
            signature_version="s3v4",
            request_checksum_calculation="when_required",  # we send Content-MD5; S3-compatibles choke on CRC trailers
        )
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        """Build from ``s3://bucket/prefix?endpoint_url=...&region=...&addressing_style=path``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 storage URL: {url!r}; expected s3://bucket/optional/prefix")
        query = parse_qs(parts.query, keep_blank_values=True)
        known = {"endpoint_url", "region", "addressing_style"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ValueError(f"unknown S3 storage URL parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        opts = {k: v[-1] for k, v in query.items() if v and v[-1]}
        return cls(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=opts.get("endpoint_url"),
            region=opts.get("region"),
            addressing_style=opts.get("addressing_style"),
        )

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        where = f"s3://{self.bucket}/{self.prefix}{key}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, ClientError):
            code = _client_error_code(exc)
            if code in _MISSING_CODES:
                return StorageNotFound(f"no stored object {key!r}")
            if code == "NoSuchBucket":
                return StorageError(f"cannot {action} {where}: bucket {self.bucket!r} does not exist")
            message = exc.response.get("Error", {}).get("Message") or code
            return StorageError(f"cannot {action} {where}: {code}: {message}")
        text = " ".join(str(exc).split()) or type(exc).__name__
        return StorageError(f"cannot {action} {where}: {text}")

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Upload with its content type and a Content-MD5 the server verifies."""
        full = self._key(key)
        blob = _as_bytes(data)
        md5 = base64.b64encode(hashlib.md5(blob, usedforsecurity=False).digest()).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=blob, ContentType=content_type, ContentMD5=md5)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("write", key, exc) from None

    def get(self, key: str) -> bytes:
        """Download the whole object or raise StorageNotFound."""
        body = self._open(key)
        try:
            return bytes(body.read())
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error("read", key, exc) from None
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        """HEAD the object; any answer but found/not-found is a StorageError."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _client_error_code(exc) in _MISSING_CODES:
                return False
            raise self._error("check", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("check", key, exc) from None
        return True

    def delete(self, key: str) -> None:
        """Delete the object; S3 treats a missing key as success."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _client_error_code(exc) not in _MISSING_CODES:
                raise self._error("delete", key, exc) from None
        except BotoCoreError as exc:
            raise self._error("delete", key, exc) from None

    def open_stream(self, key: str) -> Iterator[bytes]:
        """Start the download now (so a missing key fails here) and yield CHUNK_SIZE chunks."""
        return self._chunks(key, self._open(key))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (tests and first start)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _client_error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise self._error("check bucket", "", exc) from None
        except BotoCoreError as exc:
            raise self._error("check bucket", "", exc) from None
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.region or self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _client_error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._error("create bucket", "", exc) from None
        except BotoCoreError as exc:
            raise self._error("create bucket", "", exc) from None

    def _open(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error("read", key, exc) from None

    def _chunks(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error("read", key, exc) from None
        finally:
            body.close()

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}{endpoint})"


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
    """Build a backend from file:///abs/path, file://./relative, s3://bucket/prefix?... or memory://."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return LocalStorage(_file_root(url))
    if scheme == "s3":
        return S3Storage.from_url(url)
    if scheme == "memory":
        return MemoryStorage()
    hint = "use file:///abs/path, file://./relative or s3://bucket/prefix?endpoint_url=...&region=..."
    if not scheme:
        raise ValueError(f"storage URL {url!r} has no scheme; {hint}")
    raise ValueError(f"unsupported storage URL scheme {scheme!r}; {hint}")


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, str, int], Storage] | None = None


def get_storage() -> Storage:
    """The process-wide backend for get_settings().storage_url, rebuilt if the URL, cwd or pid changes."""
    global _cached
    from ops.settings import get_settings

    url = get_settings().storage_url
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    ident = (url, cwd, os.getpid())  # relative file:// URLs follow cwd; forked workers get their own client
    with _cache_lock:
        if _cached is None or _cached[0] != ident:
            _cached = (ident, storage_from_url(url))
        return _cached[1]


def reset_storage() -> None:
    """Forget the cached backend (tests)."""
    global _cached
    with _cache_lock:
        _cached = None
