"""Self-signed TLS certificate for the loopback test servers, made with the openssl CLI."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

__all__ = ["make_self_signed"]

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


def make_self_signed(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return (cert, key) for CN=localhost in directory, creating them only if they are not there yet."""
    target = Path(directory)
    cert, key = target / CERT_NAME, target / KEY_NAME
    if cert.is_file() and key.is_file():
        return cert, key
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        tmp_cert, tmp_key = Path(scratch) / CERT_NAME, Path(scratch) / KEY_NAME
        subprocess.run(
            [
                "openssl", "req", "-x509", "-nodes", "-days", "3650",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(tmp_key), "-out", str(tmp_cert),
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        # Test-only key: servers that drop privileges (Dovecot's login processes) must read it.
        tmp_cert.chmod(0o644)
        tmp_key.chmod(0o644)
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
    return cert, key
