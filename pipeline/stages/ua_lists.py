"""User-agent lists for the tracking signal: the maintained crawler list and a matcher over it.

Pure: text in, matcher out. The shipped list comes from the crawler-user-agents project
(github.com/monperrus/crawler-user-agents, MIT), whose entries carry a regular expression and
tags; we keep the pattern and the tags in our own line format so the file says where and when it
came from::

    # mailpipe tracking data: crawlers
    # origin: crawler-user-agents 1.67.0 (PyPI), crawler-user-agents.json
    social-preview	WhatsApp
    http-library	python-requests

:class:`UserAgentMatcher` compiles one alternation per class (link previewers, HTTP libraries,
everything else) and remembers recent answers, since a handful of user agents make most traffic.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CRAWLER_CLASSES", "UserAgentMatcher", "parse_crawler_json", "parse_ua_file", "render_ua_file"]

#: Our classes, from the list's tags: link previewers (chat and social apps unfurling a link),
#: HTTP libraries and command-line tools, and every other robot.
CRAWLER_CLASSES = ("link_preview", "http_tool", "bot_ua")
_CLASS_OF_TAG = {"social-preview": "link_preview", "http-library": "http_tool"}
#: Gmail's image proxy is in the list (tagged social-preview), but it stands for a person opening
#: the mail; the classifier handles it before the list is consulted, and it is kept out of it here.
_NOT_A_CRAWLER = re.compile(r"GoogleImageProxy", re.IGNORECASE)


def parse_crawler_json(raw: bytes) -> list[tuple[str, str]]:
    """(tags, pattern) pairs from crawler-user-agents.json; tags comma-joined, ``-`` when none."""
    data = json.loads(raw.decode("utf-8-sig"))
    if not isinstance(data, list):
        raise ValueError("crawler-user-agents.json is a list of {pattern, tags, ...} objects")
    out = []
    for entry in data:
        pattern = entry.get("pattern") if isinstance(entry, dict) else None
        if not isinstance(pattern, str) or not pattern or "\t" in pattern or "\n" in pattern:
            continue
        tags = [t for t in entry.get("tags") or [] if isinstance(t, str) and t.isascii() and "," not in t]
        out.append((",".join(tags) or "-", pattern))
    return out


def render_ua_file(meta: Mapping[str, str], entries: Iterable[tuple[str, str]]) -> str:
    lines = [f"# {key}: {value}" for key, value in meta.items()]
    lines += [f"{tags}\t{pattern}" for tags, pattern in entries]
    return "\n".join(lines) + "\n"


def parse_ua_file(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(header fields, [(tags, pattern)]) from our crawler file."""
    meta: dict[str, str] = {}
    entries: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        if raw.startswith("#"):
            key, sep, value = raw[1:].strip().partition(":")
            if sep and key.strip() and " " not in key.strip():
                meta.setdefault(key.strip().lower(), value.strip())
            continue
        tags, sep, pattern = raw.partition("\t")
        if not sep or not pattern:
            raise ValueError(f"line {number}: expected 'tags<TAB>pattern'")
        entries.append((tags.strip(), pattern))
    return meta, entries


@dataclass(frozen=True, slots=True)
class _Compiled:
    by_class: tuple[tuple[str, re.Pattern[str]], ...]
    skipped: int
    size: int


def _compile(entries: Iterable[tuple[str, str]]) -> _Compiled:
    groups: dict[str, list[str]] = {c: [] for c in CRAWLER_CLASSES}
    skipped = size = 0
    for tags, pattern in entries:
        if _NOT_A_CRAWLER.search(pattern):
            continue
        try:
            re.compile(pattern)
        except re.error:
            skipped += 1
            continue
        cls = next((_CLASS_OF_TAG[t] for t in tags.split(",") if t in _CLASS_OF_TAG), "bot_ua")
        groups[cls].append(f"(?:{pattern})")
        size += 1
    compiled = tuple((cls, re.compile("|".join(pats))) for cls, pats in groups.items() if pats)
    return _Compiled(compiled, skipped, size)


class UserAgentMatcher:
    """Which crawler class (``link_preview``, ``http_tool``, ``bot_ua``) a user agent matches, if any.

    The list's patterns are case-sensitive, as its authors wrote and tested them. Answers for the
    last ``cache`` distinct user agents are remembered.
    """

    def __init__(self, entries: Iterable[tuple[str, str]], *, cache: int = 4096) -> None:
        self._compiled = _compile(entries)
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._cache_size = cache
        self._lock = threading.Lock()  # worker threads share one matcher

    @property
    def size(self) -> int:
        """Patterns in use."""
        return self._compiled.size

    @property
    def skipped(self) -> int:
        """Patterns Python's ``re`` could not compile (left out)."""
        return self._compiled.skipped

    def match(self, user_agent: str) -> str | None:
        hit = self._cache.get(user_agent, ...)
        if hit is not ...:
            return hit
        found = next((cls for cls, rx in self._compiled.by_class if rx.search(user_agent)), None)
        with self._lock:
            self._cache[user_agent] = found
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return found
