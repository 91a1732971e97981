"""pipeline.stages.wire_text: what may go on an IMAP/SMTP command line as a host or credential."""

from __future__ import annotations

import pytest

from pipeline.stages.wire_text import control_character, host_problem


@pytest.mark.parametrize("text,name", [("pw\r\nA2 LOGOUT", "CR"), ("pw\nx", "LF"), ("a\x00b", "NUL"), ("user\x01auth", "U+0001"),
                                       ("tab\there", "TAB"), ("del\x7f", "DEL"), ("c1\x85", "U+0085"), ("ls\u2028", "U+2028")])
def test_control_characters_are_named(text: str, name: str) -> None:
    """CR, LF, NUL, SOH (the XOAUTH2 separator), other C0/C1, DEL and Unicode line separators."""
    assert control_character(text) == name


@pytest.mark.parametrize("text", ["p\"a\\ss {5} (x) %*]", "pässwört-ß", "", "with space"])
def test_ordinary_credentials_pass(text: str) -> None:
    """Quotes, backslashes, braces, spaces and non-ASCII are fine: the client sends them safely."""
    assert control_character(text) is None


@pytest.mark.parametrize("host", ["mail.example.com", "127.0.0.1", "127.1", "0x7f000001", "::1", "::ffff:127.0.0.1",
                                  "exchange-01.corp.example", "bücher.example", "mail_relay.local", "mail.example.com."])
def test_hosts_that_pass(host: str) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize("host,fragment", [("", "empty"), ("mail.example.com\r\n", "control characters (CR)"),
                                           ("mail\x00.test", "control characters (NUL)"), ("a b", "spaces"),
                                           ("http://x", "host name or an IP address"), ("user@host", "host name or an IP"),
                                           ("[::1]", "host name or an IP"), ("fe80::1%eth0", "host name or an IP"),
                                           ("a" * 254, "at most 253"), ("a..b", "not a valid host name"),
                                           ("x" * 64 + ".com", "not a valid host name")])
def test_hosts_that_do_not(host: str, fragment: str) -> None:
    problem = host_problem(host)
    assert problem is not None and fragment in problem
