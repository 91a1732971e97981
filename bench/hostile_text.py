"""Hostile-body benchmark (issue 14): time and longest GIL hold of every text transformation.

For each adversarial shape (the issue's 40,000-newline ``<pre>``, 5 MB of nested ``<div>``s, long
runs, many elements, 100,000 attributes, unclosed tags, 10 MB of text…) and each transformation
(HTML → text, send composition, reply quote, forward block, parse, link tracking, Notion blocks,
merge fields), prints the wall time and the longest stretch a 1 ms sleeper thread waited for the
GIL while it ran: the stall every other thread of the process (the event loop answering /healthz)
would see.

Usage::

    .venv/bin/python bench/hostile_text.py                    # every shape, every transformation
    .venv/bin/python bench/hostile_text.py --shapes pre_40k,nested_5mb --ops html_to_text,send
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.stages.compose import Draft, compose  # noqa: E402
from pipeline.stages.html_text import html_to_text  # noqa: E402
from pipeline.stages.link_rewrite import inject  # noqa: E402
from pipeline.stages.merge import render  # noqa: E402
from pipeline.stages.notion_blocks import html_to_blocks  # noqa: E402
from pipeline.stages.parse import parse_email  # noqa: E402
from pipeline.stages.quoting import forward_block, quote_for_reply  # noqa: E402

WHEN = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)

SHAPES: dict[str, Callable[[], str]] = {
    "pre_40k": lambda: "<pre>x" + "\n" * 40_000 + "x</pre>",
    "pre_100k": lambda: "<pre>x" + "\n" * 100_000 + "x</pre>",
    "nested_5mb": lambda: "<div>" * 454_545 + "deep" + "</div>" * 454_545,
    "spaces_1m": lambda: "<p>a" + " " * 1_000_000 + "b</p>",
    "breaks_200k": lambda: "<p>" + "<br>" * 200_000 + "</p>",
    "paragraphs_5mb": lambda: "<p>hello world, some text</p>\n" * 170_000,
    "spans_6mb": lambda: "<p>" + "<span>x</span> " * 400_000 + "</p>",
    "links_3mb": lambda: "<a href='https://x.example/a'>x</a> " * 100_000,
    "attributes_100k": lambda: "<a href='https://x.example/' " + " ".join(f'a{i}="v{i}"' for i in range(100_000)) + ">x</a>",
    "unclosed_2mb": lambda: "<a href='x" * 200_000,
    "lt_1m": lambda: "<" * 1_000_000,
    "scripts_4mb": lambda: "<div>" + "<script>a</script>x" * 200_000 + "</div>",
    "quotes_deep": lambda: "<blockquote>" * 250 + "x<br>" * 500_000 + "</blockquote>" * 250,
    "text_10mb": lambda: "Hello there, this is a line of text.\n" * 270_000,
}


def _message(html: str) -> bytes:
    head = ("From: m@stranger.example\r\nTo: r@mycorp.example\r\nSubject: s\r\nMessage-ID: <m@stranger.example>\r\n"
            "Date: Mon, 06 Jan 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n")
    return head.encode() + html.encode()


def _draft(html: str) -> Draft:
    return Draft(from_email="r@mycorp.example", from_name=None, to=("j@prospect.example",), subject="s", html=html)


OPS: dict[str, Callable[[str], object]] = {
    "html_to_text": html_to_text,
    "send": lambda h: compose(_draft(h)),
    "reply": lambda h: compose(_draft("<p>ok</p>" + quote_for_reply(h, None, sender="m", sent_at=WHEN)[0])),
    "forward": lambda h: compose(_draft(forward_block(h, None, from_="m", to=["r"], subject="s", sent_at=WHEN)[0])),
    "parse": lambda h: parse_email(_message(h)),
    "tracking": lambda h: inject(h, email_id="e", recipient="j@prospect.example", public_url="https://t.example",
                                 open_signer=lambda *p: "s", click_signer=lambda *p: "s"),
    "notion": html_to_blocks,
    "merge": lambda h: render(h, {"firstName": "Ann"}, mode="html"),
}


class _Stall:
    """The longest gap a thread sleeping 1 ms at a time sees while the block runs."""

    def __enter__(self) -> _Stall:
        self.longest, self._stop = 0.0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.01)
        return self

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            time.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args()
    print(f"{'shape':18s} {'MB':>5s} {'operation':13s} {'seconds':>8s} {'longest GIL hold':>17s}")
    for shape in args.shapes.split(","):
        html = SHAPES[shape]()
        for op in args.ops.split(","):
            with _Stall() as stall:
                start = time.perf_counter()
                OPS[op](html)
                took = time.perf_counter() - start
            print(f"{shape:18s} {len(html) / 1e6:5.2f} {op:13s} {took:8.3f} {stall.longest * 1000:14.1f} ms", flush=True)


if __name__ == "__main__":
    main()
