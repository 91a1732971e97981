"""A bounded, per-process memory of recently stored blobs, so a stage in the same process as the
one that wrote an object reads it without going back to storage.

The object in storage stays the source of truth: the memory only ever holds bytes that were written
to (or read from) storage under the same key, so a process that does not hold them (another worker,
a restart after a crash) reads storage and gets the same bytes. It is meant for content-addressed
keys (raw messages, ``raw/<account>/<sha256>.eml``), whose bytes never change under one key; a key
deleted from storage must be forgotten here too (:meth:`BlobMemo.forget`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

__all__ = ["MEMO", "BlobMemo", "forget"]

DEFAULT_MAX_BYTES = 64 * 2**20


class BlobMemo:
    """Least-recently-used blobs up to ``max_bytes`` in total (0 keeps nothing); thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.hits = 0
        self.misses = 0

    def remember(self, key: str, data: bytes) -> None:
        """Keep data under key (replacing what was there), dropping the oldest entries over the cap;
        a blob larger than the whole cap is not kept."""
        blob = bytes(data)
        with self._lock:
            self._check_fork()
            self._drop(key)
            if len(blob) > self.max_bytes:
                return
            self._items[key] = blob
            self._size += len(blob)
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def recall(self, key: str) -> bytes | None:
        """The bytes kept under key, or None."""
        with self._lock:
            self._check_fork()
            blob = self._items.get(key)
            if blob is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return blob

    def forget(self, key: str) -> None:
        """Drop key (after its object was deleted, or when no stage will read it again)."""
        with self._lock:
            self._drop(key)

    def resize(self, max_bytes: int) -> None:
        """Change the cap, dropping the oldest entries over it."""
        with self._lock:
            self.max_bytes = max(0, int(max_bytes))
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)

    def _check_fork(self) -> None:
        """A forked child starts empty: what the parent held is not this process's to hand out."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._items.clear()
            self._size = 0


MEMO = BlobMemo(DEFAULT_MAX_BYTES)
"""The process's memory of raw messages; every backend's put and delete drop the key from it."""


def forget(key: str) -> None:
    """Drop key from the process's memo (backends call this when they write or delete an object)."""
    if MEMO._items:
        MEMO.forget(key)
