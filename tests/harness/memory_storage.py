"""An in-memory storage backend for tests (the product stores in a directory or S3)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from pipeline.clients.storage.base import CHUNK_SIZE, DEFAULT_CONTENT_TYPE, StorageNotFound, as_bytes, validate_key

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A dict-backed Storage for unit tests; keeps content types so tests can check them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, *, durable: bool = True) -> None:
        """Store a copy of data under key."""
        validate_key(key)
        blob = as_bytes(data)
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
