"""Input budgets of the text transformations applied to untrusted input. Pure: no I/O.

Every transformation of a body that a stranger can write (HTML → text, the quote under a reply or a
forward, HTML → Notion blocks, the text of a parsed message) runs in time linear in its input, and
its input is bounded here: beyond the budget the input is cut, the output says so (a notice line or
a parse defect) and nothing is silently lost without a trace. The budgets sit far above real mail
(Gmail clips a message at 102 KB; the API takes bodies up to 5 MB), so only hostile or broken input
ever meets them.
"""

from __future__ import annotations

__all__ = [
    "HTML_TO_TEXT_CHARS",
    "MAX_ATTRIBUTES",
    "NESTED_BLOCKS",
    "NOTION_HTML_CHARS",
    "PARSED_HTML_TO_TEXT_CHARS",
    "QUOTE_CHARS",
    "TRUNCATED_NOTICE",
    "clip",
]

#: HTML converted to a text alternative (compose, the send actor's tracked copies).
HTML_TO_TEXT_CHARS = 10_000_000
#: The original body quoted under a reply or included in a forward (HTML and text each).
QUOTE_CHARS = 5_000_000
#: An inbound HTML body turned into the text the API shows when the message has no text part.
PARSED_HTML_TO_TEXT_CHARS = 10_000_000
#: An email body turned into Notion blocks (a Notion page is no place for megabytes of text).
NOTION_HTML_CHARS = 1_000_000
#: Nested blockquotes and lists rendered with their own "> " / indentation in text; deeper ones are
#: rendered as plain blocks. Each level re-reads its content, so this bounds the work per character.
NESTED_BLOCKS = 12
#: Attributes kept per start tag before lxml parses untrusted HTML (libxml2 and lxml are quadratic in
#: the attributes of one tag; real mail has a handful).
MAX_ATTRIBUTES = 100
#: What a cut body ends with, in text.
TRUNCATED_NOTICE = "[… message truncated: too long to include in full]"


def clip(value: str, limit: int) -> tuple[str, bool]:
    """``value`` cut to ``limit`` characters, and whether anything was cut."""
    if len(value) <= limit:
        return value, False
    return value[:limit], True
