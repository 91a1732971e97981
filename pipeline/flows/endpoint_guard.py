"""The connection guard at the API: refuse a tenant's mail endpoint before anything connects.

Used by account test/create/patch and the OAuth authorize host overrides. Each endpoint's host is
resolved and checked like the clients do at every connection (``netguard``), so a refusal is a 422
that names the field, without a byte sent anywhere. A host that does not resolve is not refused
here: the connection test reports it as ``dns``, and the clients check again when they connect.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Protocol

from pipeline.clients import netguard
from pipeline.stages.endpoint_rules import PLAINTEXT_REASON

__all__ = ["EndpointRefused", "GuardedEndpoint", "check_endpoint", "check_endpoints"]

class GuardedEndpoint(Protocol):
    """What the guard needs to know of an endpoint."""

    @property
    def host(self) -> str: ...

    @property
    def security(self) -> str: ...

    @property
    def password(self) -> str | None: ...

    @property
    def oauth_token(self) -> str | None: ...

    @property
    def listed_only(self) -> str | None: ...


class EndpointRefused(Exception):
    """An endpoint the API refuses (422): ``code`` is the error code, ``part`` the offending field of ``proto``."""

    def __init__(self, code: str, proto: str, part: str, message: str) -> None:
        super().__init__(message)
        self.code, self.proto, self.part, self.message = code, proto, part, message

    def field(self, separator: str = ".") -> str:
        """The field name: ``imap.host`` in a JSON body, ``imap_host`` in a query string."""
        return f"{self.proto}{separator}{self.part}"


def check_endpoint(proto: str, ep: GuardedEndpoint) -> None:
    """Raise EndpointRefused if ``ep`` may not be connected to (``host_not_allowed``, ``plaintext_not_allowed``)."""
    plaintext = ep.security == "none" and (ep.password is not None or ep.oauth_token is not None)
    why = ep.listed_only or (PLAINTEXT_REASON if plaintext else None)
    try:
        netguard.check_host(ep.host, netguard.mail_nets(), listed_only=why)
    except socket.gaierror:
        return  # reported by the connection test as `dns`; every connection checks again anyway
    except netguard.HostNotAllowed as exc:
        if exc.refusal.listed_only and ep.listed_only is None:
            secret = "OAuth token" if ep.password is None else "password"
            raise EndpointRefused("plaintext_not_allowed", proto, "security",
                                  f"{proto}.security: \"none\" would send the {secret} unencrypted; use \"ssl\" or "
                                  f"\"starttls\" ({exc})") from None
        raise EndpointRefused("host_not_allowed", proto, "host", f"{proto}.host: {exc}") from None


def check_endpoints(endpoints: Iterable[tuple[str, GuardedEndpoint]]) -> None:
    """check_endpoint for each (proto, endpoint), in order."""
    for proto, ep in endpoints:
        check_endpoint(proto, ep)
