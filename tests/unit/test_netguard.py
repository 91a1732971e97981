"""pipeline.clients.netguard: resolve once, check every address, connect to exactly the checked one.

A scripted resolver stands in for DNS (no lookups leave the machine); the sockets are real ones on
loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.clients.netguard import MAIL_SETTING, CheckedHost, HostNotAllowed, check_host, mail_nets, open_socket, webhook_nets
from pipeline.stages.netpolicy import parse_nets


class Resolver:
    """A getaddrinfo stand-in: answers from a table, counts calls, can change its answer (rebinding)."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {k.replace("_", "."): v for k, v in answers.items()}
        self.calls: list[str] = []

    def __call__(self, host: str, port: Any, type: int = 0, **_: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in self.answers[host]:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (a, 0) if family == socket.AF_INET else (a, 0, 0, 0)))
        return out


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield server


class TestCheckHost:
    def test_a_name_is_resolved_once_and_every_address_checked(self) -> None:
        """One lookup; the result carries the addresses that were checked and the name for TLS."""
        dns = Resolver(mail_example_com=["93.184.216.34", "2606:2800:220:1::248"])
        checked = check_host("mail.example.com", (), resolver=dns)
        assert dns.calls == ["mail.example.com"]
        assert checked.tls_name == "mail.example.com"
        assert checked.addresses == (ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800:220:1::248"))

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0.0.0.0", "::1", "::ffff:127.0.0.1",
                                      "10.1.2.3", "169.254.169.254"])
    def test_numeric_hosts_are_refused_without_a_lookup(self, host: str) -> None:
        """Loopback/private/link-local in any spelling: refused, and the resolver is never asked."""
        dns = Resolver()
        with pytest.raises(HostNotAllowed) as caught:
            check_host(host, (), resolver=dns)
        assert dns.calls == []
        text = str(caught.value)
        assert MAIL_SETTING in text and ("/32" in text or "/128" in text)

    def test_a_name_that_resolves_to_loopback_is_refused_with_advice(self) -> None:
        """The message names host, address and range, and the setting (with the entry to add)."""
        with pytest.raises(HostNotAllowed) as caught:
            check_host("db.internal.test", (), resolver=Resolver(db_internal_test=["10.1.2.3"]))
        text = str(caught.value)
        assert "db.internal.test (10.1.2.3)" in text and "private (10.0.0.0/8)" in text
        assert "MAILPIPE_MAIL_ALLOWED_NETS (e.g. 10.1.2.3/32)" in text

    def test_allowed_nets_let_the_operators_own_server_through(self) -> None:
        checked = check_host("exchange.corp.test", parse_nets("10.1.2.3/32"), resolver=Resolver(exchange_corp_test=["10.1.2.3"]))
        assert checked.addresses == (ipaddress.ip_address("10.1.2.3"),)

    def test_numeric_host_keeps_its_canonical_address_as_the_tls_name(self) -> None:
        """127.1 allowed: the certificate is checked for 127.0.0.1, the address it means."""
        checked = check_host("127.1", parse_nets("127.0.0.0/8"), resolver=Resolver())
        assert checked.tls_name == "127.0.0.1"

    def test_listed_only_explains_why(self) -> None:
        """A public address outside the nets is refused when the connection must stay inside them."""
        with pytest.raises(HostNotAllowed) as caught:
            check_host("93.184.216.34", (), listed_only="the login would cross the network unencrypted (security: none)")
        assert caught.value.refusal.listed_only
        assert "not inside MAILPIPE_MAIL_ALLOWED_NETS, and it must be: the login would cross" in str(caught.value)

    def test_a_failed_lookup_names_the_host(self) -> None:
        with pytest.raises(socket.gaierror) as caught:
            check_host("nowhere.invalid", (), resolver=Resolver())
        assert "nowhere.invalid" in str(caught.value)

    def test_settings_are_parsed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ops.settings import reset_settings

        monkeypatch.setenv("MAILPIPE_MAIL_ALLOWED_NETS", "10.1.2.3/32")
        monkeypatch.setenv("MAILPIPE_WEBHOOK_ALLOWED_NETS", "192.168.0.0/16")
        reset_settings()
        assert mail_nets() == parse_nets("10.1.2.3/32") and webhook_nets() == parse_nets("192.168.0.0/16")
        monkeypatch.delenv("MAILPIPE_MAIL_ALLOWED_NETS")
        reset_settings()
        assert mail_nets() == ()


class TestOpenSocket:
    def test_connects_to_the_checked_address_not_a_new_lookup(self, listener: socket.socket) -> None:
        """Rebinding does nothing: the socket goes to the address checked, whatever DNS says later."""
        dns = Resolver(mail_rebind_test=["127.0.0.1"])
        checked = check_host("mail.rebind.test", parse_nets("127.0.0.0/8"), resolver=dns)
        dns.answers["mail.rebind.test"] = ["10.9.9.9"]  # the next answer would point elsewhere
        with open_socket(checked, listener.getsockname()[1], 2.0) as sock:
            assert sock.getpeername()[:2] == ("127.0.0.1", listener.getsockname()[1])
        assert dns.calls == ["mail.rebind.test"]

    def test_falls_back_to_the_next_checked_address(self, listener: socket.socket) -> None:
        """Like create_connection: an address that refuses is skipped for the next one checked."""
        port = listener.getsockname()[1]  # nothing listens on [::1]:port
        target = CheckedHost("dual.test", "dual.test", (ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")))
        with open_socket(target, port, 2.0) as sock:
            assert sock.getpeername()[0] == "127.0.0.1"

    def test_the_last_error_is_raised(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(ConnectionRefusedError):
                open_socket(CheckedHost("x", "x", (ipaddress.ip_address("127.0.0.1"),)), port, 2.0)


@pytest.mark.parametrize("var", ["MAILPIPE_MAIL_ALLOWED_NETS", "MAILPIPE_WEBHOOK_ALLOWED_NETS"])
def test_a_bad_cidr_stops_the_process_with_one_line(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    from ops.settings import ConfigError, get_settings, reset_settings

    monkeypatch.setenv(var, "127.0.0.0/8,10.0.0.0/33")
    reset_settings()
    with pytest.raises(ConfigError) as caught:
        get_settings()
    assert str(caught.value) == f"{var}: '10.0.0.0/33' is not a CIDR like 10.0.0.0/8"
