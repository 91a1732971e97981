"""Reading an operator-given data file: a local path or an http(s) URL (``mailpipe tracking update-ranges``).

Only the operator names these locations (on the command line), so the connection guard for
tenant-named hosts does not apply; the size is capped and the transfer times out.
"""

from __future__ import annotations

from pathlib import Path

import httpx

__all__ = ["MAX_BYTES", "read_location"]

MAX_BYTES = 64 * 1024 * 1024  # Azure's service tags file, the largest of these lists, is about 5 MB


def read_location(location: str, *, timeout: float = 60.0, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes at ``location`` (``http://``/``https://`` URL or file path); raises OSError/ValueError."""
    if location.startswith(("http://", "https://")):
        with httpx.stream("GET", location, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"{location}: larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    path = Path(location)
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{location}: larger than {max_bytes} bytes")
    return path.read_bytes()
