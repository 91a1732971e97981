"""Refreshing the tracking signal's data files from operator-given files or URLs
(``mailpipe tracking update-ranges``); :func:`update_tracking_data` is the entry point.

Each source is read (:mod:`pipeline.clients.download`), parsed in its provider's format
(:func:`pipeline.stages.netranges.parse_provider`, or the crawler-user-agents JSON), checked
(at least one entry), and written as ``NAME.txt`` with a header saying where and when it came
from. Files are replaced atomically, so a worker starting meanwhile reads the old or the new file,
never half of one. Running workers load the data once: restart them to use the new files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.clients.download import read_location
from pipeline.flows.tracking_signals import CRAWLERS, RANGE_FILES, reset_signals
from pipeline.stages.netranges import parse_provider, render_range_file
from pipeline.stages.ua_lists import parse_crawler_json, parse_ua_file, render_ua_file

__all__ = ["KNOWN", "Source", "Written", "update_tracking_data"]

KNOWN = {df.name: df for df in (*RANGE_FILES, CRAWLERS)}


@dataclass(frozen=True, slots=True)
class Source:
    """One file to refresh: ``name`` (aws, gcp, google, azure, microsoft365, gateways, apple, crawlers),
    where to read it, what to record as its origin, and (Azure, Microsoft 365) which tags or areas to keep."""

    name: str
    location: str
    origin: str = ""
    services: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Written:
    name: str
    path: str
    format: str
    entries: int


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _header(src: Source, raw: bytes, fmt: str, now: datetime, extra: Mapping[str, str]) -> dict[str, str]:
    meta = {"mailpipe tracking data": src.name, "about": KNOWN[src.name].about, "read-from": src.location}
    if src.origin:
        meta["origin"] = src.origin
    meta.update({"retrieved": now.strftime("%Y-%m-%d"), "sha256": hashlib.sha256(raw).hexdigest(), "format": fmt})
    if src.services:
        meta["services"] = ",".join(sorted(src.services))
    meta.update(extra)
    return meta


def update_tracking_data(sources: list[Source], out_dir: str, *, now: datetime | None = None) -> list[Written]:
    """Read, parse and write every source; nothing is written unless all of them parse."""
    when = now or datetime.now(UTC)
    rendered: list[tuple[Source, str, str, int]] = []
    for src in sources:
        if src.name not in KNOWN:
            raise ValueError(f"unknown data file {src.name!r} (known: {', '.join(KNOWN)})")
        raw = read_location(src.location)
        if src.name == CRAWLERS.name:
            if raw.lstrip()[:1] == b"[":
                fmt, entries = "crawler-user-agents-json", parse_crawler_json(raw)
            else:
                fmt, entries = "ua-list", parse_ua_file(raw.decode("utf-8"))[1]
            text = render_ua_file(_header(src, raw, fmt, when, {"entries": str(len(entries))}), entries)
            count = len(entries)
        else:
            df = KNOWN[src.name]
            fmt, nets, notes = parse_provider(raw, df.label, services=src.services)
            text = render_range_file(_header(src, raw, fmt, when, {"label": df.label, "entries": str(len(set(nets)))}), nets, notes)
            count = len(set(nets))
        if count == 0:
            raise ValueError(f"{src.name}: {src.location} gave no entries; nothing was written")
        rendered.append((src, fmt, text, count))
    out: list[Written] = []
    for src, fmt, text, count in rendered:
        path = Path(out_dir) / f"{src.name}.txt"
        _write_atomically(path, text)
        out.append(Written(src.name, str(path), fmt, count))
    reset_signals()
    return out
