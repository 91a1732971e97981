"""S3Storage over real HTTP against moto's S3 server: large objects, errors, URL parsing, bad endpoints."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from ops.settings import reset_settings
from pipeline.clients.storage import (
    CHUNK_SIZE,
    InvalidKey,
    S3Storage,
    StorageError,
    StorageNotFound,
    get_storage,
    storage_from_url,
)
from tests.harness.moto_server import moto_s3  # noqa: F401
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration

KEY = "org/o1/emails/e1/0-big.eml"


@pytest.fixture
def s3(moto_s3: str) -> Iterator[S3Storage]:  # noqa: F811
    """A fresh bucket (with a prefix) on the moto server for this test."""
    store = storage_from_url(f"s3://mp-{uuid.uuid4().hex[:12]}/tenant-a?endpoint_url={moto_s3}&region=us-east-1")
    assert isinstance(store, S3Storage)
    store.ensure_bucket()
    yield store


class TestS3Storage:
    def test_round_trip_20_mb(self, s3: S3Storage) -> None:
        """A 20 MB object comes back byte-identical through get and open_stream, with its content type."""
        data = os.urandom(20 * 1024 * 1024)
        s3.put(KEY, data, "message/rfc822")
        assert hashlib.sha256(s3.get(KEY)).digest() == hashlib.sha256(data).digest()
        digest = hashlib.sha256()
        sizes = []
        for chunk in s3.open_stream(KEY):
            digest.update(chunk)
            sizes.append(len(chunk))
        assert digest.digest() == hashlib.sha256(data).digest()
        assert max(sizes) == CHUNK_SIZE and sum(sizes) == len(data)
        head = s3.client.head_object(Bucket=s3.bucket, Key=f"tenant-a/{KEY}")
        assert head["ContentType"] == "message/rfc822"
        assert head["ContentLength"] == len(data)

    def test_put_is_idempotent_and_overwrites(self, s3: S3Storage) -> None:
        s3.put(KEY, b"one")
        s3.put(KEY, b"one")
        assert s3.get(KEY) == b"one"
        s3.put(KEY, b"two")
        assert s3.get(KEY) == b"two"
        s3.put("org/o1/empty", b"")
        assert s3.get("org/o1/empty") == b""

    def test_missing_key_is_not_found(self, s3: S3Storage) -> None:
        """NoSuchKey maps to StorageNotFound for get and (eagerly) for open_stream."""
        with pytest.raises(StorageNotFound):
            s3.get("org/o1/nope")
        with pytest.raises(StorageNotFound):
            s3.open_stream("org/o1/nope")

    def test_exists_and_delete(self, s3: S3Storage) -> None:
        assert not s3.exists(KEY)
        s3.put(KEY, b"x")
        assert s3.exists(KEY)
        s3.delete(KEY)
        assert not s3.exists(KEY)
        s3.delete(KEY)

    def test_prefix_isolates_tenants(self, s3: S3Storage, moto_s3: str) -> None:  # noqa: F811
        """Two prefixes in one bucket do not see each other's objects."""
        other = storage_from_url(f"s3://{s3.bucket}/tenant-b?endpoint_url={moto_s3}&region=us-east-1")
        s3.put(KEY, b"a")
        assert not other.exists(KEY)
        listed = s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
        assert [o["Key"] for o in listed] == [f"tenant-a/{KEY}"]

    def test_keys_validated_before_any_request(self, s3: S3Storage) -> None:
        with pytest.raises(InvalidKey):
            s3.put("../escape", b"x")

    def test_missing_bucket_is_clear_storage_error(self, moto_s3: str) -> None:  # noqa: F811
        """A bucket that does not exist is a StorageError naming it, not StorageNotFound."""
        store = storage_from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint_url={moto_s3}")
        with pytest.raises(StorageError, match="does not exist") as info:
            store.get(KEY)
        assert not isinstance(info.value, StorageNotFound)

    def test_ensure_bucket_is_idempotent_in_other_regions(self, moto_s3: str) -> None:  # noqa: F811
        store = storage_from_url(f"s3://mp-eu-{uuid.uuid4().hex[:8]}?endpoint_url={moto_s3}&region=eu-west-1")
        assert isinstance(store, S3Storage)
        store.ensure_bucket()
        store.ensure_bucket()
        store.put(KEY, b"eu")
        assert store.get(KEY) == b"eu"
        location = store.client.get_bucket_location(Bucket=store.bucket)["LocationConstraint"]
        assert location == "eu-west-1"


class TestFromUrl:
    def test_url_parsing(self, moto_s3: str) -> None:  # noqa: F811
        """Bucket, prefix, endpoint and region come from the URL; the client really uses them."""
        store = storage_from_url(f"s3://parsed-bucket/a/b/?endpoint_url={moto_s3}&region=eu-central-1")
        assert isinstance(store, S3Storage)
        assert (store.bucket, store.prefix, store.endpoint_url) == ("parsed-bucket", "a/b/", moto_s3)
        assert store.client.meta.region_name == "eu-central-1"
        assert store.client.meta.endpoint_url == moto_s3
        store.ensure_bucket()
        store.put("k", b"v")
        assert store.client.get_object(Bucket="parsed-bucket", Key="a/b/k")["Body"].read() == b"v"

    def test_get_storage_from_settings(self, moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
        """MAILPIPE_STORAGE_URL=s3://... gives an S3Storage from get_storage()."""
        monkeypatch.setenv("MAILPIPE_STORAGE_URL", f"s3://settings-bucket?endpoint_url={moto_s3}&region=us-east-1")
        reset_settings()
        store = get_storage()
        assert isinstance(store, S3Storage) and store.bucket == "settings-bucket"
        store.ensure_bucket()
        store.put(KEY, b"from settings")
        assert get_storage().get(KEY) == b"from settings"


class TestBadEndpoint:
    def test_refused_endpoint_is_quick_storage_error(self, moto_s3: str) -> None:  # noqa: F811
        """Nothing listening: every operation raises StorageError (no botocore exception leaks) within seconds."""
        store = storage_from_url(f"s3://bkt?endpoint_url=http://127.0.0.1:{free_port()}&region=us-east-1")
        assert isinstance(store, S3Storage)
        for call in (
            lambda: store.put(KEY, b"x"),
            lambda: store.get(KEY),
            lambda: store.exists(KEY),
            lambda: store.delete(KEY),
            lambda: store.open_stream(KEY),
            store.ensure_bucket,
        ):
            started = time.monotonic()
            with pytest.raises(StorageError, match="Could not connect") as info:
                call()
            assert time.monotonic() - started < 10
            assert not isinstance(info.value, StorageNotFound)
            assert "\n" not in str(info.value)
            assert info.value.__cause__ is None and info.value.__suppress_context__

    def test_client_side_validation_is_storage_error(self, s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        """botocore's own parameter checks (here: an invalid bucket name) surface as StorageError too."""
        monkeypatch.setattr(s3, "bucket", "Invalid_Bucket_Name!")
        with pytest.raises(StorageError) as info:
            s3.put(KEY, b"x")
        assert not isinstance(info.value, StorageNotFound)
