"""pipeline.stages.netpolicy: which addresses a tenant-aimed connection may reach, and how hosts spell them."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from pipeline.stages.netpolicy import ANY, check_addresses, embedded_ipv4, host_literal, in_nets, parse_nets, special_range

ip = ipaddress.ip_address


class TestHostLiteral:
    @pytest.mark.parametrize("host,expected", [
        ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"), ("0X7F000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"), ("0.0.0.0", "0.0.0.0"), ("10.1.2.3", "10.1.2.3"), ("1.2.3", "1.2.0.3"),
        ("::1", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"), ("64:ff9b::7f00:1", "64:ff9b::7f00:1"),
    ])
    def test_numeric_spellings_are_read_as_inet_aton_does(self, host: str, expected: str) -> None:
        """Every IPv4 spelling glibc accepts (short, octal, hex, one big integer) and IPv6 text is an address."""
        assert host_literal(host) == ip(expected)

    @pytest.mark.parametrize("host", ["mail.example.com", "localhost", "256.1.1.1", "1.2.3.4.5", "08.1.1.1", "1..2",
                                      "0x1g", "0x", "127.0.0.1.", "4294967296", "1.16777216", "٣.٣.٣.٣", ":::"])
    def test_names_and_non_addresses_are_not_literals(self, host: str) -> None:
        """Names, out-of-range parts, bad octal, trailing dots and non-ASCII digits are left to the resolver,
        as getaddrinfo leaves them (it does not read them numerically either)."""
        assert host_literal(host) is None
        with pytest.raises((socket.gaierror, UnicodeError)):
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0177.0.0.1",
                                      "0x7f.1", "0", "1.2.3", "017700000001", "0xff.0xff.0xff.0xff", "255.16777215",
                                      "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "fe80::1"])
    def test_agrees_with_this_machines_getaddrinfo(self, host: str) -> None:
        """The spellings getaddrinfo reads numerically (AI_NUMERICHOST) give the same address here."""
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        assert host_literal(host) == ip(infos[0][4][0])


class TestSpecialRanges:
    @pytest.mark.parametrize("address,fragment", [
        ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("0.0.0.0", "this network"),
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"), ("169.254.169.254", "link-local"), ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"), ("255.255.255.255", "reserved"), ("240.0.0.1", "reserved"),
        ("192.0.0.8", "IETF"), ("192.0.2.1", "documentation"), ("198.18.0.1", "benchmarking"),
        ("::", "unspecified"), ("::1", "loopback"), ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
        ("fe80::1", "link-local"), ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("2001:db8::1", "documentation"),
        ("2001::1", "Teredo"), ("64:ff9b:1::1", "local-use NAT64"), ("100::1", "discard"), ("4000::1", "reserved IPv6"),
    ])
    def test_non_public_ranges_are_named(self, address: str, fragment: str) -> None:
        """Loopback, private, CGNAT, link-local (cloud metadata), multicast, reserved: each refused with its name."""
        label = special_range(ip(address))
        assert label is not None and fragment in label

    @pytest.mark.parametrize("address,fragment", [
        ("::ffff:127.0.0.1", "loopback (127.0.0.0/8), wrapped in IPv4-mapped"),
        ("::ffff:10.0.0.1", "private (10.0.0.0/8), wrapped in IPv4-mapped"),
        ("64:ff9b::7f00:1", "loopback (127.0.0.0/8), wrapped in NAT64"),
        ("64:ff9b::a9fe:a9fe", "link-local (169.254.0.0/16), wrapped in NAT64"),
        ("2002:7f00:1::1", "loopback (127.0.0.0/8), wrapped in 6to4"),
        ("2002:c0a8:101::", "private (192.168.0.0/16), wrapped in 6to4"),
        ("::7f00:1", "IPv4-compatible"), ("::808:808", "IPv4-compatible"),
    ])
    def test_ipv4_in_ipv6_clothing_is_judged_by_the_ipv4_address(self, address: str, fragment: str) -> None:
        """Mapped, NAT64 and 6to4 forms carry the IPv4 range's verdict; deprecated IPv4-compatible is always refused."""
        label = special_range(ip(address))
        assert label is not None and fragment in label

    @pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "100.63.255.255", "100.128.0.0",
                                         "172.32.0.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
                                         "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
    def test_public_addresses_pass(self, address: str) -> None:
        """Public IPv4/IPv6 (also mapped, or through NAT64/6to4) have no special range."""
        assert special_range(ip(address)) is None

    def test_embedded_ipv4_names_the_form(self) -> None:
        assert embedded_ipv4(ip("::ffff:1.2.3.4")) == (ip("1.2.3.4"), "IPv4-mapped")
        assert embedded_ipv4(ip("2002:0102:0304::5")) == (ip("1.2.3.4"), "6to4")
        assert embedded_ipv4(ip("::1")) is None and embedded_ipv4(ip("1.2.3.4")) is None


class TestCheckAddresses:
    def test_allowed_nets_open_a_range_and_the_mapped_form_counts_as_ipv4(self) -> None:
        """127.0.0.0/8 in the allowed nets lets 127.0.0.1 and ::ffff:127.0.0.1 through, not ::1."""
        nets = parse_nets("127.0.0.0/8")
        assert check_addresses([ip("127.0.0.1")], nets) is None
        assert check_addresses([ip("::ffff:127.0.0.1")], nets) is None
        refused = check_addresses([ip("::1")], nets)
        assert refused is not None and refused.address == ip("::1") and "loopback" in refused.reason
        assert check_addresses([ip("::1")], parse_nets("127.0.0.0/8, ::1/128")) is None

    def test_one_bad_address_in_the_answer_refuses_the_host(self) -> None:
        """A DNS answer mixing a public and a private address is refused, whichever comes first."""
        refused = check_addresses([ip("93.184.216.34"), ip("10.0.0.5")], ())
        assert refused is not None and refused.address == ip("10.0.0.5")

    def test_listed_only_needs_the_address_inside_the_nets_even_when_public(self) -> None:
        """Plaintext or an OAuth token off the provider's hosts: public is not enough, listed is."""
        public = [ip("93.184.216.34")]
        assert check_addresses(public, ()) is None
        refused = check_addresses(public, (), listed_only=True)
        assert refused is not None and refused.listed_only
        assert check_addresses(public, parse_nets("93.184.216.34/32"), listed_only=True) is None
        assert check_addresses([ip("127.0.0.1")], ANY, listed_only=True) is None

    def test_no_address_is_a_programming_error(self) -> None:
        with pytest.raises(ValueError):
            check_addresses([], ())

    def test_in_nets_does_not_unwrap_nat64(self) -> None:
        """A NAT64 address reaches the IPv4 host through a gateway: only the mapped form counts as IPv4 here."""
        assert in_nets(ip("::ffff:10.1.2.3"), parse_nets("10.1.2.3/32"))
        assert not in_nets(ip("64:ff9b::a01:203"), parse_nets("10.1.2.3/32"))


class TestParseNets:
    def test_cidrs_with_spaces_and_empties(self) -> None:
        assert parse_nets(" 10.1.2.3/32, ,127.0.0.0/8,::1/128 ") == (
            ipaddress.ip_network("10.1.2.3/32"), ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
        assert parse_nets("") == () and parse_nets(None) == ()

    def test_a_bad_entry_is_named(self) -> None:
        with pytest.raises(ValueError, match="'10.0.0.300/8' is not a CIDR"):
            parse_nets("127.0.0.0/8,10.0.0.300/8")


def test_the_unspecified_address_is_this_machine() -> None:
    """0.0.0.0 and :: connect to loopback on Linux: they are judged (and allowed) as loopback."""
    from pipeline.stages.netpolicy import destination

    assert destination(ip("0.0.0.0")) == ip("127.0.0.1") and destination(ip("::")) == ip("::1")
    assert destination(ip("::ffff:0.0.0.0")) == ip("::ffff:127.0.0.1") and destination(ip("8.8.8.8")) == ip("8.8.8.8")
