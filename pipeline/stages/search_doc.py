"""The full-text search document of one email. Pure: fields in, the four indexed texts out.

The document has four parts, weighted from strongest to weakest in ranking: the subject, the
participants (display names and addresses, each address also as its local part and its domain so
``acme.com`` finds everyone there), the attachment names, and the body (the text part and the text
of the HTML part, so a word that is only in the HTML is found too). ``language`` names the
PostgreSQL text-search configuration the body is stemmed with, guessed from stopwords.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.stages.html_text import html_to_text

__all__ = ["LANGUAGES", "SearchDoc", "build_search_doc", "guess_language"]

#: The longest body indexed (characters); longer bodies are cut (tsvector holds at most 1 MB).
BODY_CHARS = 200_000

# A few dozen of the most frequent words of each language PostgreSQL ships a stemmer for.
_STOPWORDS: dict[str, frozenset[str]] = {
    "english": frozenset("the and to of a in is that for it you with on this be are have as at not your we will i".split()),
    "german": frozenset("der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an "
                        "ich sie wir ihr bitte".split()),
    "french": frozenset("le la les de des et à un une est pour que qui dans en du pas vous nous sur avec ce je au".split()),
    "spanish": frozenset("el la de que y en los del se las por un para con una su al es lo como más pero sus le "
                         "usted nosotros".split()),
    "italian": frozenset("il di che e la per un in è non una sono mi si ho lo ma ti ha le con gli del della".split()),
    "dutch": frozenset("de en van het een is dat op te in voor niet met zijn er aan ook je ik we maar wij u".split()),
    "portuguese": frozenset("o a de que e do da em um para é com não uma os no se na por mais as dos você".split()),
    "swedish": frozenset("och att det som en på är av för med till den har inte om ett jag vi du".split()),
}
LANGUAGES = ("simple", *_STOPWORDS)
_WORD_LANGS: dict[str, tuple[str, ...]] = {}  # stopword -> the languages listing it, one pass over the words
for _lang, _stop in _STOPWORDS.items():
    for _w in _stop:
        _WORD_LANGS[_w] = (*_WORD_LANGS.get(_w, ()), _lang)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_NAME_SPLIT = re.compile(r"[\W_]+", re.UNICODE)
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCT = "".join(chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum())  # stripped from a token's ends


@dataclass(frozen=True, slots=True)
class SearchDoc:
    subject: str
    participants: str
    attachments: str
    body: str
    language: str


def guess_language(text: str, sample: int = 4000) -> str:
    """The language whose stopwords are most frequent in the first ``sample`` characters; "simple" if none is clear."""
    words = [w.lower() for w in _WORD.findall(text[:sample])]
    if not words:
        return "simple"
    counts = dict.fromkeys(_STOPWORDS, 0)
    for w in words:
        for lang in _WORD_LANGS.get(w, ()):
            counts[lang] += 1
    best, best_hits = "simple", 0
    for lang, hits in counts.items():  # in _STOPWORDS order: the first of equals wins, as before
        if hits > best_hits:
            best, best_hits = lang, hits
    return best if best_hits >= max(2, len(words) // 40) else "simple"


def _address_words(address: str) -> str:
    address = address.strip()
    if "@" not in address:
        return address
    local, _, domain = address.rpartition("@")
    return f"{address} {local} {domain}"


def _name_words(filename: str) -> str:
    """A file name and its words (``Roadmap-Q3.pdf`` → ``Roadmap-Q3.pdf Roadmap Q3 pdf``): parsers read the whole name as a host."""
    words = _NAME_SPLIT.split(filename)
    return " ".join([filename, *(w for w in words if w)]) if len(words) > 1 else filename


def _tokens(text: str) -> set[str]:
    """The text's whitespace-separated tokens, case-folded, without the punctuation around them (``acme.com``
    stays one token, as the text search parser reads it)."""
    return {t for t in (m.strip(_EDGE_PUNCT).casefold() for m in _TOKEN.findall(text)) if t}


def _words_within(text: str, other: str) -> bool:
    """Whether every token of ``text`` is also one of ``other`` (then indexing ``text`` beside it adds nothing)."""
    return bool(other) and _tokens(text) <= _tokens(other)


def build_search_doc(*, subject: str, names: Iterable[str | None], addresses: Iterable[str | None], body_text: str,
                     body_html: str | None, attachment_names: Iterable[str]) -> SearchDoc:
    """The indexed texts of an email (the HTML part is converted to text and indexed beside the text part
    when it has a word the text part lacks: the two are usually the same message, and indexing it twice
    doubles the index entry every search reads)."""
    body = body_text or ""
    if body_html:
        html_text = html_to_text(body_html)
        if html_text.strip() and html_text.strip() != body.strip() and not _words_within(html_text, body):
            body = f"{body}\n{html_text}" if body else html_text
    body = body[:BODY_CHARS]
    people = " ".join(n for n in names if n)
    addrs = " ".join(_address_words(a) for a in addresses if a)
    return SearchDoc(subject=subject or "", participants=f"{people} {addrs}".strip(),
                     attachments=" ".join(_name_words(a) for a in attachment_names if a), body=body,
                     language=guess_language(f"{subject} {body}"))
