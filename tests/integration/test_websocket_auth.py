"""Websocket refusals under the real server (issue 14, "Operations"): a bad or expired token gets
close code 4401 that a real websocket client sees, not an HTTP 403 handshake failure (which is what
uvicorn turns a close before accept into). mailpipe's app under uvicorn, the `websockets` client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tests.harness.asgi_server import AsgiServer
from tests.harness.flow import make_org

pytestmark = pytest.mark.integration


def refused_with(url: str, **kwargs: object) -> tuple[int, str]:
    """Connect (the handshake must succeed), then return the close code and reason the server sends."""
    with connect(url, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.fixture
def app_server(db: str) -> Iterator[AsgiServer]:
    from web.app import create_app

    server = AsgiServer(create_app(), "mailpipe under uvicorn", lifespan="on").start()
    yield server
    server.stop()


def test_bad_and_expired_tokens_get_close_code_4401(app_server: AsgiServer) -> None:
    from web.routes.notifications import issue_token

    org_id, key = make_org()
    token = httpx.post(f"{app_server.base}/api/v1/notifications/token", json={"user_id": "u1"},
                       headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["token"]
    ws_url = f"ws://127.0.0.1:{app_server.port}/api/v1/notifications/ws"
    with connect(f"{ws_url}?token={token}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "hello", "user_id": "u1"}

    expired = issue_token(org_id, "u1", now=1_000_000.0)
    forged = token[:-2] + ("11" if token.endswith("00") else "00")
    for bad in (f"?token={expired}", f"?token={forged}", "?token=nonsense", ""):
        assert refused_with(ws_url + bad) == (4401, "invalid or expired token"), bad


def test_the_api_key_middleware_refuses_websockets_with_4401() -> None:
    """A websocket under /api/ that is not public needs a Bearer key; without one: 4401, seen by the client."""
    from web.auth import ApiKeyAuth

    async def whoami(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(str(websocket.scope["state"]["org_id"]))
        await websocket.close()

    server = AsgiServer(ApiKeyAuth(Starlette(routes=[WebSocketRoute("/api/v1/whoami", whoami)])), "auth under uvicorn").start()
    try:
        from models import metadata
        from models.db import get_engine

        metadata.create_all(get_engine())
        org_id, key = make_org()
        url = f"ws://127.0.0.1:{server.port}/api/v1/whoami"
        assert refused_with(url) == (4401, "unauthorized")
        assert refused_with(url, additional_headers={"Authorization": "Bearer mp_wrong"}) == (4401, "unauthorized")
        with connect(url, open_timeout=10, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            assert ws.recv(timeout=10) == org_id
    finally:
        server.stop()
