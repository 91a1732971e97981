"""The parse stage over the real-world corpus (tests/data/corpus, sources in its README).

Every message parses into something storable; where the source's bytes were valid (judged by
tests.harness.corpus.source_check, the stdlib alone) nothing reads as U+FFFD or mojibake; known
hard attachment names come out exactly; display-name spoofs are caught; no two distinct messages
share a dedupe key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stages.identity import message_identity
from pipeline.stages.parse import ParsedEmail, parse_email
from tests.harness.corpus import CORPUS, EXPECTED_FILENAMES, SPOOFS, corpus_files, has_mojibake, source_check
from tests.unit.test_parse import assert_storable

FILES = corpus_files()
#: Inputs with no recognizable header at all: a digest body, a BSMTP transcript, an Outlook .msg.
NOT_MAIL = {"cpython/msg_19.eml", "spamassassin/spam__bsmtp.eml", "spamscope-mail-parser/mail_outlook_1.eml"}


def _name(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def _reader_strings(result: ParsedEmail) -> dict[str, str]:
    names = [a.name for a in (result.from_, *result.to, *result.cc) if a is not None]
    return {"subject": result.subject, "names": " | ".join(names), "text": result.text, "html": result.html or "",
            "filenames": " | ".join(a.filename for a in result.attachments)}


def test_corpus_is_a_few_hundred_sourced_messages() -> None:
    """The corpus holds a few hundred messages, each listed with its source in MANIFEST.tsv or hand-written."""
    assert len(FILES) >= 400
    listed = {line.split("\t", 1)[0] for line in (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]}
    unlisted = {_name(p) for p in FILES} - listed
    assert all(name.startswith("handwritten/") for name in unlisted), sorted(unlisted)[:5]
    assert len(unlisted) >= 11


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_message_parses_cleanly(path: Path) -> None:
    """Parsed without error (unless it is no mail at all), storable, and where the source was valid:
    no U+FFFD and no mojibake in what a reader sees."""
    raw = path.read_bytes()
    result = parse_email(raw)
    assert_storable(result)
    name = _name(path)
    assert (result.error is not None) == (name in NOT_MAIL), result.error
    source = source_check(raw)
    if not source.clean:
        return
    for field, value in _reader_strings(result).items():
        if not source.replacement:
            assert "\ufffd" not in value, f"{field}: U+FFFD from valid source bytes: {value[:200]!r}"
        if not source.mojibake:
            assert not has_mojibake(value), f"{field}: mojibake: {value[:200]!r}"


def test_most_of_the_corpus_is_judged() -> None:
    """The U+FFFD/mojibake checks above are not vacuous: most sources are valid."""
    judged = sum(source_check(p.read_bytes()).clean for p in FILES)
    assert judged >= 0.85 * len(FILES)


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED_FILENAMES.items()))
def test_known_attachment_names(name: str, expected: list[str]) -> None:
    """Hard attachment names (raw 8-bit, RFC 2231 continuations, folded encoded words, Eudora's 8-bit
    inside encoded words, KOI8-R, words split inside a character) come out exactly. (Parts without
    a name, called attachment-N, are left out of the comparison.)"""
    result = parse_email((CORPUS / name).read_bytes())
    assert [a.filename for a in result.attachments if not a.filename.startswith("attachment-")] == expected


def test_display_name_spoofs_are_flagged() -> None:
    """Exactly the known spoofs are flagged, and each keeps its real sender address."""
    flagged = {}
    for path in FILES:
        result = parse_email(path.read_bytes())
        if result.suspicious_sender:
            assert result.from_ is not None
            flagged[_name(path)] = result.from_.email
    assert flagged == SPOOFS


def test_no_two_messages_share_a_key() -> None:
    """Every corpus file is a distinct message (see the README), so every one gets its own dedupe key:
    nothing would be lost by deduplication."""
    keys = {message_identity(p.read_bytes()).dedupe_key for p in FILES}
    assert len(keys) == len(FILES)
