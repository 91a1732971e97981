"""Storage in a local directory: atomic writes (temp file + rename), fsynced when durable, private modes."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ops.private_files import PRIVATE_DIR, PRIVATE_FILE, make_private_dirs, tighten
from pipeline.clients.storage.base import CHUNK_SIZE, DEFAULT_CONTENT_TYPE, StorageError, StorageNotFound, as_bytes, validate_key
from pipeline.clients.storage.memo import forget

__all__ = ["LocalStorage"]

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_MAX_KNOWN_DIRS = 4096
_tag: tuple[int, str] | None = None


class LocalStorage:
    """Files under a root directory; writes are atomic (temp file, fsync, rename) so readers never see partial files.

    Everything is private to the process's user: files 0600 (the temp file's mode, kept by the
    rename), directories 0700, and the root is tightened to 0700 on the first write (a root left
    0755 by an older version would otherwise expose every attachment under it).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._root_ready = False
        self._dirs: set[Path] = set()  # directories this object made or found (a cache: checked again on ENOENT)

    def _make_dirs(self, directory: Path) -> None:
        if not self._root_ready:
            make_private_dirs(self.root)
            tighten(self.root, PRIVATE_DIR)
            self._root_ready = True
        make_private_dirs(directory)
        if len(self._dirs) >= _MAX_KNOWN_DIRS:
            self._dirs.clear()
        self._dirs.add(directory)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Write data under key atomically; the content type is not kept on disk.

        ``durable=False`` skips the fsyncs: the write is still atomic against a killed process,
        but may be lost on power failure (for data that can be fetched again, like raw mail).

        The temp file's name is unique to this process and thread (``.<name>.<token>-<thread>.tmp``,
        the token random per process), so no random-name search as in ``mkstemp`` is needed; it is
        still created with ``O_EXCL`` (a stale one from a dead process is removed and created again).
        """
        path = self._path(key)
        blob = as_bytes(data)
        forget(key)
        tmp = path.parent / f".{path.name}.{_temp_tag()}.tmp"
        try:
            fd = self._create(path.parent, tmp)
        except OSError as exc:
            raise StorageError(f"cannot write {key!r} under {self.root}: {exc.strerror or exc}") from None
        try:
            try:
                _write_all(fd, blob)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
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

    def _create(self, directory: Path, tmp: Path) -> int:
        """Open a new private temp file in directory, making the directories on first use."""
        if directory not in self._dirs:
            self._make_dirs(directory)
        for attempt in range(3):
            try:
                return os.open(tmp, _TEMP_FLAGS, PRIVATE_FILE)
            except FileExistsError:  # left by a killed process whose pid and token recurred: not ours to keep
                os.unlink(tmp)
            except FileNotFoundError:  # the directory went away since we made it
                if attempt:
                    raise
                self._dirs.discard(directory)
                self._make_dirs(directory)
        raise FileExistsError(17, "temp file keeps reappearing", str(tmp))

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
        forget(key)
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


def _temp_tag() -> str:
    """``<random per process>-<thread id>``: two writers (processes, threads, hosts sharing the
    directory) never pick the same temp name; the random part is drawn again after a fork."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        _tag = (pid, secrets.token_hex(6))
    return f"{_tag[1]}-{threading.get_ident():x}"


def _write_all(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
