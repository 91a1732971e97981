"""What went wrong talking to a mail server: one vocabulary for IMAP, SMTP and the API.

The values are API.md's ``error_code``s for the account connection test.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ConnErrorKind"]


class ConnErrorKind(str, Enum):
    """Coarse enough to decide between retry, back-off and asking the user to reconnect."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    AUTH = "auth"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"
