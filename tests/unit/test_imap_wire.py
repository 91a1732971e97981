"""Parsing of raw imaplib response data and building of IMAP arguments."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from pipeline.clients.imap_wire import (
    ParseError,
    appenduid,
    check_header_name,
    fetch_items,
    flag_list,
    imap_date,
    parse_internaldate,
    parse_responses,
    parse_search,
    quote,
    response_code,
    uid_set,
)

BODY = b"Subject: hi\r\n\r\n(not a list) {5}\r\n"


def test_fetch_with_literal_then_closing_paren() -> None:
    data = [(b'1 (UID 7 FLAGS (\\Seen $Work) RFC822.SIZE 34 BODY[] {34}', BODY), b")"]
    [response] = parse_responses(data)
    items = fetch_items(response)
    assert items == {"UID": "7", "FLAGS": ["\\Seen", "$Work"], "RFC822.SIZE": "34", "BODY[]": BODY}


def test_uid_after_the_literal_is_still_found() -> None:
    data = [(b"3 (FLAGS () BODY[] {34}", BODY), b' UID 12 INTERNALDATE "01-Feb-2024 10:00:00 +0100")']
    items = fetch_items(parse_responses(data)[0])
    assert items is not None
    assert items["UID"] == "12"
    assert items["FLAGS"] == []
    assert items["BODY[]"] == BODY
    assert items["INTERNALDATE"] == b"01-Feb-2024 10:00:00 +0100"


def test_two_literals_in_one_response_and_bracketed_section_with_spaces() -> None:
    data = [
        (b"1 (UID 1 BODY[] {34}", BODY),
        (b" BODY[HEADER.FIELDS (SUBJECT FROM)] {13}", b"Subject: hi\r\n"),
        b" X-GM-MSGID 1278455344230334865)",
        (b"2 (UID 2 BODY[] {34}", BODY),
        b")",
    ]
    responses = parse_responses(data)
    assert len(responses) == 2
    first = fetch_items(responses[0])
    assert first is not None
    assert first["BODY[HEADER.FIELDS (SUBJECT FROM)]"] == b"Subject: hi\r\n"
    assert first["X-GM-MSGID"] == "1278455344230334865"
    assert fetch_items(responses[1]) == {"UID": "2", "BODY[]": BODY}


def test_unsolicited_fetch_without_literal_and_nil_body() -> None:
    data = [b"4 (FLAGS (\\Deleted))", b"5 (UID 9 BODY[] NIL)"]
    first, second = (fetch_items(r) for r in parse_responses(data))
    assert first == {"FLAGS": ["\\Deleted"]}
    assert second == {"UID": "9", "BODY[]": None}


def test_list_responses_with_quoted_and_literal_names() -> None:
    data = [
        b'(\\HasNoChildren \\Sent) "/" Sent',
        b'(\\HasNoChildren) "/" "My \\"Box\\""',
        (b'(\\Noselect) "/" {6}', b"a/b c)"),
        b"",
        b"(\\HasNoChildren) NIL INBOX",
    ]
    responses = parse_responses(data)
    assert responses == [
        [["\\HasNoChildren", "\\Sent"], b"/", "Sent"],
        [["\\HasNoChildren"], b"/", b'My "Box"'],
        [["\\Noselect"], b"/", b"a/b c)"],
        [["\\HasNoChildren"], None, "INBOX"],
    ]


def test_status_response() -> None:
    [response] = parse_responses([b'"Sent Items" (MESSAGES 3 UIDNEXT 9 UIDVALIDITY 42 HIGHESTMODSEQ 17)'])
    assert response == [b"Sent Items", ["MESSAGES", "3", "UIDNEXT", "9", "UIDVALIDITY", "42", "HIGHESTMODSEQ", "17"]]


def test_malformed_data_raises_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_responses([b"1 (UID 1 FLAGS (\\Seen)"])
    with pytest.raises(ParseError):
        parse_responses([(b"1 (UID 1 BODY[]", b"x")])
    with pytest.raises(ParseError):
        parse_responses([b'1 (UID 1 X "unterminated)'])


def test_fetch_items_rejects_non_fetch_shapes() -> None:
    assert fetch_items(["OK", ["UID"]]) is None
    assert fetch_items(["1", ["UID"]]) is None
    assert fetch_items(["1"]) is None


def test_internaldate_keeps_the_offset_and_accepts_space_padded_day() -> None:
    assert parse_internaldate(b" 4-Jul-2024 09:05:01 -0730") == datetime(
        2024, 7, 4, 9, 5, 1, tzinfo=timezone(-timedelta(hours=7, minutes=30))
    )
    assert parse_internaldate("14-Nov-2023 22:13:20 +0000") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    with pytest.raises(ParseError):
        parse_internaldate("14-Foo-2023 22:13:20 +0000")


def test_search_results_are_sorted_and_unique() -> None:
    assert parse_search([b"5 3 9", b"3 11"]) == [3, 5, 9, 11]
    assert parse_search([b""]) == []
    assert parse_search([None]) == []


def test_appenduid_and_response_codes() -> None:
    assert appenduid([b"[APPENDUID 1795477882 17] Append completed."]) == (1795477882, 17)
    assert appenduid([b"Append completed."]) is None
    assert response_code("[AUTHENTICATIONFAILED] Authentication failed.") == "AUTHENTICATIONFAILED"
    assert response_code("[limit] too many") == "LIMIT"
    assert response_code("Mailbox doesn't exist: x") is None


def test_uid_set_compresses_runs() -> None:
    assert uid_set([7, 1, 2, 3, 3, 10, 11]) == "1:3,7,10:11"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError):
        uid_set([])


def test_argument_builders() -> None:
    assert imap_date(date(2024, 2, 1)) == "1-Feb-2024"
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with pytest.raises(ValueError):
        quote("naïve")
    assert flag_list(["\\Seen", "$Work"]) == "(\\Seen $Work)"
    for bad in ["", "a b", "x)", "\\Recent", "é"]:
        with pytest.raises(ValueError):
            flag_list([bad])
    check_header_name("Message-ID")
    for bad_name in ["", "Bad:Name", "With Space"]:
        with pytest.raises(ValueError):
            check_header_name(bad_name)
