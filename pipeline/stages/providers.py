"""Provider presets: hosts, ports and behaviours of Gmail, Outlook/Microsoft 365 and Exchange."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset", "apply_preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for one provider; ``saves_sent_copy`` means the server files sent mail itself."""

    imap_host: str | None
    imap_port: int
    imap_security: str
    smtp_host: str | None
    smtp_port: int
    smtp_security: str
    saves_sent_copy: bool


PRESETS: dict[str, Preset] = {
    "gmail": Preset("imap.gmail.com", 993, "ssl", "smtp.gmail.com", 587, "starttls", True),
    "outlook": Preset("outlook.office365.com", 993, "ssl", "smtp.office365.com", 587, "starttls", True),
    "exchange": Preset("outlook.office365.com", 993, "ssl", "smtp.office365.com", 587, "starttls", False),
    "imap": Preset(None, 993, "ssl", None, 587, "starttls", False),
}

_DEFAULT_PORTS = {"imap": {"ssl": 993, "starttls": 143, "none": 143}, "smtp": {"ssl": 465, "starttls": 587, "none": 25}}


def apply_preset(provider: str, proto: str, given: dict[str, object | None]) -> dict[str, object | None]:
    """Fill host/port/security for ``proto`` ("imap"/"smtp") from the preset where not given.

    A given security without a port gets that security's standard port (993/143, 465/587/25).
    """
    preset = PRESETS[provider]
    out = dict(given)
    security = out.get("security") or getattr(preset, f"{proto}_security")
    out["security"] = security
    out["host"] = out.get("host") or getattr(preset, f"{proto}_host")
    if not out.get("port"):
        out["port"] = getattr(preset, f"{proto}_port") if not given.get("security") else _DEFAULT_PORTS[proto][str(security)]
    return out
