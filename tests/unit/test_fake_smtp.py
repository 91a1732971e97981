"""The in-memory SMTP transport, and the settings and envelope checks it shares with the real one."""

from __future__ import annotations

import threading

import pytest

from pipeline.clients.smtp import SmtpError, SmtpErrorKind, SmtpSettings, SmtpTransport, envelope_recipients
from pipeline.stages.smtp_reply import SmtpOutcome
from tests.harness.fake_smtp import DEFAULT_CAPABILITIES, FakeSmtpTransport

RAW = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
SETTINGS = SmtpSettings("smtp.example.test", 587, "starttls", "alice@example.test", password="s3cret-pass")


@pytest.fixture
def fake() -> FakeSmtpTransport:
    return FakeSmtpTransport()


def test_fake_is_an_smtp_transport(fake: FakeSmtpTransport) -> None:
    """The fake satisfies the SmtpTransport protocol the pipeline depends on."""
    assert isinstance(fake, SmtpTransport)


def test_send_records_host_envelope_and_bytes(fake: FakeSmtpTransport) -> None:
    """An accepted send is recorded exactly and answered with a 250 verdict."""
    result = fake.send(SETTINGS, "alice@example.test", ["bob@example.test", "carol@example.test"], RAW)
    assert fake.sends == [("smtp.example.test", "alice@example.test", ("bob@example.test", "carol@example.test"), RAW)]
    assert result.accepted == ("bob@example.test", "carol@example.test")
    assert result.refused == {}
    assert result.response.startswith("250 2.0.0 OK queued as fake-")
    assert result.verdict.outcome is SmtpOutcome.SENT
    assert fake.attempts == 1


def test_duplicate_recipients_are_sent_once(fake: FakeSmtpTransport) -> None:
    """Repeated recipients collapse to one RCPT, keeping the first-seen order."""
    result = fake.send(SETTINGS, "alice@example.test", ["b@x.test", "a@x.test", "b@x.test"], RAW)
    assert result.accepted == ("b@x.test", "a@x.test")


def test_refused_recipient_gets_its_own_verdict(fake: FakeSmtpTransport) -> None:
    """A standing refusal turns one recipient away (case-insensitively) while the other gets the mail."""
    fake.refuse("Bob@Example.test")
    result = fake.send(SETTINGS, "alice@example.test", ["bob@example.test", "carol@example.test"], RAW)
    assert result.accepted == ("carol@example.test",)
    assert result.refused["bob@example.test"].error_code == "mailbox_unavailable"
    assert result.verdict.outcome is SmtpOutcome.SENT
    assert fake.sends[0][2] == ("carol@example.test",)
    fake.accept("bob@example.test")
    assert fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW).accepted == ("bob@example.test",)


def test_all_recipients_refused_records_nothing(fake: FakeSmtpTransport) -> None:
    """When every RCPT is refused there is no DATA, no record, and the verdict is the refusal's."""
    fake.refuse("bob@example.test", 550, "5.1.1 no such user")
    result = fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW)
    assert result.accepted == ()
    assert result.verdict.outcome is SmtpOutcome.FAIL
    assert result.response == "550 5.1.1 no such user"
    assert fake.sends == []


def test_fail_with_at_data_is_a_verdict_not_an_exception(fake: FakeSmtpTransport) -> None:
    """A scripted 451 at DATA refuses everyone with a retry verdict, once."""
    fake.fail_with(451, "4.7.1 Greylisted", stage="data", times=1)
    first = fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW)
    assert first.verdict.outcome is SmtpOutcome.RETRY
    assert first.verdict.error_code == "greylisted"
    assert first.refused["bob@example.test"] == first.verdict
    assert fake.sends == []
    second = fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW)
    assert second.verdict.outcome is SmtpOutcome.SENT
    assert len(fake.sends) == 1


def test_fail_with_at_rcpt_counts_per_command(fake: FakeSmtpTransport) -> None:
    """Like the aiosmtpd harness, an RCPT failure with times=1 hits only the first recipient."""
    fake.fail_with(550, "5.1.1 unknown", stage="rcpt", times=1)
    result = fake.send(SETTINGS, "alice@example.test", ["a@x.test", "b@x.test"], RAW)
    assert result.accepted == ("b@x.test",)
    assert set(result.refused) == {"a@x.test"}


def test_fail_with_at_mail_refuses_the_whole_message(fake: FakeSmtpTransport) -> None:
    """A refused MAIL FROM refuses every recipient with that reply."""
    fake.fail_with(553, "5.7.1 Sender address rejected: not owned by user", stage="mail")
    result = fake.send(SETTINGS, "alice@example.test", ["a@x.test", "b@x.test"], RAW)
    assert result.accepted == ()
    assert {v.error_code for v in result.refused.values()} == {"relay_denied"}
    assert fake.send(SETTINGS, "alice@example.test", ["a@x.test"], RAW).accepted == ()  # until cleared
    fake.clear_failure()
    assert fake.send(SETTINGS, "alice@example.test", ["a@x.test"], RAW).accepted == ("a@x.test",)


def test_fail_with_rejects_unknown_stage(fake: FakeSmtpTransport) -> None:
    """Only mail, rcpt and data can be scripted."""
    with pytest.raises(ValueError, match="stage"):
        fake.fail_with(550, "no", stage="quit")


def test_421_at_rcpt_stops_the_transaction(fake: FakeSmtpTransport) -> None:
    """A 421 (server closing) at RCPT ends the attempt: nothing accepted, retry everyone."""
    fake.fail_with(421, "4.7.0 closing connection", stage="rcpt", times=1)
    result = fake.send(SETTINGS, "alice@example.test", ["a@x.test", "b@x.test"], RAW)
    assert result.accepted == ()
    assert result.verdict.outcome is SmtpOutcome.RETRY
    assert set(result.refused) == {"a@x.test", "b@x.test"}


@pytest.mark.parametrize("kind", list(SmtpErrorKind))
def test_raise_error_raises_the_scripted_kind_then_recovers(fake: FakeSmtpTransport, kind: SmtpErrorKind) -> None:
    """A scripted error raises SmtpError of that kind for the next send only."""
    fake.raise_error(kind, "boom", code=421 if kind is SmtpErrorKind.PROTOCOL else None)
    with pytest.raises(SmtpError) as caught:
        fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW)
    assert caught.value.kind is kind
    assert caught.value.message == "boom"
    assert caught.value.code == (421 if kind is SmtpErrorKind.PROTOCOL else None)
    assert fake.sends == []
    assert fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW).verdict.outcome is SmtpOutcome.SENT


def test_raise_error_forever_until_cleared(fake: FakeSmtpTransport) -> None:
    """times=None keeps failing until clear_failure()."""
    fake.raise_error(SmtpErrorKind.CONNECT, "refused", times=None)
    for _ in range(3):
        with pytest.raises(SmtpError):
            fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW)
    fake.clear_failure()
    assert fake.send(SETTINGS, "alice@example.test", ["bob@example.test"], RAW).accepted == ("bob@example.test",)
    assert fake.attempts == 4


def test_probe_records_settings_and_answers_the_configured_result(fake: FakeSmtpTransport) -> None:
    """probe() succeeds by default, can be told to fail, and remembers what it was asked."""
    ok = fake.probe(SETTINGS)
    assert ok.ok and ok.error_code is None
    assert ok.capabilities == DEFAULT_CAPABILITIES
    fake.fail_probe(SmtpErrorKind.AUTH, "535 5.7.8 Authentication credentials invalid")
    failed = fake.probe(SETTINGS)
    assert (failed.ok, failed.error_code) == (False, "auth")
    assert failed.message == "535 5.7.8 Authentication credentials invalid"
    assert fake.probes == [SETTINGS, SETTINGS]
    fake.clear_failure()
    assert fake.probe(SETTINGS).ok


def test_fake_is_safe_from_many_threads(fake: FakeSmtpTransport) -> None:
    """Concurrent sends from worker threads are all recorded."""
    threads = [
        threading.Thread(target=lambda i=i: fake.send(SETTINGS, "a@x.test", [f"r{i}@x.test"], RAW)) for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s[2][0] for s in fake.sends) == sorted(f"r{i}@x.test" for i in range(20))
    assert len({s for s in fake.sends}) == 20


def test_send_rejects_bad_envelopes(fake: FakeSmtpTransport) -> None:
    """Empty recipient lists and addresses that would break the command line are caller errors."""
    with pytest.raises(ValueError, match="empty"):
        fake.send(SETTINGS, "alice@example.test", [], RAW)
    with pytest.raises(ValueError, match="invalid address"):
        fake.send(SETTINGS, "alice@example.test", ["bob@example.test\r\nRCPT TO:<evil@x.test>"], RAW)
    assert fake.attempts == 0


def test_envelope_recipients_allows_the_null_sender() -> None:
    """MAIL FROM:<> (bounces) is allowed; blank recipients and injected brackets are not."""
    assert envelope_recipients("", ["a@x.test"]) == ["a@x.test"]
    with pytest.raises(ValueError):
        envelope_recipients("a@x.test", ["  "])
    with pytest.raises(ValueError):
        envelope_recipients("a@x.test> BODY=8BITMIME", ["b@x.test"])


def test_settings_repr_hides_secrets() -> None:
    """Neither the password nor the token appears in the settings' repr."""
    with_password = SmtpSettings("h", 465, "ssl", "u@x.test", password="hunter2-secret")
    with_token = SmtpSettings("h", 465, "ssl", "u@x.test", oauth_token="ya29.secret-token")
    assert "hunter2-secret" not in repr(with_password)
    assert "auth=password" in repr(with_password)
    assert "ya29.secret-token" not in repr(with_token) and "auth=oauth" in repr(with_token)
    assert "auth=none" in repr(SmtpSettings("h", 25, "none", None))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"security": "tls"},
        {"password": "p", "oauth_token": "t"},
        {"username": None, "password": "p"},
        {"password": None},
        {"timeout": 0},
        {"local_hostname": "client.test\r\nRCPT TO:<x@y.test>"},
        {"local_hostname": ""},
    ],
)
def test_settings_validation(kwargs: dict[str, object]) -> None:
    """Impossible settings are refused when they are made, not when they are used."""
    values: dict[str, object] = {"host": "h", "port": 587, "security": "starttls", "username": "u", "password": "pw"}
    values.update(kwargs)
    with pytest.raises(ValueError):
        SmtpSettings(**values)  # type: ignore[arg-type]
