"""Storage in S3 (or any S3-compatible service: MinIO, moto in tests), through boto3."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.clients.storage.base import CHUNK_SIZE, DEFAULT_CONTENT_TYPE, StorageError, StorageNotFound, as_bytes, validate_key
from pipeline.clients.storage.memo import forget

__all__ = ["S3Storage"]

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _client_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))

_STYLES: dict[str, Literal["auto", "path", "virtual"]] = {"auto": "auto", "path": "path", "virtual": "virtual"}


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
        style = _STYLES.get(addressing_style or ("path" if endpoint_url else "auto"))
        if style is None:
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
        blob = as_bytes(data)
        forget(key)
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
        forget(key)
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
