"""What a connection test tells the tenant: the failure kind in our own words, never the server's.

``POST /api/v1/accounts/test`` can be aimed at any host. Echoing the remote greeting or error text
back would make it a banner grabber (and, for addresses the guard lets through, a scanner that
reads whatever answers). So the answer keeps the useful classification (dns, connect, tls, auth,
timeout, protocol) with a sentence written here, naming only what the tenant gave us: host, port,
security. The clients' own messages (with the server's words) stay in the logs and sync errors.
"""

from __future__ import annotations

__all__ = ["failure_message", "success_message"]

_PROTOS = {"imap": "IMAP", "smtp": "SMTP"}
_TLS_PORTS = {("imap", "ssl"): 993, ("imap", "starttls"): 143, ("smtp", "ssl"): 465, ("smtp", "starttls"): 587}


def failure_message(proto: str, kind: str, *, host: str, port: int, security: str, oauth: bool = False,
                    certificate: bool = False) -> str:
    """A sentence for a failed test of ``proto`` ("imap"/"smtp") that failed with ``kind``.

    ``certificate``: TLS failed because the certificate did not verify (our own OpenSSL said so).
    """
    name = _PROTOS.get(proto, proto.upper())
    where = f"{host}:{port}"
    if kind == "dns":
        return f"{host} could not be resolved: no such host name"
    if kind == "connect":
        return f"could not connect to {where}: nothing accepted the connection, or it was closed"
    if kind == "timeout":
        return f"{where} did not answer in time"
    if kind == "tls":
        if certificate:
            return f"{where}: the server's certificate is not trusted, or not issued for {host}"
        usual = _TLS_PORTS.get((proto, security))
        hint = f" ({security} is usually port {usual})" if usual and usual != port else ""
        return f"{where}: TLS could not be set up with security \"{security}\"{hint}"
    if kind == "auth":
        what = "OAuth token" if oauth else "username or password"
        return f"{where} refused the {what}"
    return f"{where} did not answer as an {name} server is expected to"


def success_message(proto: str, security: str, *, authenticated: bool, folders: int | None = None) -> str:
    """A sentence for a test that worked."""
    channel = {"ssl": "implicit TLS", "starttls": "STARTTLS", "none": "no encryption"}.get(security, security)
    done = "logged in" if authenticated else "connected (no login)"
    suffix = f"; {folders} folders" if folders is not None else ""
    return f"{done} over {channel}{suffix}"
