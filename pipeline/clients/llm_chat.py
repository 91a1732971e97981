"""An OpenAI-compatible chat completions endpoint (``POST {base}/chat/completions``), for the optional
LLM sentiment backend.

One call, one bounded request: connect, read and write timeouts of ``timeout`` seconds, no retries
(the caller falls back), no redirects. The API key goes in the ``Authorization`` header only and is
never part of an error message or a log line. The endpoint is the operator's own setting
(``MAILPIPE_SENTIMENT_LLM_URL``), not a tenant's, so it is not held to the connection guard.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ChatClient", "ChatError"]

MAX_RESPONSE_BYTES = 64_000


class ChatError(Exception):
    """The endpoint failed (status, timeout, malformed answer); the message holds no secret."""


class ChatClient:
    def __init__(self, base_url: str, api_key: str | None, model: str, timeout: float,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=False, transport=transport)

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 60) -> str:
        """The first choice's message content for ``messages``."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TimeoutException:
            raise ChatError("timed out") from None
        except httpx.HTTPError as exc:
            raise ChatError(f"request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ChatError(f"HTTP {response.status_code}")
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise ChatError("answer too large")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ChatError("malformed answer") from None
        if not isinstance(content, str):
            raise ChatError("malformed answer")
        return content

    def close(self) -> None:
        self._http.close()
