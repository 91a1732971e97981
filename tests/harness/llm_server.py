"""A local stand-in for an OpenAI-compatible chat completions endpoint (``POST /v1/chat/completions``).

It answers like a small model prompted by mailpipe's LLM backend: a JSON object with a label it
derives from marker words in the user message (so a test can tell its labels from the lexicon's),
and records every request (model, messages, Authorization header). Tests can make it slow, fail with
a status, or stop it to show the fallback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.harness.asgi_server import AsgiServer

__all__ = ["LlmStandIn"]

# Words the stand-in reads as each label: deliberately not what the lexicon reads (a test tells them apart).
MARKERS = {"negative": ("zorp",), "positive": ("blix",)}


class LlmStandIn:
    def __init__(self, key: str = "sk-test-standin") -> None:
        self.key = key
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self.status = 200
        self._lock = threading.Lock()
        self.server = AsgiServer(Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])]), "llm-standin")

    @property
    def url(self) -> str:
        return f"{self.server.base}/v1"

    def start(self) -> LlmStandIn:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def label_for(self, text: str) -> str:
        low = text.lower()
        for label, words in MARKERS.items():
            if any(w in low for w in words):
                return label
        return "neutral"

    async def _complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self._lock:
            self.requests.append({"model": body.get("model"), "messages": body.get("messages"),
                                  "authorization": request.headers.get("authorization")})
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"error": {"message": "invalid key"}}, status_code=401)
        if self.status != 200:
            return JSONResponse({"error": {"message": "unavailable"}}, status_code=self.status)
        user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
        label = self.label_for(user)
        score = {"negative": -0.9, "neutral": 0.05, "positive": 0.9}[label]
        content = json.dumps({"label": label, "score": score})
        return JSONResponse({"id": "chatcmpl-standin", "object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
