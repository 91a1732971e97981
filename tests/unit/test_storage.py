"""pipeline.clients.storage: the local backend and the tests' in-memory one, key rules, URL parsing, the cached backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.settings import reset_settings
from pipeline.clients.storage import (
    CHUNK_SIZE,
    MAX_KEY_LENGTH,
    InvalidKey,
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    StorageNotFound,
    get_storage,
    reset_storage,
    safe_key,
    storage_from_url,
    validate_key,
)
from tests.harness.memory_storage import MemoryStorage

ROOT = Path(__file__).resolve().parents[2]
KEY = "org/o1/emails/e1/0-report.pdf"
BAD_KEYS = [
    "",
    "/etc/passwd",
    "../secret",
    "org/../../etc/passwd",
    "org/o1/..",
    "org/./x",
    "org//x",
    "org/x/",
    ".hidden",
    "org/a\x00b",
    "org/a b",
    "org\\x",
    "org/résumé.pdf",
    "x" * (MAX_KEY_LENGTH + 1),
]


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each behavioural test runs against both offline backends."""
    return LocalStorage(tmp_path / "blobs") if request.param == "local" else MemoryStorage()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class TestContract:
    def test_round_trip_and_overwrite(self, storage: Storage) -> None:
        """put/get return the same bytes; putting the same bytes again is fine; a new put replaces."""
        storage.put(KEY, b"%PDF-1.7 hello", "application/pdf")
        storage.put(KEY, b"%PDF-1.7 hello", "application/pdf")
        assert storage.get(KEY) == b"%PDF-1.7 hello"
        storage.put(KEY, b"v2")
        assert storage.get(KEY) == b"v2"
        storage.put("org/o1/emails/e1/empty", b"")
        assert storage.get("org/o1/emails/e1/empty") == b""

    def test_missing_key_raises_not_found(self, storage: Storage) -> None:
        """get and open_stream of an absent key raise StorageNotFound (a StorageError) at call time."""
        with pytest.raises(StorageNotFound):
            storage.get(KEY)
        with pytest.raises(StorageNotFound):
            storage.open_stream(KEY)
        assert issubclass(StorageNotFound, StorageError)

    def test_exists_and_delete(self, storage: Storage) -> None:
        """exists follows put/delete; deleting a missing key is not an error."""
        assert not storage.exists(KEY)
        storage.put(KEY, b"x")
        assert storage.exists(KEY)
        storage.delete(KEY)
        assert not storage.exists(KEY)
        storage.delete(KEY)
        storage.delete("org/never/was")

    def test_stream_chunks_reassemble(self, storage: Storage) -> None:
        """open_stream yields 64 KiB chunks (the last may be shorter) that join to the object."""
        data = os.urandom(3 * CHUNK_SIZE + 123)
        storage.put(KEY, data)
        chunks = list(storage.open_stream(KEY))
        assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 123]
        assert b"".join(chunks) == data
        storage.put("org/o1/small", b"tiny")
        assert list(storage.open_stream("org/o1/small")) == [b"tiny"]

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_every_operation_rejects_bad_keys(self, storage: Storage, key: str) -> None:
        """Traversal, absolute paths, NUL, odd characters and empty segments are InvalidKey everywhere."""
        for call in (
            lambda: storage.put(key, b"x"),
            lambda: storage.get(key),
            lambda: storage.exists(key),
            lambda: storage.delete(key),
            lambda: storage.open_stream(key),
        ):
            with pytest.raises(InvalidKey):
                call()

    def test_data_must_be_bytes(self, storage: Storage) -> None:
        """Text is refused instead of stored with a guessed encoding; bytearray/memoryview are accepted."""
        with pytest.raises(TypeError):
            storage.put(KEY, "text")  # type: ignore[arg-type]
        storage.put(KEY, memoryview(bytearray(b"abc")))  # type: ignore[arg-type]
        assert storage.get(KEY) == b"abc"

    def test_backends_satisfy_protocol(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)


class TestKeys:
    def test_valid_keys_pass_through(self) -> None:
        for key in (KEY, "org/o1/emails/e1/raw.eml", "a", "A-Z_0.9/x-y"):
            assert validate_key(key) == key

    def test_invalid_key_is_a_value_error_too(self) -> None:
        """Callers may catch InvalidKey as StorageError or as ValueError."""
        with pytest.raises(ValueError, match=r"\.\."):
            validate_key("org/../x")

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("report.pdf", "report.pdf"),
            ("Quarterly report (final).pdf", "Quarterly_report_final_.pdf"),
            ("résumé – été.docx", "resume_ete.docx"),
            ("../../etc/passwd", "etc_passwd"),
            ("a/b\\c", "a_b_c"),
            ("..", "_"),
            (".bashrc", "bashrc"),
            ("file..name...txt", "file.name.txt"),
            ("nul\x00byte", "nul_byte"),
            ("日本語.pdf", "_.pdf"),
            ("", "_"),
            ("ﬁle.txt", "file.txt"),
        ],
    )
    def test_safe_key_sanitizes_filenames(self, name: str, expected: str) -> None:
        """Odd filenames become one readable, valid segment; the rest of the key is untouched."""
        key = safe_key("org", "o1", "emails", "e1", name)
        assert key == f"org/o1/emails/e1/{expected}"
        assert validate_key(key) == key
        assert validate_key(safe_key("org", "o1", f"3-{name}"))

    def test_safe_key_accepts_ints_and_keeps_one_segment_per_part(self) -> None:
        assert safe_key("org", 42, "x/y") == "org/42/x_y"

    def test_safe_key_truncates_long_names_keeping_extension(self) -> None:
        """Very long names are cut with a hash (so two long names stay distinct) and keep the extension."""
        a = safe_key("org", "o1", "a" * 400 + "1.pdf")
        b = safe_key("org", "o1", "a" * 400 + "2.pdf")
        assert a != b
        assert a.endswith(".pdf") and b.endswith(".pdf")
        assert len(a.rsplit("/", 1)[1]) <= 150

    def test_safe_key_output_always_valid(self) -> None:
        """Whatever goes in, the result passes validate_key."""
        samples = ["", ".", "..", "...", "/", "//", " ", "\x00", "\u202e", "💾.bin", "-", "a" * 1000, "ȧ̸̢", "\ud800"]
        for s in samples:
            validate_key(safe_key(s, s))

    @given(st.lists(st.one_of(st.text(), st.integers()), min_size=1, max_size=5))
    def test_safe_key_property(self, parts: list[str | int]) -> None:
        """For any parts: one segment each, valid, deterministic, and within a local file name's limits."""
        key = safe_key(*parts)
        assert validate_key(key) == key == safe_key(*parts)
        segments = key.split("/")
        assert len(segments) == len(parts)
        assert all(len(seg) <= 150 and not seg.startswith(".") for seg in segments)

    def test_safe_key_needs_parts(self) -> None:
        with pytest.raises(InvalidKey):
            safe_key()


class TestLocalStorage:
    def test_files_land_under_root_with_key_path(self, tmp_path: Path) -> None:
        """The key is the relative path under the root, and nothing else is left behind."""
        store = LocalStorage(tmp_path / "root")
        store.put(KEY, b"data")
        store.put(KEY, b"data2")
        assert (tmp_path / "root" / KEY).read_bytes() == b"data2"
        assert _files(tmp_path / "root") == [KEY]

    def test_failed_write_keeps_old_file_and_no_temp(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """If the write fails before the rename, the old object stays whole and the temp file is removed."""
        store = LocalStorage(tmp_path / "root")
        store.put(KEY, b"old")

        def broken_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(StorageError, match="No space left on device"):
            store.put(KEY, b"new" * 1000)
        monkeypatch.undo()
        assert store.get(KEY) == b"old"
        assert _files(tmp_path / "root") == [KEY]

    def test_killed_mid_write_never_exposes_partial_file(self, tmp_path: Path) -> None:
        """A worker SIGKILLed between writing and renaming leaves the final name absent (or old), never truncated."""
        root = tmp_path / "root"
        script = textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {str(ROOT)!r})
            from pipeline.clients.storage import LocalStorage
            store = LocalStorage({str(root)!r})
            store.put("org/o1/old", b"old")
            os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
            store.put("org/o1/new", b"x" * 1_000_000)
            store.put("org/o1/old", b"y" * 1_000_000)
            """
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        assert proc.returncode == -9, proc.stderr
        store = LocalStorage(root)
        assert not store.exists("org/o1/new")
        with pytest.raises(StorageNotFound):
            store.get("org/o1/new")
        assert store.get("org/o1/old") == b"old"
        leftovers = [p.name for p in (root / "org/o1").iterdir()]
        assert sorted(n for n in leftovers if not n.startswith(".")) == ["old"]
        assert all(n.startswith(".new.") and n.endswith(".tmp") for n in leftovers if n.startswith("."))

    def test_temp_files_cannot_collide_with_keys(self) -> None:
        """Temp files start with '.', which no valid key segment may."""
        with pytest.raises(InvalidKey):
            validate_key("org/o1/.new.abc123.tmp")

    def test_directory_and_file_conflicts_are_storage_errors(self, tmp_path: Path) -> None:
        """A key that is a 'directory' of another key reads as missing; writing through a file is a StorageError."""
        store = LocalStorage(tmp_path / "root")
        store.put("org/o1/a/b", b"x")
        assert not store.exists("org/o1/a")
        with pytest.raises(StorageNotFound):
            store.get("org/o1/a")
        store.delete("org/o1/a")
        with pytest.raises(StorageError):
            store.put("org/o1/a/b/c", b"y")
        with pytest.raises(StorageNotFound):
            store.get("org/o1/a/b/c")
        assert not store.exists("org/o1/a/b/c")
        store.delete("org/o1/a/b/c")
        assert store.get("org/o1/a/b") == b"x"

    def test_unreadable_root_is_storage_error(self, tmp_path: Path) -> None:
        """A root that is a file (misconfiguration) gives a StorageError naming the key, not an OSError."""
        (tmp_path / "afile").write_bytes(b"")
        store = LocalStorage(tmp_path / "afile")
        with pytest.raises(StorageError, match="cannot write 'org/x'"):
            store.put("org/x", b"1")

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
    def test_stream_closes_file_when_abandoned(self, tmp_path: Path) -> None:
        """Stopping a download early closes the file."""
        store = LocalStorage(tmp_path / "root")
        store.put(KEY, b"z" * (CHUNK_SIZE * 2))
        target = str(tmp_path / "root" / KEY)

        def open_count() -> int:
            return sum(os.path.realpath(f"/proc/self/fd/{fd}") == target for fd in os.listdir("/proc/self/fd"))

        stream = store.open_stream(KEY)
        assert open_count() == 1
        assert len(next(stream)) == CHUNK_SIZE
        stream.close()  # type: ignore[attr-defined]
        assert open_count() == 0


class TestMemoryStorage:
    def test_keeps_content_type(self) -> None:
        store = MemoryStorage()
        store.put(KEY, b"x", "application/pdf")
        store.put("org/o1/raw", b"y")
        assert store.content_types == {KEY: "application/pdf", "org/o1/raw": "application/octet-stream"}
        store.delete(KEY)
        assert list(store.objects) == ["org/o1/raw"] and list(store.content_types) == ["org/o1/raw"]

    def test_stream_of_empty_object_is_empty(self) -> None:
        store = MemoryStorage()
        store.put(KEY, b"")
        assert list(store.open_stream(KEY)) == []


class TestFromUrl:
    def test_file_urls(self, tmp_path: Path) -> None:
        """file:///abs, file://localhost/abs, file://./rel and file:rel all name directories."""
        s = storage_from_url(f"file://{tmp_path}/att")
        assert isinstance(s, LocalStorage) and s.root == tmp_path / "att"
        s = storage_from_url(f"file://localhost{tmp_path}/att")
        assert isinstance(s, LocalStorage) and s.root == tmp_path / "att"
        s = storage_from_url("file://./attachments")
        assert isinstance(s, LocalStorage) and s.root == Path.cwd() / "attachments"
        s = storage_from_url("file:relative/dir")
        assert isinstance(s, LocalStorage) and s.root == Path.cwd() / "relative/dir"
        s = storage_from_url(f"file://{tmp_path}/with%20space")
        assert isinstance(s, LocalStorage) and s.root == tmp_path / "with space"

    @pytest.mark.parametrize("url", ["file://", "file:///", "file://somehost/x", "file:///x?y=1"])
    def test_bad_file_urls(self, url: str) -> None:
        with pytest.raises(ValueError):
            storage_from_url(url)

    @pytest.mark.parametrize("url", ["ftp://host/x", "gs://bucket", "/var/lib/mailpipe", "attachments"])
    def test_unknown_scheme_is_one_line_value_error(self, url: str) -> None:
        with pytest.raises(ValueError, match="file:///") as info:
            storage_from_url(url)
        assert "\n" not in str(info.value)

    def test_memory_is_not_a_product_backend(self) -> None:
        """The in-memory store is a test double (tests/harness): a deployment cannot pick it by accident."""
        with pytest.raises(ValueError, match="unsupported storage URL scheme 'memory'"):
            storage_from_url("memory://")

    def test_s3_url_offline(self) -> None:
        """Parsing an S3 URL needs no network: bucket, prefix, endpoint, region and path-style addressing."""
        s = storage_from_url("s3://bkt/mail/prod/?endpoint_url=http://127.0.0.1:9000&region=eu-west-1")
        assert isinstance(s, S3Storage)
        assert (s.bucket, s.prefix, s.endpoint_url, s.region) == ("bkt", "mail/prod/", "http://127.0.0.1:9000", "eu-west-1")
        cfg = s.client.meta.config
        assert (cfg.connect_timeout, cfg.read_timeout) == (5, 30)
        assert cfg.retries == {"total_max_attempts": 3, "mode": "standard"}
        assert cfg.s3 == {"addressing_style": "path"}
        assert s.client.meta.region_name == "eu-west-1"

    @pytest.mark.parametrize(
        "url",
        ["s3://bkt?endpoint=http://x", "s3://bkt?addressing_style=sideways", "s3://bkt/../up", "s3:///nobucket"],
    )
    def test_bad_s3_urls(self, url: str) -> None:
        with pytest.raises(ValueError):
            storage_from_url(url)


class TestGetStorage:
    def test_uses_settings_and_is_cached(self, tmp_path: Path) -> None:
        """get_storage follows MAILPIPE_STORAGE_URL and returns the same object until reset."""
        s = get_storage()
        assert isinstance(s, LocalStorage) and s.root == tmp_path / "attachments"
        assert get_storage() is s
        reset_storage()
        assert get_storage() is not s

    def test_follows_changed_settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A new storage URL (after settings are reloaded) gives a new backend even without reset_storage."""
        first = get_storage()
        monkeypatch.setenv("MAILPIPE_STORAGE_URL", f"file://{tmp_path}/other")
        reset_settings()
        second = get_storage()
        assert second is not first
        assert isinstance(second, LocalStorage) and second.root == tmp_path / "other"

    def test_round_trip_through_process_storage(self, tmp_path: Path) -> None:
        get_storage().put(KEY, b"hello")
        assert (tmp_path / "attachments" / KEY).read_bytes() == b"hello"


class TestLocalTempFiles:
    def test_temp_name_is_per_process_and_thread_and_private(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The temp file is named after the process's token and the thread, created 0600, then renamed."""
        import stat
        import threading

        store = LocalStorage(tmp_path / "root")
        seen: list[tuple[str, int]] = []
        real_replace = os.replace

        def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            seen.append((Path(src).name, stat.S_IMODE(os.stat(src).st_mode)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        store.put(KEY, b"one")
        done = threading.Thread(target=store.put, args=(KEY, b"two"))
        done.start()
        done.join()
        (first, mode1), (second, mode2) = seen
        assert first.startswith(".0-report.pdf.") and first.endswith(".tmp") and mode1 == mode2 == 0o600
        assert first != second and first.split(".")[-2].split("-")[0] == second.split(".")[-2].split("-")[0]
        assert store.get(KEY) == b"two" and _files(tmp_path / "root") == [KEY]

    def test_stale_temp_of_a_dead_writer_is_replaced(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A temp file left under this very name (a killed process whose pid and token recurred) is not an error."""
        from pipeline.clients.storage import local

        monkeypatch.setattr(local, "_temp_tag", lambda: "fixed-1")
        store = LocalStorage(tmp_path / "root")
        store.put(KEY, b"first")
        stale = tmp_path / "root" / "org/o1/emails/e1/.0-report.pdf.fixed-1.tmp"
        stale.write_bytes(b"half a file")
        store.put(KEY, b"second")
        assert store.get(KEY) == b"second" and _files(tmp_path / "root") == [KEY]

    def test_directory_removed_behind_its_back_is_made_again(self, tmp_path: Path) -> None:
        """Known directories are remembered; one deleted since is created again on the next write."""
        import shutil

        store = LocalStorage(tmp_path / "root")
        store.put(KEY, b"x")
        shutil.rmtree(tmp_path / "root" / "org")
        store.put(KEY, b"y")
        assert store.get(KEY) == b"y"

    def test_concurrent_writers_of_one_key_never_expose_a_mix(self, tmp_path: Path) -> None:
        """Threads writing the same key: every read sees one writer's whole bytes; no temp file is left."""
        import threading

        store = LocalStorage(tmp_path / "root")
        blobs = [bytes([65 + i]) * 300_000 for i in range(4)]
        store.put(KEY, blobs[0])
        bad: list[bytes] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                got = store.get(KEY)
                if got not in blobs:
                    bad.append(got[:10])

        def write(blob: bytes) -> None:
            for _ in range(20):
                store.put(KEY, blob, durable=False)

        reader = threading.Thread(target=read)
        reader.start()
        writers = [threading.Thread(target=write, args=(b,)) for b in blobs]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        stop.set()
        reader.join()
        assert bad == [] and _files(tmp_path / "root") == [KEY]


class TestRawMemo:
    RAW = "raw/acct1/abc.eml"

    def test_lru_cap_and_oversized_blobs(self) -> None:
        from pipeline.clients.storage.memo import BlobMemo

        memo = BlobMemo(10)
        memo.remember("a", b"1234")
        memo.remember("b", b"5678")
        assert memo.recall("a") == b"1234"  # a is now the most recent
        memo.remember("c", b"90ab")  # 12 bytes > 10: the least recently used (b) goes
        assert memo.recall("b") is None and memo.recall("a") == b"1234" and memo.recall("c") == b"90ab"
        assert memo.size == 8
        memo.remember("big", b"x" * 11)  # larger than the whole cap: not kept, nothing evicted for it
        assert memo.recall("big") is None and len(memo) == 2
        memo.remember("a", b"zz")  # replacing keeps the byte count right
        assert memo.size == 6
        memo.forget("a")
        memo.forget("nothing")
        assert memo.size == 4 and memo.recall("a") is None
        memo.resize(3)
        assert len(memo) == 0 and memo.size == 0

    def test_fetched_raw_is_read_from_memory_in_the_same_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """put_raw writes the file (the source of truth) and keeps the bytes; read_raw then skips storage."""
        from pipeline.clients.storage import put_raw, read_raw

        put_raw(self.RAW, b"raw message")
        assert get_storage().get(self.RAW) == b"raw message"

        def no_reads(key: str) -> bytes:
            raise AssertionError("read from storage")

        monkeypatch.setattr(get_storage(), "get", no_reads)
        assert read_raw(self.RAW) == b"raw message"

    def test_read_through_after_a_miss(self, tmp_path: Path) -> None:
        """Another process wrote it: read_raw reads storage once, then remembers."""
        from pipeline.clients.storage import read_raw
        from pipeline.clients.storage.memo import MEMO

        LocalStorage(tmp_path / "attachments").put(self.RAW, b"from elsewhere")
        assert MEMO.recall(self.RAW) is None
        assert read_raw(self.RAW) == b"from elsewhere"
        assert MEMO.recall(self.RAW) == b"from elsewhere"

    def test_deleted_raw_is_never_served_from_memory(self) -> None:
        """A delete (or a new write) through the backend forgets the key: storage stays the truth."""
        from pipeline.clients.storage import put_raw, read_raw

        put_raw(self.RAW, b"v1")
        get_storage().delete(self.RAW)
        with pytest.raises(StorageNotFound):
            read_raw(self.RAW)
        put_raw(self.RAW, b"v1")
        get_storage().put(self.RAW, b"v2")
        assert read_raw(self.RAW) == b"v2"

    def test_forget_raw_and_cap_zero(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """forget_raw drops what no stage reads again; MAILPIPE_RAW_CACHE_MB=0 keeps nothing in memory."""
        from pipeline.clients.storage import forget_raw, put_raw
        from pipeline.clients.storage.memo import MEMO

        put_raw(self.RAW, b"abc")
        forget_raw([self.RAW, None])
        assert MEMO.recall(self.RAW) is None
        monkeypatch.setenv("MAILPIPE_RAW_CACHE_MB", "0")
        reset_settings()
        put_raw(self.RAW, b"abc")
        assert len(MEMO) == 0 and get_storage().get(self.RAW) == b"abc"

    def test_reset_storage_clears_memory(self) -> None:
        from pipeline.clients.storage import put_raw
        from pipeline.clients.storage.memo import MEMO

        put_raw(self.RAW, b"abc")
        reset_storage()
        assert len(MEMO) == 0
