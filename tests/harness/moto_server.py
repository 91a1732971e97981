"""A loopback S3 from moto's server mode, for S3Storage tests that speak real HTTP.

Import the fixture into a test module to use it: ``from tests.harness.moto_server import moto_s3  # noqa: F401``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from tests.harness.ports import free_port, wait_port

__all__ = ["AWS_TEST_ENV", "moto_s3"]

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_UNSET = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """Run moto's S3 on 127.0.0.1 for the session with fake AWS credentials in the env; yields the endpoint URL."""
    saved = {k: os.environ.get(k) for k in (*AWS_TEST_ENV, *_UNSET)}
    os.environ.update(AWS_TEST_ENV)
    for k in _UNSET:
        os.environ.pop(k, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request is noise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_port("127.0.0.1", port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
