"""When a mailbox's stored secret may follow its endpoint: the rules, as pure decisions.

* A stored password never follows a changed endpoint: changing host, port, security or username
  needs the password again (otherwise anyone holding the org's API key could point a mailbox at
  their own server and collect its password).
* A provider's OAuth token (a Gmail or Outlook grant) goes to the provider's own hosts; any other
  host must be inside ``MAILPIPE_MAIL_ALLOWED_NETS`` (an operator's Exchange on premises).
* A password or token crosses a plaintext connection (``security: "none"``) only to a host inside
  ``MAILPIPE_MAIL_ALLOWED_NETS``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.stages.providers import PRESETS

__all__ = ["ENDPOINT_FIELDS", "PLAINTEXT_REASON", "changed_fields", "oauth_host_rule", "same_host"]

ENDPOINT_FIELDS = ("host", "port", "security", "username")
#: Why a plaintext login must stay inside the allowed networks (a password never crosses the
#: internet without TLS; an operator's local or test server may be plaintext).
PLAINTEXT_REASON = "the login would cross the network unencrypted (security: none)"


def same_host(a: str | None, b: str | None) -> bool:
    """Host names compared as DNS does: case-insensitive, a trailing dot ignored."""
    if a is None or b is None:
        return a is b
    return a.rstrip(".").lower() == b.rstrip(".").lower()


def changed_fields(stored: Mapping[str, object], given: Mapping[str, object]) -> list[str]:
    """The endpoint fields given with a value other than the stored one (None: not given)."""
    changed = []
    for name in ENDPOINT_FIELDS:
        value = given.get(name)
        if value is None:
            continue
        same = same_host(str(value), str(stored.get(name) or "")) if name == "host" else value == stored.get(name)
        if not same:
            changed.append(name)
    return changed


def oauth_host_rule(provider: str, proto: str, host: str) -> str | None:
    """Why a grant's token may go to ``host`` only inside the allowed networks; None for the preset host.

    ``provider`` is the account preset ("gmail", "outlook", ...), ``proto`` "imap" or "smtp".
    """
    preset = PRESETS.get(provider)
    preset_host = getattr(preset, f"{proto}_host", None) if preset is not None else None
    if preset_host is not None and same_host(host, preset_host):
        return None
    owner = {"gmail": "Google", "outlook": "Microsoft", "exchange": "Microsoft"}.get(provider, "the provider")
    return (f"an OAuth token from {owner} goes to hosts other than {owner}'s own ({preset_host or 'its preset hosts'}) "
            "only when they are inside it")
