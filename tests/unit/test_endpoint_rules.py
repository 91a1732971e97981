"""pipeline.stages.endpoint_rules and probe_report: when a stored secret may follow an endpoint, and
what a connection test says (our words, never the server's)."""

from __future__ import annotations

import pytest

from pipeline.stages.endpoint_rules import changed_fields, oauth_host_rule, same_host
from pipeline.stages.probe_report import failure_message, success_message

STORED = {"host": "mail.acme.test", "port": 993, "security": "ssl", "username": "sam@acme.test"}


class TestChangedFields:
    def test_nothing_given_or_the_same_values_is_no_change(self) -> None:
        assert changed_fields(STORED, {}) == []
        assert changed_fields(STORED, {"host": "MAIL.acme.test.", "port": 993, "security": "ssl", "username": None}) == []

    @pytest.mark.parametrize("given,changed", [({"host": "evil.test"}, ["host"]), ({"port": 143}, ["port"]),
                                               ({"security": "none"}, ["security"]), ({"username": "x@acme.test"}, ["username"]),
                                               ({"host": "evil.test", "security": "none"}, ["host", "security"])])
    def test_each_endpoint_field_counts(self, given: dict[str, object], changed: list[str]) -> None:
        assert changed_fields(STORED, given) == changed


class TestOAuthHostRule:
    def test_the_providers_own_hosts_need_nothing(self) -> None:
        assert oauth_host_rule("gmail", "imap", "imap.gmail.com") is None
        assert oauth_host_rule("gmail", "smtp", "SMTP.gmail.com.") is None
        assert oauth_host_rule("outlook", "imap", "outlook.office365.com") is None

    def test_any_other_host_must_be_listed(self) -> None:
        rule = oauth_host_rule("gmail", "imap", "imap.attacker.test")
        assert rule is not None and "Google" in rule and "imap.gmail.com" in rule
        assert oauth_host_rule("outlook", "smtp", "10.1.2.3") is not None
        assert same_host("a.test", "A.TEST.") and not same_host("a.test", None)


class TestProbeReport:
    @pytest.mark.parametrize("kind,fragment", [("dns", "could not be resolved"), ("connect", "could not connect to mx.test:993"),
                                               ("timeout", "did not answer in time"), ("auth", "refused the username or password"),
                                               ("protocol", "did not answer as an IMAP server"), ("tls", "TLS could not be set up")])
    def test_each_kind_has_our_own_sentence(self, kind: str, fragment: str) -> None:
        assert fragment in failure_message("imap", kind, host="mx.test", port=993, security="ssl")

    def test_hints(self) -> None:
        assert "usually port 465" in failure_message("smtp", "tls", host="mx.test", port=587, security="ssl")
        assert "certificate is not trusted, or not issued for mx.test" in failure_message(
            "smtp", "tls", host="mx.test", port=465, security="ssl", certificate=True)
        assert "OAuth token" in failure_message("smtp", "auth", host="mx.test", port=587, security="starttls", oauth=True)
        assert success_message("imap", "ssl", authenticated=True, folders=4) == "logged in over implicit TLS; 4 folders"
