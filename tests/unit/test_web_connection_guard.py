"""The connection guard at the API, with the in-memory fake IMAP/SMTP (no real DNS needed):
refused hosts and plaintext are 422 before any connection, a stored password never follows a
changed endpoint, control characters are 422 naming the field, connection tests are rate-limited
per organization, and test results are in our own words.

The same against real sockets, Dovecot and the OAuth stand-in: tests/integration/test_connection_guard.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlmodel import Session
from starlette.testclient import TestClient

from models import EmailAccount
from models.db import get_engine
from ops.keys import unseal
from ops.settings import reset_settings
from pipeline.clients.imap import ImapErrorKind, ImapSettings
from pipeline.clients.smtp import SmtpErrorKind
from pipeline.flows.connections import use_imap_connector, use_smtp_transport
from tests.harness.fake_imap import FakeImapServer, fake_connect
from tests.harness.fake_smtp import FakeSmtpTransport
from tests.harness.flow import count, drain, make_org

PUBLIC = "93.184.216.34"  # a public address, given as a literal so no lookup is needed
BODY = {"user_id": "u1", "provider": "imap", "email": "alice@example.test",
        "imap": {"host": "imap.example.test", "password": "alicepass"},
        "smtp": {"host": "smtp.example.test", "password": "alicepass"}}


@pytest.fixture
def env(db: str, stub_broker: StubBroker, stub_worker: Worker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.delenv("MAILPIPE_MAIL_ALLOWED_NETS")  # the production default: nothing beyond public addresses
    reset_settings()
    imap_server = FakeImapServer("alice@example.test", "alicepass")
    connects: list[ImapSettings] = []
    real = fake_connect(imap_server)

    def counting(settings: ImapSettings) -> Any:
        connects.append(settings)
        return real(settings)

    smtp = FakeSmtpTransport()
    use_imap_connector(counting)
    use_smtp_transport(smtp)
    from web.app import create_app

    org_id, key = make_org()
    with TestClient(create_app()) as client:
        yield {"client": client, "h": {"Authorization": f"Bearer {key}"}, "imap": imap_server, "smtp": smtp,
               "connects": connects, "org_id": org_id, "broker": stub_broker, "worker": stub_worker}


def allow(monkeypatch: pytest.MonkeyPatch, nets: str) -> None:
    monkeypatch.setenv("MAILPIPE_MAIL_ALLOWED_NETS", nets)
    reset_settings()


def with_server(proto: str, **fields: Any) -> dict[str, Any]:
    return {**BODY, proto: {**BODY[proto], **fields}}  # type: ignore[dict-item]


def error(r: Any) -> dict[str, Any]:
    return dict(r.json()["error"])


def nothing_connected(env: dict[str, Any]) -> bool:
    return not env["connects"] and not env["smtp"].probes


class TestRefusedBeforeConnecting:
    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0.0.0.0", "::1", "::ffff:127.0.0.1",
                                      "10.1.2.3", "169.254.169.254", "100.64.0.1", "fd00::1", "64:ff9b::7f00:1"])
    @pytest.mark.parametrize("path", ["/api/v1/accounts/test", "/api/v1/accounts"])
    def test_internal_addresses_are_422_host_not_allowed(self, env: dict[str, Any], host: str, path: str) -> None:
        """Every spelling of an internal address: 422 naming the field and the setting; nothing connects."""
        r = env["client"].post(path, json=with_server("smtp", host=host), headers=env["h"])
        assert r.status_code == 422, r.text
        e = error(r)
        assert e["code"] == "host_not_allowed" and e["details"]["errors"][0]["field"] == "smtp.host"
        assert "MAILPIPE_MAIL_ALLOWED_NETS" in e["message"]
        assert nothing_connected(env)

    def test_skip_test_does_not_skip_the_guard(self, env: dict[str, Any]) -> None:
        r = env["client"].post("/api/v1/accounts", json={**with_server("imap", host="127.0.0.1"), "skip_test": True}, headers=env["h"])
        assert r.status_code == 422 and error(r)["code"] == "host_not_allowed"
        assert count(EmailAccount) == 0

    def test_allowed_nets_let_it_through(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        allow(monkeypatch, "127.0.0.0/8,::1/128")
        for host in ("127.0.0.1", "::1", "0x7f000001"):
            r = env["client"].post("/api/v1/accounts/test", json=with_server("imap", host=host), headers=env["h"])
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
        assert len(env["connects"]) == 3

    def test_plaintext_with_a_password_needs_the_allowed_nets(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """security "none" to a public host: 422 plaintext_not_allowed on the security field; inside the nets: fine."""
        body = with_server("imap", host=PUBLIC, security="none")
        r = env["client"].post("/api/v1/accounts/test", json=body, headers=env["h"])
        assert r.status_code == 422 and error(r)["code"] == "plaintext_not_allowed"
        assert error(r)["details"]["errors"][0]["field"] == "imap.security" and "unencrypted" in error(r)["message"]
        assert nothing_connected(env)
        allow(monkeypatch, f"{PUBLIC}/32")
        assert env["client"].post("/api/v1/accounts/test", json=body, headers=env["h"]).status_code == 200

    def test_unresolvable_names_are_left_to_the_test(self, env: dict[str, Any]) -> None:
        """A name that does not resolve is not a refusal: the fakes need no DNS (the real clients report dns)."""
        r = env["client"].post("/api/v1/accounts/test", json=BODY, headers=env["h"])
        assert r.status_code == 200 and r.json()["ok"] is True


class TestControlCharacters:
    @pytest.mark.parametrize("proto,name,value", [
        ("imap", "password", "alicepass\r\nA2 LOGOUT"), ("imap", "password", "alicepass\r\n"), ("smtp", "username", "a\nb@x.test"),
        ("imap", "username", "alice\x01auth=Bearer x"), ("imap", "host", "imap.example.test\r\n"), ("smtp", "host", "smtp\rx.test"),
    ])
    def test_are_422_naming_the_field(self, env: dict[str, Any], proto: str, name: str, value: str) -> None:
        """CR, LF, SOH, even trailing ones (not silently stripped): 422 on that field, nothing connects,
        and the value is not echoed."""
        r = env["client"].post("/api/v1/accounts/test", json=with_server(proto, **{name: value}), headers=env["h"])
        assert r.status_code == 422, r.text
        assert f"{proto}.{name}" in [e["field"] for e in error(r)["details"]["errors"]]
        assert value not in r.text and "A2 LOGOUT" not in r.text
        assert nothing_connected(env)

    def test_nul_is_422_too(self, env: dict[str, Any]) -> None:
        r = env["client"].post("/api/v1/accounts", json=with_server("imap", password="a\x00b"), headers=env["h"])
        assert r.status_code == 422 and nothing_connected(env)

    def test_email_with_a_control_character(self, env: dict[str, Any]) -> None:
        r = env["client"].post("/api/v1/accounts/test", json={**BODY, "email": "alice\x01@example.test"}, headers=env["h"])
        assert r.status_code == 422 and error(r)["details"]["errors"][0]["field"] == "email"


class TestPatchNeedsThePasswordAgain:
    @pytest.fixture
    def acct(self, env: dict[str, Any]) -> str:
        r = env["client"].post("/api/v1/accounts", json=BODY, headers=env["h"])
        assert r.status_code == 201, r.text
        drain(env["broker"], env["worker"])  # the first fetch (it connects too) is over
        env["connects"].clear()
        env["smtp"].probes.clear()
        return str(r.json()["id"])

    @pytest.mark.parametrize("change", [{"host": "imap.attacker.test"}, {"port": 143}, {"security": "starttls"},
                                        {"username": "other@example.test"}, {"host": "imap.attacker.test", "security": "none"}])
    @pytest.mark.parametrize("skip_test", [False, True])
    def test_a_changed_endpoint_without_the_password_is_422(self, env: dict[str, Any], acct: str, change: dict[str, Any],
                                                             skip_test: bool) -> None:
        """The stored password never follows: 422 password_required on imap.password, nothing connects, nothing changes."""
        r = env["client"].patch(f"/api/v1/accounts/{acct}", json={"imap": change, "skip_test": skip_test}, headers=env["h"])
        assert r.status_code == 422, r.text
        assert error(r)["code"] == "password_required" and error(r)["details"]["errors"][0]["field"] == "imap.password"
        assert nothing_connected(env)
        with Session(get_engine()) as s:
            a = s.get(EmailAccount, acct)
            assert a is not None and (a.imap_host, a.imap_port, a.imap_security) == ("imap.example.test", 993, "ssl")

    def test_the_same_endpoint_or_a_new_password_is_fine(self, env: dict[str, Any], acct: str) -> None:
        c, h = env["client"], env["h"]
        same = c.patch(f"/api/v1/accounts/{acct}", json={"imap": {"host": "IMAP.example.test", "port": 993}}, headers=h)
        assert same.status_code == 200, same.text
        moved = c.patch(f"/api/v1/accounts/{acct}", json={"imap": {"host": "imap2.example.test", "password": "alicepass"}}, headers=h)
        assert moved.status_code == 200 and moved.json()["imap"]["host"] == "imap2.example.test"
        assert env["connects"][-1].password == "alicepass"

    def test_smtp_side_too(self, env: dict[str, Any], acct: str) -> None:
        r = env["client"].patch(f"/api/v1/accounts/{acct}", json={"smtp": {"host": "smtp.attacker.test"}}, headers=env["h"])
        assert r.status_code == 422 and error(r)["details"]["errors"][0]["field"] == "smtp.password"

    def test_patch_to_an_internal_host_with_the_password_is_still_refused(self, env: dict[str, Any], acct: str) -> None:
        r = env["client"].patch(f"/api/v1/accounts/{acct}", json={"imap": {"host": "127.0.0.1", "password": "alicepass"}},
                                headers=env["h"])
        assert r.status_code == 422 and error(r)["code"] == "host_not_allowed" and nothing_connected(env)


class TestRateLimit:
    def test_connection_tests_are_limited_per_organization(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """Beyond MAILPIPE_ACCOUNT_TESTS_PER_MINUTE: 429 with Retry-After; skip_test creates and other orgs are not counted."""
        monkeypatch.setenv("MAILPIPE_ACCOUNT_TESTS_PER_MINUTE", "2")
        reset_settings()
        c, h = env["client"], env["h"]
        assert c.post("/api/v1/accounts/test", json=BODY, headers=h).status_code == 200
        assert c.post("/api/v1/accounts/test", json=BODY, headers=h).status_code == 200
        r = c.post("/api/v1/accounts/test", json=BODY, headers=h)
        assert r.status_code == 429 and error(r)["code"] == "rate_limited" and 1 <= int(r.headers["Retry-After"]) <= 30
        assert c.post("/api/v1/accounts", json=BODY, headers=h).status_code == 429  # a create's test counts too
        assert c.post("/api/v1/accounts", json={**BODY, "skip_test": True}, headers=h).status_code == 201
        _, other = make_org("other")
        assert c.post("/api/v1/accounts/test", json=BODY, headers={"Authorization": f"Bearer {other}"}).status_code == 200


class TestOwnWording:
    def test_server_text_is_not_echoed(self, env: dict[str, Any]) -> None:
        """The server's words (a banner, an error) stay out of the test result; the kind stays."""
        env["imap"].fail(ImapErrorKind.PROTOCOL, message="* BYE secret-banner-7f3a internal.corp ready")
        env["smtp"].fail_probe(SmtpErrorKind.CONNECT, "554 secret-banner-7f3a relay.internal.corp")
        res = env["client"].post("/api/v1/accounts/test", json=BODY, headers=env["h"]).json()
        assert (res["imap"]["error_code"], res["smtp"]["error_code"]) == ("protocol", "connect")
        assert "secret-banner" not in str(res) and "internal.corp" not in str(res)
        assert "imap.example.test:993" in res["imap"]["message"]


class TestOAuthOverrides:
    @pytest.fixture
    def google(self, env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_ID", "gid")
        monkeypatch.setenv("MAILPIPE_GOOGLE_CLIENT_SECRET", "gsecret-value")
        reset_settings()
        return env

    def authorize(self, env: dict[str, Any], **params: str) -> Any:
        return env["client"].get("/api/v1/oauth/google/authorize", headers=env["h"],
                                 params={"user_id": "u1", "email": "jane@gmail.test", **params})

    @pytest.mark.parametrize("param", ["imap_host", "smtp_host"])
    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f000001", "::1", "10.1.2.3", PUBLIC])
    def test_a_token_goes_only_to_the_providers_hosts(self, google: dict[str, Any], param: str, host: str) -> None:
        """Any override host outside the allowed nets (internal or public): 422 host_not_allowed naming the parameter."""
        r = self.authorize(google, **{param: host})
        assert r.status_code == 422, r.text
        assert error(r)["code"] == "host_not_allowed" and error(r)["details"]["errors"][0]["field"] == param
        assert "MAILPIPE_MAIL_ALLOWED_NETS" in error(r)["message"]

    def test_inside_the_allowed_nets_an_override_is_fine(self, google: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        allow(monkeypatch, "10.1.2.3/32")
        assert self.authorize(google, imap_host="10.1.2.3", smtp_host="10.1.2.3").status_code == 200

    def test_control_characters_in_an_override_host(self, google: dict[str, Any]) -> None:
        r = self.authorize(google, imap_host="imap.gmail.com\r\nx")
        assert r.status_code == 422 and error(r)["details"]["errors"][0]["field"] == "imap_host"

    def test_the_stored_token_of_a_grant_account_uses_listed_only_off_the_preset(self, google: dict[str, Any]) -> None:
        """connections.imap_settings marks a grant's token for a non-preset host as listed_only (the client enforces it)."""
        from pipeline.flows.connections import Credentials

        acct = EmailAccount(org_id="o", user_id="u", email="jane@gmail.test", email_norm="jane@gmail.test", provider="gmail")
        grant = Credentials(None, "tok", from_grant=True)
        assert grant.listed_only(acct, "imap", "imap.gmail.com") is None
        assert grant.listed_only(acct, "imap", "imap.attacker.test") is not None
        assert Credentials("pw", None).listed_only(acct, "imap", "imap.attacker.test") is None


def test_stored_password_is_kept_sealed_after_a_refused_patch(env: dict[str, Any]) -> None:
    """Sanity: the refused PATCH above leaves the sealed password as it was."""
    r = env["client"].post("/api/v1/accounts", json=BODY, headers=env["h"])
    acct = r.json()["id"]
    env["client"].patch(f"/api/v1/accounts/{acct}", json={"imap": {"host": "evil.test"}}, headers=env["h"])
    with Session(get_engine()) as s:
        a = s.get(EmailAccount, acct)
        assert a is not None and unseal("email_accounts", "imap_password_enc", a.imap_password_enc) == "alicepass"


class TestPatchOfAnOAuthMailbox:
    """A mailbox with a Google grant: its token goes to Google's hosts, elsewhere only inside the allowed nets."""

    @pytest.fixture
    def grant_account(self, env: dict[str, Any]) -> str:
        import json
        from datetime import timedelta

        from models import new_id, utcnow
        from models.oauth import OAuthGrant
        from ops.keys import seal

        env["imap"].username, env["imap"].password, env["imap"].oauth_token = "jane@gmail.test", None, "access-tok"
        with Session(get_engine()) as s:
            a = EmailAccount(id=new_id(), org_id=env["org_id"], user_id="u1", email="jane@gmail.test", email_norm="jane@gmail.test",
                             provider="gmail", imap_host="imap.gmail.com", imap_port=993, imap_security="ssl",
                             imap_username="jane@gmail.test", smtp_host="smtp.gmail.com", smtp_port=587, smtp_security="starttls",
                             smtp_username="jane@gmail.test")
            s.add(a)
            s.flush()
            s.add(OAuthGrant(account_id=a.id, org_id=env["org_id"], provider="google", expires_at=utcnow() + timedelta(hours=1),
                             tokens_enc=seal("oauth_grants", "tokens_enc", json.dumps({"access_token": "access-tok",
                                                                                       "refresh_token": "r"}))))
            s.commit()
            return a.id

    def test_the_token_does_not_follow_to_a_host_outside_the_nets(self, env: dict[str, Any], grant_account: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """PATCH imap to a public host: 422 host_not_allowed (no password, or with one); nothing connects.
        Inside MAILPIPE_MAIL_ALLOWED_NETS (an Exchange on premises) the token may go there."""
        c, h = env["client"], env["h"]
        for change in ({"host": PUBLIC}, {"host": PUBLIC, "password": "app-password"}, {"host": "10.1.2.3"}):
            r = c.patch(f"/api/v1/accounts/{grant_account}", json={"imap": change, "skip_test": True}, headers=h)
            assert r.status_code == 422 and error(r)["code"] == "host_not_allowed", r.text
            assert "Google" in error(r)["message"] or "private" in error(r)["message"]
        assert nothing_connected(env)
        allow(monkeypatch, "10.1.2.3/32")
        r = c.patch(f"/api/v1/accounts/{grant_account}", json={"imap": {"host": "10.1.2.3"}}, headers=h)
        assert r.status_code == 200, r.text
        assert env["connects"][-1].oauth_token == "access-tok" and env["connects"][-1].listed_only is not None

    def test_back_to_the_providers_host_is_fine(self, env: dict[str, Any], grant_account: str) -> None:
        r = env["client"].patch(f"/api/v1/accounts/{grant_account}", json={"imap": {"port": 993, "host": "imap.gmail.com"}},
                                headers=env["h"])
        assert r.status_code == 200, r.text
        assert env["connects"][-1].listed_only is None
