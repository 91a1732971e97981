"""Building realistic test messages (also used by bench/)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

__all__ = ["make_message"]


def make_message(
    i: int = 0,
    *,
    from_: str = "Jane Doe <jane@customer.example>",
    to: str = "Alice <alice@example.test>",
    cc: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
    date: datetime | None = None,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    """One RFC 5322 message as bytes; ``message_id=""`` leaves the header out."""
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject if subject is not None else f"Message number {i}"
    msg["Date"] = format_datetime(date or (datetime.now(UTC) - timedelta(minutes=i)))
    if message_id != "":
        msg["Message-ID"] = message_id or make_msgid(idstring=f"m{i}", domain="mail.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body if body is not None else f"Hello, this is message {i}.\nIt has a few lines of text.\n")
    if html:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments or []:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()
