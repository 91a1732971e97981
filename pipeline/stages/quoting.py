"""Replies and forwards: the original message under a reply ("On …, … wrote:" and a blockquote) or a
forward (the "Forwarded message" block), and their subjects and threading headers. Pure: no I/O.

The original is untrusted (a stranger wrote it), so everything here is linear in its size: the HTML
is re-serialized by lxml after linear passes dropping scripts, styles and event handlers, and the text
quote is prefixed with "> " by string operations over the whole text, not line by line in Python.
Only the first :data:`~pipeline.stages.budgets.QUOTE_CHARS` characters of the original are included;
a longer one ends with :data:`~pipeline.stages.budgets.TRUNCATED_NOTICE`.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterable, Sequence
from datetime import datetime

import lxml.html

from pipeline.stages.budgets import QUOTE_CHARS, TRUNCATED_NOTICE, clip
from pipeline.stages.header_rules import ComposeError, msgid
from pipeline.stages.html_guard import drop_elements
from pipeline.stages.html_text import html_to_text, parse_html
from pipeline.stages.slices import cut_after_newline, sub_in_slices

__all__ = ["MAX_REFERENCES", "forward_block", "forward_subject", "quote_for_reply", "reply_headers", "reply_subject"]

MAX_REFERENCES = 20
_MSGID_IN_TEXT = re.compile(r"<([^<>]*)>")
# Every leading prefix at once; possessive, so a long run of prefixes is read once, never backtracked.
_REPLY_PREFIX = re.compile(r"^(?:\s*+re\s*+(?:\[\d++\])?\s*+:\s*+)++", re.I)
_FORWARD_PREFIX = re.compile(r"^(?:\s*+fwd?\s*+(?:\[\d++\])?\s*+:\s*+)++", re.I)
_QUOTE_DROP_TAGS = frozenset("head script style title meta link base iframe object embed noscript".split())
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_QUOTE_STYLE = "margin:0 0 0 .8ex;border-left:1px solid #ccc;padding-left:1ex"
_BARE_PREFIX = re.compile(r"^> (?=>|$)", re.M)  # "> " before a quoted ">" line or an empty line: just ">"


def _when(sent_at: datetime) -> str:
    """English, locale-independent date: "Mon, 6 Jan 2025 at 10:00 UTC" (offset kept when not UTC)."""
    offset = sent_at.utcoffset()
    if offset is None:
        zone = ""
    elif not offset:
        zone = " UTC"
    else:
        zone = f" {sent_at:%z}"
    return (f"{_DAYS[sent_at.weekday()]}, {sent_at.day} {_MONTHS[sent_at.month - 1]} {sent_at.year} "
            f"at {sent_at:%H:%M}{zone}")


def _html_body(markup: str | None, text: str | None, clipped: bool) -> str:
    """The original body as an HTML fragment: the document's body re-serialized, or escaped text."""
    root = parse_html(markup) if markup is not None else None
    if root is not None:
        drop_elements(root, _QUOTE_DROP_TAGS)
        for el in root.iter():
            if el.attrib:  # comments and entities have none
                for attr in [a for a in el.attrib if a.lower().startswith("on")]:
                    del el.attrib[attr]
        body = root.find("body")
        if body is None:
            body = root
        body.tag = "div"
        body.attrib.clear()
        tail, body.tail = body.tail, None
        if tail and tail.strip():  # stray text after </body> stays part of the quoted body
            if len(body):
                body[-1].tail = (body[-1].tail or "") + tail
            else:
                body.text = (body.text or "") + tail
        if clipped:
            notice_el = lxml.html.Element("p")
            notice_el.text = TRUNCATED_NOTICE
            body.append(notice_el)
        return lxml.html.tostring(body, encoding="unicode", method="html")
    notice = f"<p>{html_lib.escape(TRUNCATED_NOTICE)}</p>" if clipped else ""
    if text:
        escaped = html_lib.escape(text.replace("\r\n", "\n").replace("\r", "\n")).replace("\n", "<br>\n")
        return f"<div>{escaped}{notice}</div>"
    return f"<div>{notice}</div>"


def _plain_body(markup: str | None, text: str | None, clipped: bool) -> str:
    """The original body as plain text: the given text, else the HTML converted."""
    if text is not None and text.strip():
        body = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    else:
        body = html_to_text(markup) if markup else ""
    if clipped:
        body = f"{body}\n\n{TRUNCATED_NOTICE}".lstrip("\n")
    return body


def _bounded(html: str | None, text: str | None) -> tuple[str | None, str | None, bool]:
    """The original's HTML and text cut to the quote budget, and whether either was cut."""
    cut_html = cut_text = False
    if html is not None:
        html, cut_html = clip(html, QUOTE_CHARS)
    if text is not None:
        text, cut_text = clip(text, QUOTE_CHARS)
    return html, text, cut_html or cut_text


def quote_for_reply(html: str | None, text: str | None, *, sender: str,
                    sent_at: datetime | None) -> tuple[str, str]:
    """(html_quote, text_quote): "On <date>, <sender> wrote:" then the original as a blockquote / "> " lines."""
    html, text, clipped = _bounded(html, text)
    who = " ".join((sender or "").split()) or "someone"
    attribution = f"On {_when(sent_at)}, {who} wrote:" if sent_at is not None else f"{who} wrote:"
    html_quote = (f'<div class="mailpipe_quote"><div class="mailpipe_attr">{html_lib.escape(attribution)}</div>'
                  f'<blockquote style="{_QUOTE_STYLE}">{_html_body(html, text, clipped)}</blockquote></div>')
    quoted = sub_in_slices(_BARE_PREFIX, ">", "> " + _plain_body(html, text, clipped).replace("\n", "\n> "), cut_after_newline)
    return html_quote, f"{attribution}\n{quoted}"


def forward_block(html: str | None, text: str | None, *, from_: str, to: Sequence[str] | str, subject: str,
                  sent_at: datetime | None) -> tuple[str, str]:
    """(html_block, text_block): the "Forwarded message" header lines followed by the original body."""
    html, text, clipped = _bounded(html, text)
    recipients = (to,) if isinstance(to, str) else tuple(to or ())
    fields = [("From", " ".join(from_.split()))]
    if sent_at is not None:
        fields.append(("Date", _when(sent_at)))
    fields.append(("Subject", " ".join((subject or "").split())))
    fields.append(("To", ", ".join(" ".join(t.split()) for t in recipients)))
    head = "---------- Forwarded message ---------"
    text_block = "\n".join([head, *(f"{k}: {v}" for k, v in fields), "", _plain_body(html, text, clipped)])
    html_head = "<br>\n".join([html_lib.escape(head), *(f"{k}: {html_lib.escape(v)}" for k, v in fields)])
    html_block = f'<div class="mailpipe_fwd">{html_head}<br>\n<br>\n{_html_body(html, text, clipped)}</div>'
    return html_block, text_block.rstrip("\n")


def _clean_ids(values: Iterable[str | None]) -> list[str]:
    """Message-IDs from bracketed or bare strings, without brackets; unusable ones skipped."""
    found: list[str] = []
    for value in values:
        if not isinstance(value, str):
            continue
        candidates = _MSGID_IN_TEXT.findall(value) or value.replace(",", " ").split()
        for candidate in candidates:
            try:
                found.append(msgid("references", candidate.strip(), need_at=False))
            except ComposeError:
                continue
    return list(dict.fromkeys(found))


def reply_headers(original_message_id: str | None,
                  original_references: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References for a reply: the parent's references plus its id, deduplicated, capped."""
    parent = _clean_ids([original_message_id])
    in_reply_to = parent[0] if parent else None
    refs = [ref for ref in _clean_ids(tuple(original_references)) if ref != in_reply_to]
    if in_reply_to:
        refs.append(in_reply_to)
    if len(refs) > MAX_REFERENCES:  # keep the thread root and the most recent ancestors
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    return in_reply_to, tuple(refs)


def _strip_prefixes(subject: str, pattern: re.Pattern[str]) -> str:
    """``subject`` with every leading prefix matching ``pattern`` removed."""
    subject = " ".join((subject or "").split())
    return pattern.sub("", subject, count=1)


def reply_subject(subject: str) -> str:
    """"Re: subject" without stacking Re prefixes ("Re: RE: x" → "Re: x")."""
    return f"Re: {_strip_prefixes(subject, _REPLY_PREFIX)}".rstrip()


def forward_subject(subject: str) -> str:
    """"Fwd: subject" without stacking Fwd/FW prefixes ("FW: Fwd: x" → "Fwd: x")."""
    return f"Fwd: {_strip_prefixes(subject, _FORWARD_PREFIX)}".rstrip()
