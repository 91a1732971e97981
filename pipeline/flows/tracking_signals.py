"""The tracking signal's data, loaded once per process: network ranges and the crawler list.

Each file ``NAME.txt`` is read from ``MAILPIPE_TRACKING_DATA_DIR`` when it is there (refreshed by
``mailpipe tracking update-ranges``), else from the copy shipped in the package
(``pipeline/data/tracking/``). Nothing is fetched at run time. :func:`signals` is the entry point;
the recording worker calls it, never the request path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from ops.settings import get_settings
from pipeline.stages.hit_classify import Signals
from pipeline.stages.netranges import RangeFile, RangeTable, parse_range_file
from pipeline.stages.ua_lists import UserAgentMatcher, parse_ua_file

__all__ = ["CRAWLERS", "RANGE_FILES", "DataFile", "reset_signals", "signals", "source_of"]

log = structlog.get_logger("mailpipe.tracking")


@dataclass(frozen=True, slots=True)
class DataFile:
    """A data file's name and the label its prefixes get when the source gives none."""

    name: str
    label: str
    about: str


#: The range files, by name (``NAME.txt``). Labels: ``gateway:*`` mail security gateways,
#: ``cloud:*`` data centres, ``google`` Google's own services, ``apple`` Apple, ``preview:*`` link previewers.
RANGE_FILES: tuple[DataFile, ...] = (
    DataFile("aws", "cloud:aws", "AWS ip-ranges.json"),
    DataFile("gcp", "cloud:gcp", "Google Cloud cloud.json"),
    DataFile("google", "google", "Google goog.json (Google's services; cloud.json is the Cloud part)"),
    DataFile("azure", "cloud:microsoft", "Azure service tags and Microsoft's public IP space"),
    DataFile("microsoft365", "gateway:microsoft_exchange", "Microsoft 365 endpoints: Exchange Online, EOP, Teams"),
    DataFile("gateways", "gateway:other", "mail security gateways' published ranges"),
    DataFile("apple", "apple", "Apple's network (Mail Privacy Protection)"),
)
CRAWLERS = DataFile("crawlers", "", "crawler-user-agents (patterns and tags)")

_lock = threading.Lock()
_loaded: Signals | None = None


def _read(name: str) -> tuple[str, str]:
    """(text, where it came from) for ``NAME.txt``: the operator's directory first, then the package."""
    override = get_settings().tracking_data_dir
    if override:
        path = Path(override) / f"{name}.txt"
        if path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
    shipped = resources.files("pipeline.data.tracking").joinpath(f"{name}.txt")
    return shipped.read_text(encoding="utf-8"), f"package:{name}.txt"


def signals() -> Signals:
    """The loaded data (read and compiled on first use, then shared)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            files: list[RangeFile] = []
            sources: list[tuple[str, str, str]] = []
            for df in RANGE_FILES:
                text, where = _read(df.name)
                rf = parse_range_file(text, default_label=df.label)
                files.append(rf)
                sources.append((df.name, where, rf.meta.get("retrieved", "?")))
            text, where = _read(CRAWLERS.name)
            meta, entries = parse_ua_file(text)
            agents = UserAgentMatcher(entries)
            sources.append((CRAWLERS.name, where, meta.get("retrieved", "?")))
            table = RangeTable.build(files)
            _loaded = Signals(table, agents)
            log.info("tracking_signals_loaded", prefixes=table.size, crawler_patterns=agents.size,
                     skipped_patterns=agents.skipped, sources=[f"{n}={w}@{d}" for n, w, d in sources])
    return _loaded


def source_of(name: str) -> str:
    """Where ``NAME.txt`` is read from now (for the update command's report)."""
    return _read(name)[1]


def reset_signals() -> None:
    """Forget the loaded data (tests, and after an update in the same process)."""
    global _loaded
    with _lock:
        _loaded = None
