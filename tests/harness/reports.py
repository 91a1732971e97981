"""Delivery reports and complaints as mail servers write them (Postfix DSN, ARF, a plain-text bounce)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

__all__ = ["arf_complaint", "postfix_dsn", "text_bounce"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _body(original: bytes) -> str:
    return original.replace(b"\r\n", b"\n").decode("utf-8", "replace")


def _headers(original: bytes) -> str:
    return original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")


def postfix_dsn(original: bytes, recipient: str, *, to: str, status: str = "5.1.1", code: int = 550,
                action: str | None = None, headers_only: bool = False) -> bytes:
    """A Postfix "Undelivered Mail Returned to Sender" (RFC 3464) for ``recipient`` of ``original``."""
    action = action or ("failed" if status.startswith("5") else "delayed")
    subject = "Undelivered Mail Returned to Sender" if action == "failed" else "Delayed Mail (still being retried)"
    diag = f"smtp; {code} {status} <{recipient}>: Recipient address rejected: User unknown in virtual mailbox table"
    returned = (f"Content-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n{_headers(original)}\n"
                if headers_only else
                "Content-Description: Undelivered Message\nContent-Type: message/rfc822\n\n"
                + _body(original))
    text = f"""From: MAILER-DAEMON@mx.sender.example (Mail Delivery System)
To: {to}
Subject: {subject}
Date: {format_datetime(utcnow())}
Message-Id: {make_msgid(domain="mx.sender.example")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="5B2A1400D.1733360000/mx.sender.example"
Content-Transfer-Encoding: 8bit

This is a MIME-encapsulated message.

--5B2A1400D.1733360000/mx.sender.example
Content-Description: Notification
Content-Type: text/plain; charset=utf-8

This is the mail system at host mx.sender.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{recipient}>: host mx.rcpt.example[192.0.2.10] said: {code} {status} <{recipient}>:
    Recipient address rejected: User unknown in virtual mailbox table (in reply
    to RCPT TO command)

--5B2A1400D.1733360000/mx.sender.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example
X-Postfix-Queue-ID: 5B2A1400D
X-Postfix-Sender: rfc822; {to}
Arrival-Date: {format_datetime(utcnow())}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.rcpt.example
Diagnostic-Code: {diag}

--5B2A1400D.1733360000/mx.sender.example
{returned}
--5B2A1400D.1733360000/mx.sender.example--
"""
    return text.replace("\n", "\r\n").encode()


def arf_complaint(original: bytes, recipient: str, *, to: str) -> bytes:
    """An RFC 5965 abuse report (as mailbox providers' feedback loops send them)."""
    text = f"""From: Feedback Loop <fbl@isp.example>
To: {to}
Subject: Complaint about message
Date: {format_datetime(utcnow())}
Message-ID: {make_msgid(domain="isp.example")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="arf-part"

--arf-part
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 192.0.2.1.

--arf-part
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{to}>
Original-Rcpt-To: <{recipient}>
Source-IP: 192.0.2.1

--arf-part
Content-Type: message/rfc822
Content-Disposition: inline

{_body(original)}
--arf-part--
"""
    return text.replace("\n", "\r\n").encode()


def text_bounce(original: bytes, recipient: str, *, to: str) -> bytes:
    """A qmail-style bounce: no machine-readable part, the original quoted in the text."""
    text = f"""From: MAILER-DAEMON@qmail.example
To: {to}
Subject: failure notice
Date: {format_datetime(utcnow())}
Message-ID: {make_msgid(domain="qmail.example")}

Hi. This is the qmail-send program at qmail.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{_body(original)}
"""
    return text.replace("\n", "\r\n").encode()
