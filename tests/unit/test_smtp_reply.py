"""Classification of SMTP replies and failures into sent/retry/fail verdicts, and result assembly."""

from __future__ import annotations

import pytest

from pipeline.clients.smtp import SmtpError, SmtpErrorKind, send_result
from pipeline.stages.smtp_reply import (
    ERROR_CODES,
    SmtpOutcome,
    SmtpVerdict,
    classify_error,
    classify_reply,
    enhanced_code,
    overall_verdict,
    per_recipient,
)

SENT, RETRY, FAIL = SmtpOutcome.SENT, SmtpOutcome.RETRY, SmtpOutcome.FAIL

REPLIES = [
    # Success.
    (250, "2.0.0 OK queued as 4Xyz", SENT, ""),
    (250, "Message accepted for delivery", SENT, ""),
    (251, "2.1.5 User not local; will forward", SENT, ""),
    # Transient: greylisting, rate limits, storage, generic.
    (451, "4.7.1 Greylisted, please try again in 300 seconds", RETRY, "greylisted"),
    (450, "4.2.0 <bob@example.com>: Recipient address rejected: Greylisted", RETRY, "greylisted"),
    (451, "4.7.1 Please try again later", RETRY, "greylisted"),
    (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", RETRY, "rate_limited"),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents", RETRY, "rate_limited"),
    (452, "4.5.3 Too many recipients", RETRY, "rate_limited"),
    (421, "4.7.0 Too many concurrent SMTP connections", RETRY, "rate_limited"),
    (452, "4.2.2 The email account that you tried to reach is over quota", RETRY, "insufficient_storage"),
    (452, "Insufficient system storage", RETRY, "insufficient_storage"),
    (421, "4.7.0 Try again later, closing connection.", RETRY, "temporary_failure"),
    (421, "Service not available, closing transmission channel", RETRY, "temporary_failure"),
    (451, "4.3.0 Local error in processing", RETRY, "temporary_failure"),
    (454, "4.7.0 Temporary authentication failure", RETRY, "temporary_failure"),
    (450, "4.1.1 Mailbox busy", RETRY, "temporary_failure"),
    # Permanent: mailbox problems.
    (550, "5.1.1 The email account that you tried to reach does not exist", FAIL, "mailbox_unavailable"),
    (550, "Requested action not taken: mailbox unavailable", FAIL, "mailbox_unavailable"),
    (551, "User not local; please try <forward@example.com>", FAIL, "mailbox_unavailable"),
    (553, "5.1.3 Bad recipient address syntax", FAIL, "mailbox_unavailable"),
    (501, "5.1.3 Invalid address", FAIL, "mailbox_unavailable"),
    (550, "5.2.1 The email account that you tried to reach is disabled", FAIL, "mailbox_unavailable"),
    (550, "5.0.0 User unknown", FAIL, "mailbox_unavailable"),
    # Permanent: size and storage.
    (552, "5.3.4 Message size exceeds fixed limit", FAIL, "message_too_large"),
    (552, "Requested mail action aborted: message too big", FAIL, "message_too_large"),
    (554, "5.2.3 Message length exceeds administrative limit", FAIL, "message_too_large"),
    (552, "5.2.2 The email account that you tried to reach is over quota", FAIL, "insufficient_storage"),
    (552, "Requested mail action aborted", FAIL, "message_too_large"),
    # Permanent: authentication and TLS.
    (535, "5.7.8 Username and Password not accepted", FAIL, "auth_failed"),
    (535, "Authentication credentials invalid", FAIL, "auth_failed"),
    (534, "5.7.9 Application-specific password required", FAIL, "auth_failed"),
    (530, "5.7.0 Authentication required", FAIL, "auth_failed"),
    (530, "Must issue a STARTTLS command first", FAIL, "tls_failed"),
    (538, "5.7.11 Encryption required for requested authentication mechanism", FAIL, "tls_failed"),
    # Permanent: relaying, rate limits, the rest.
    (554, "5.7.1 Relay access denied", FAIL, "relay_denied"),
    (550, "5.7.1 Unable to relay", FAIL, "relay_denied"),
    (550, "Relaying denied", FAIL, "relay_denied"),
    (550, "5.4.5 Daily user sending quota exceeded", FAIL, "rate_limited"),
    (550, "5.7.26 Unauthenticated email is not accepted (DMARC)", FAIL, "permanent_failure"),
    (554, "Transaction failed", FAIL, "permanent_failure"),
    (500, "Syntax error, command unrecognized", FAIL, "permanent_failure"),
    (503, "5.5.1 Bad sequence of commands", FAIL, "permanent_failure"),
    # Not a final reply: not a refusal either.
    (354, "End data with <CR><LF>.<CR><LF>", RETRY, "temporary_failure"),
    (-1, "Malformed SMTP response", RETRY, "temporary_failure"),
]


@pytest.mark.parametrize(("code", "text", "outcome", "error_code"), REPLIES)
def test_classify_reply(code: int, text: str, outcome: SmtpOutcome, error_code: str) -> None:
    """Each well-known reply gets the outcome of its first digit and the expected reason."""
    verdict = classify_reply(code, text)
    assert (verdict.outcome, verdict.error_code) == (outcome, error_code)
    assert verdict.code == code
    assert verdict.message == text


@pytest.mark.parametrize(("code", "text", "outcome", "error_code"), REPLIES)
def test_error_codes_come_from_the_documented_set(code: int, text: str, outcome: SmtpOutcome, error_code: str) -> None:
    """A non-success verdict always names one of the documented reasons; a success names none."""
    verdict = classify_reply(code, text)
    if verdict.outcome is SENT:
        assert verdict.error_code == ""
    else:
        assert verdict.error_code in ERROR_CODES


def test_enhanced_code_is_parsed_and_normalised() -> None:
    """The enhanced code is read from the start of the text, without leading zeros."""
    assert classify_reply(550, "5.1.1 <bob@example.com>: unknown").enhanced == "5.1.1"
    assert enhanced_code(421, "4.07.028 slow down") == "4.7.28"
    assert enhanced_code(250, "2.0.0 OK") == "2.0.0"


def test_enhanced_code_must_match_the_reply_class() -> None:
    """A 5.x.x code on a 4xx reply (a server bug) is ignored rather than trusted."""
    assert enhanced_code(450, "5.1.1 whatever") is None
    assert classify_reply(450, "5.1.1 whatever").outcome is RETRY


def test_enhanced_code_needs_to_be_a_word_at_the_start() -> None:
    """Version numbers inside the text or glued to other characters are not enhanced codes."""
    assert enhanced_code(550, "user unknown 5.1.1") is None
    assert enhanced_code(550, "5.1.1<bob@example.com>") is None
    assert enhanced_code(550, "") is None


def test_text_is_stripped_but_multiline_text_is_kept() -> None:
    """Surrounding whitespace goes; a multi-line reply keeps its lines and its first-line code."""
    verdict = classify_reply(550, "  5.1.1 The account does not exist.\nPlease check the address  ")
    assert verdict.message == "5.1.1 The account does not exist.\nPlease check the address"
    assert verdict.enhanced == "5.1.1"
    assert verdict.error_code == "mailbox_unavailable"


def test_reply_property_renders_code_and_text() -> None:
    """The reply property puts code and text back together, or gives just the text without a code."""
    assert classify_reply(451, "4.3.0 try later").reply == "451 4.3.0 try later"
    assert classify_error("connect", "connection refused").reply == "connection refused"


def test_per_recipient_classifies_each_address() -> None:
    """per_recipient maps every refused address to its own verdict."""
    verdicts = per_recipient({"a@x.test": (550, "5.1.1 no such user"), "b@x.test": (451, "4.7.1 greylisted")})
    assert set(verdicts) == {"a@x.test", "b@x.test"}
    assert (verdicts["a@x.test"].outcome, verdicts["a@x.test"].error_code) == (FAIL, "mailbox_unavailable")
    assert (verdicts["b@x.test"].outcome, verdicts["b@x.test"].error_code) == (RETRY, "greylisted")
    assert per_recipient({}) == {}


@pytest.mark.parametrize(
    ("kind", "outcome", "error_code"),
    [
        ("dns", RETRY, "dns_failed"),
        ("connect", RETRY, "connection_failed"),
        ("timeout", RETRY, "timeout"),
        ("tls", FAIL, "tls_failed"),
        ("auth", FAIL, "auth_failed"),
        ("protocol", FAIL, "permanent_failure"),
    ],
)
def test_classify_error_by_kind(kind: str, outcome: SmtpOutcome, error_code: str) -> None:
    """Connection trouble is retried; TLS, credential and protocol failures need a person."""
    verdict = classify_error(kind, "something broke")
    assert (verdict.outcome, verdict.error_code) == (outcome, error_code)
    assert verdict.code is None
    assert verdict.message == "something broke"


def test_classify_error_with_a_reply_code() -> None:
    """A protocol failure with a reply is classified like the reply; a 4xx AUTH reply is transient."""
    assert classify_error("protocol", "Must issue a STARTTLS command first", 530).error_code == "tls_failed"
    assert classify_error("protocol", "4.3.2 shutting down", 421).outcome is RETRY
    temporary_auth = classify_error("auth", "4.7.0 Temporary authentication failure", 454)
    assert temporary_auth.outcome is RETRY
    bad_password = classify_error("auth", "5.7.8 Authentication credentials invalid", 535)
    assert (bad_password.outcome, bad_password.error_code, bad_password.enhanced) == (FAIL, "auth_failed", "5.7.8")


def test_smtp_error_verdict_strips_the_code_from_its_message() -> None:
    """SmtpError.verdict classifies the server's text without the repeated reply code."""
    error = SmtpError(SmtpErrorKind.AUTH, "535 5.7.8 Authentication credentials invalid", 535)
    assert error.verdict.message == "5.7.8 Authentication credentials invalid"
    assert error.verdict.enhanced == "5.7.8"
    assert error.verdict.error_code == "auth_failed"
    assert SmtpError(SmtpErrorKind.TIMEOUT, "Timed out").verdict.outcome is RETRY


def test_overall_verdict_prefers_retry() -> None:
    """When nobody accepted the message, one transient refusal makes the whole send worth retrying."""
    hard = classify_reply(550, "5.1.1 unknown")
    soft = classify_reply(451, "4.7.1 greylisted")
    assert overall_verdict({"a@x.test": hard, "b@x.test": soft}) == soft
    assert overall_verdict({"a@x.test": hard, "b@x.test": classify_reply(553, "5.1.3 bad")}) == hard
    with pytest.raises(ValueError):
        overall_verdict({})


def test_send_result_partial_success() -> None:
    """A successful DATA with one refused recipient: the other is accepted, the verdict is sent."""
    refused = {"b@x.test": classify_reply(550, "5.1.1 unknown")}
    result = send_result(["a@x.test", "b@x.test", "a@x.test"], refused, classify_reply(250, "2.0.0 OK queued as Q1"))
    assert result.accepted == ("a@x.test",)
    assert result.refused == refused
    assert result.response == "250 2.0.0 OK queued as Q1"
    assert result.verdict.outcome is SENT


def test_send_result_failed_data_refuses_everyone() -> None:
    """A refused DATA means nobody got the message; RCPT refusals keep their own verdicts."""
    rcpt_refusal = classify_reply(550, "5.1.1 unknown")
    data_refusal = classify_reply(554, "5.7.1 rejected")
    result = send_result(["a@x.test", "b@x.test"], {"b@x.test": rcpt_refusal}, data_refusal)
    assert result.accepted == ()
    assert result.refused == {"a@x.test": data_refusal, "b@x.test": rcpt_refusal}
    assert result.response == "554 5.7.1 rejected"
    assert result.verdict == data_refusal


def test_send_result_all_rcpt_refused_uses_the_overall_verdict() -> None:
    """Without a final reply (every RCPT refused) the verdict and response come from the refusals."""
    refused = {
        "a@x.test": classify_reply(550, "5.1.1 unknown"),
        "b@x.test": classify_reply(452, "4.5.3 Too many recipients"),
    }
    result = send_result(["a@x.test", "b@x.test"], refused, None)
    assert result.accepted == ()
    assert result.verdict.outcome is RETRY
    assert result.verdict.error_code == "rate_limited"
    assert result.response == "452 4.5.3 Too many recipients"


def test_verdicts_are_immutable_values() -> None:
    """Verdicts compare by value and cannot be changed."""
    verdict = classify_reply(550, "5.1.1 unknown")
    assert verdict == SmtpVerdict(FAIL, 550, "5.1.1", "5.1.1 unknown", "mailbox_unavailable")
    with pytest.raises(AttributeError):
        verdict.code = 250  # type: ignore[misc]
