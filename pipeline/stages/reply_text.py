"""The *new* text of an inbound message: what its sender wrote this time. Pure: no I/O.

Quoted replies, forwarded blocks, signatures and disclaimers are left out, so a short angry reply
above a glowing quote reads as angry. HTML mail loses its quote containers first (Gmail's
``gmail_quote``, Apple Mail's ``<blockquote type="cite">``, Outlook's reply header block,
Thunderbird's ``moz-cite-prefix``, Yahoo's ``yahoo_quoted``) and is then turned into text; the text
is split into replies by ``mail-parser-reply`` (the "On … wrote:" / "Am … schrieb:" / "Le … a écrit :"
lines and the "From:/Sent:", "Von:/Gesendet:", "De :/Envoyé :" header blocks of Outlook and mobile
clients), and the newest reply is kept.

Budgets: the parser's expressions are not linear in a line's length, so only the first
:data:`NEW_TEXT_CHARS` characters are read and lines longer than :data:`LINE_CHARS` are broken
(sentiment needs neither megabytes nor kilometre-long lines).
"""

from __future__ import annotations

import re

import lxml.html
from mailparser_reply import EmailMessage, EmailReplyParser

from pipeline.stages.html_guard import drop_elements
from pipeline.stages.html_text import html_to_text, parse_html

__all__ = ["LINE_CHARS", "NEW_TEXT_CHARS", "new_text"]

#: Characters of the body read for the new text (the new text comes first; quotes follow it).
NEW_TEXT_CHARS = 20_000
#: HTML read before quote containers are removed (Gmail clips a whole message at 102 KB).
HTML_CHARS = 400_000
#: Longest line handed to the reply parser; longer ones are broken at this length.
LINE_CHARS = 400

_LANGUAGES = ["en", "de", "fr"]  # each language's expressions are tried on every message: the ones the clients here use
# Anything the reply parser could act on (a reply header, a header block, a separator, a closing or a
# footer), as substrings of the lowercased text: mail without any of them (most first messages) skips
# the parser, whose expressions cost far more than these tests.
_PARSER_MARKERS = ("wrote", "schrieb", "écrit", ":", "_____", "-----", "best", "kind", "thank", "regards", "grüß", "gruß", "gruss",
                   "grüsse", "cordialement", "salutations", "bonne", "sent from", "get outlook", "gesendet von", "envoyé de",
                   "disclaimer", "caution", "warning", "confidential", "privileged", "hinweis", "achtung")
_PARSER = EmailReplyParser(languages=_LANGUAGES)
# The parser compiles its expressions per message; compile them once and hand them to each message
# (they are fields of its EmailMessage dataclass).
_TEMPLATE = EmailMessage(text="", languages=list(_PARSER.languages))
_COMPILED = {"_header_regex": _TEMPLATE.HEADER_REGEX, "_disclaimers_regex": _TEMPLATE.DISCLAIMERS_REGEX,
             "_signature_regex": _TEMPLATE.SIGNATURE_REGEX}

# Quote containers of the common clients, by class or id (the reply header line sits inside them
# for Gmail; Outlook's "From: … Sent: …" block starts the quoted part, so it and what follows go).
_QUOTE_CLASSES = ("gmail_quote", "moz-cite-prefix", "yahoo_quoted", "protonmail_quote", "zmail_extra", "x_gmail_quote")
_QUOTE_IDS = ("divRplyFwdMsg", "appendonsend", "x_divRplyFwdMsg", "OLK_SRC_BODY_SECTION", "mail-editor-reference-message-container")

# A forwarded or "original message" block: the new text is the note above it (each language's line).
_FORWARD = re.compile(
    r"^[ \t>]*(?:-{2,}\s*(?:forwarded message|original message|message d'origine|message transféré|ursprüngliche nachricht|"
    r"weitergeleitete nachricht|mensaje original|messaggio originale|oorspronkelijk bericht)\s*-{2,}|"
    r"begin forwarded message:|début du message réexpédié\s?:|anfang der weitergeleiteten nachricht:)",
    re.I | re.M)
# A reply header a client wrapped over two lines ("On Mon, 6 Jan 2025 at 10:00, Jane Doe <\njane@x> wrote:").
_SPLIT_HEADER = re.compile(
    r"^((?:On|Am|Le|El|Il|Op) [^\n]{4,200})\n([^\n]{0,120}(?:wrote|schrieb|a écrit|escribió|ha scritto|schreef)\s?:)$", re.M)
_SIG_DASHES = re.compile(r"^-- ?$", re.M)  # RFC 3676 signature separator
_QUOTED_LINE = re.compile(r"^[ \t]*>[^\n]*(?:\n|$)", re.M)
# Confidentiality footers that are not behind a "Disclaimer:" label.
_FOOTER = re.compile(
    r"^[ \t]*(?:this (?:e-?mail|message)(?: and any (?:files|attachments)[^\n]{0,40})? (?:is|are|may be|contains?) "
    r"(?:confidential|intended)|diese (?:e-?mail|nachricht) (?:enthält|ist) vertraulich|"
    r"ce (?:message|courriel|mail) (?:et (?:toutes )?les pièces jointes )?(?:est|sont) (?:confidentiel|strictement)|"
    r"please consider the environment before printing)",
    re.I | re.M)
_BLANKS = re.compile(r"\n{3,}")
# Substrings (of the lowercased text) the forward and footer expressions need: most mail skips them.
_FORWARD_MARKERS = ("forward", "original", "origine", "transféré", "ursprüngliche", "weitergeleitet", "mensaje", "messaggio",
                    "oorspronkelijk", "réexpédié")
# Where quoted history may start, and how much after that the parser still reads (a header block).
_HISTORY_MARKERS = ("wrote", "schrieb", "a écrit", "from:", "von:", "de :", "de:", "_____", "-----", "sent from", "get outlook",
                    "gesendet von", "envoyé de")
HISTORY_TAIL = 600
_FOOTER_MARKERS = ("confidential", "intended", "vertraulich", "confidentiel", "strictement", "environment")
# A closing line the parser's lists miss ("Cheers,", "Merci,", "Viele Grüße"), alone on its line, with
# at most a few short lines after it (the name, title, phone): the signature starts there.
_CLOSING = re.compile(
    r"\n[ \t]*(?:cheers|best|thanks|thank you|many thanks|regards|kind regards|best regards|warm regards|all the best|sincerely|"
    r"br|mit freundlichen grüßen|viele grüße|beste grüße|grüße|gruß|lg|cordialement|bien à vous|merci|saludos|un saludo|"
    r"cordiali saluti|saluti|met vriendelijke groet)[ \t]*[,.!]?[ \t]*(?:\n[^\n]{0,80}){0,5}\s*\Z", re.I)
_VALEDICTION_CHARS = 40  # a signature the parser found starts with a short closing line ("Best regards,")


def new_text(body_text: str, body_html: str | None = None) -> str:
    """The newest reply of a message, without quotes, forwarded blocks, signature or disclaimer.

    HTML, when the message has it, is read (its quote containers say more than the text part);
    otherwise the text part.
    """
    source = _html_source(body_html) if body_html and body_html.strip() else None
    text = source if source is not None else (body_text or "")
    text = _bounded(text)
    low = text.lower()
    if any(marker in low for marker in _FORWARD_MARKERS):
        forward = _FORWARD.search(text)
        if forward is not None:
            text, low = text[: forward.start()], low[: forward.start()]
    if any(marker in low for marker in _PARSER_MARKERS):
        text = _newest_reply(_SPLIT_HEADER.sub(r"\1 \2", _before_history(text, low)))
    if ">" in text:
        text = _QUOTED_LINE.sub("", text)  # what is left of quotes (inline replies keep their own lines)
    if "--" in text:
        sig = _SIG_DASHES.search(text)
        if sig is not None:
            text = text[: sig.start()]
    if any(marker in low for marker in _FOOTER_MARKERS):
        footer = _FOOTER.search(text)
        if footer is not None:
            text = text[: footer.start()]
    text = _CLOSING.sub("", text.rstrip())
    if "\n\n\n" in text:
        text = _BLANKS.sub("\n\n", text)
    return text.strip()


def _html_source(markup: str) -> str | None:
    """The text of ``markup`` after dropping quote containers (and everything after Outlook's reply
    header, which is not a container), or None when it has no content."""
    root = parse_html(markup[:HTML_CHARS])
    if root is None:
        return None
    drop_elements(root, frozenset({"blockquote"}))
    for el in list(root.iter()):
        if not isinstance(el.tag, str):
            continue
        classes = (el.get("class") or "").split()
        if any(c in _QUOTE_CLASSES for c in classes) or el.get("id") in _QUOTE_IDS:
            _drop_from(el)
    return html_to_text(lxml.html.tostring(root, encoding="unicode"))


def _drop_from(el: lxml.html.HtmlElement) -> None:
    """Remove ``el`` and its following siblings (the quoted part runs to the end of its parent)."""
    parent = el.getparent()
    if parent is None:
        return
    siblings = list(parent)
    for sibling in siblings[siblings.index(el):]:
        parent.remove(sibling)


def _bounded(text: str) -> str:
    """The first :data:`NEW_TEXT_CHARS` characters, lines broken at :data:`LINE_CHARS`."""
    text = text[:NEW_TEXT_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    if all(len(line) <= LINE_CHARS for line in text.split("\n")):
        return text
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(line[i : i + LINE_CHARS] for i in range(0, max(len(line), 1), LINE_CHARS))
    return "\n".join(out)


def _before_history(text: str, low: str) -> str:
    """``text`` up to a little past where the quoted history seems to start (the earliest reply-header
    word): the parser's time grows with the text, and a long thread's history needs no reading."""
    starts = [at for at in (low.find(m) for m in _HISTORY_MARKERS) if at >= 0]
    return text[: min(starts) + HISTORY_TAIL] if starts else text


def _newest_reply(text: str) -> str:
    """The first reply ``mail-parser-reply`` finds, with its signature or disclaimer removed when the
    signature starts with a short closing line (it also takes "Thanks, that fixed it" for one)."""
    message = EmailMessage(text=text, languages=list(_PARSER.languages), **_COMPILED).read()
    if not message.replies:
        return text
    reply = message.replies[0]
    body = reply.content
    if reply.headers:
        body = body.replace(reply.headers, "")
    for disclaimer in reply.disclaimers or ():
        if disclaimer:
            body = body.replace(disclaimer, "")
    signature = reply.signatures or ""
    if signature and len(signature.split("\n", 1)[0].strip()) <= _VALEDICTION_CHARS:
        at = body.rfind(signature)
        if at > 0:
            body = body[:at]
    return body
