"""The sentiment backend an organization's mail is classified with, per ``MAILPIPE_SENTIMENT_BACKEND``.

* ``lexicon`` (default): :class:`~pipeline.stages.sentiment_lexicon.LexiconClassifier`, offline.
* ``onnx``: the model directory ``MAILPIPE_SENTIMENT_MODEL`` (loaded once per process, never
  downloaded); if it cannot be loaded, the lexicon classifies and the error is logged once.
* ``llm``: an OpenAI-compatible chat endpoint, only for organizations that opted in
  (``sentiment_llm``); the others get the lexicon. Each call is bounded by
  ``MAILPIPE_SENTIMENT_LLM_TIMEOUT_SECONDS``, the process makes at most
  ``MAILPIPE_SENTIMENT_LLM_PER_MINUTE`` calls a minute, and after a failure the endpoint is left
  alone for :data:`PAUSE_AFTER_FAILURE` seconds. Whatever the LLM cannot answer (error, timeout,
  limit, pause) the lexicon answers, so no message waits on the endpoint and every result names the
  model that produced it.
"""

from __future__ import annotations

import threading
import time
from functools import cache

import structlog

from ops import metrics
from ops.settings import Settings, get_settings
from pipeline.clients.llm_chat import ChatClient, ChatError
from pipeline.clients.onnx_sentiment import ModelDirError, OnnxSentimentModel
from pipeline.stages.ratelimit import Bucket, take
from pipeline.stages.sentiment import Classifier, Sentiment
from pipeline.stages.sentiment_lexicon import THRESHOLDS, LexiconClassifier
from pipeline.stages.sentiment_prompt import messages_for, read_answer

__all__ = ["PAUSE_AFTER_FAILURE", "LlmClassifier", "backend_kind", "classifier_for", "reset_backends"]

log = structlog.get_logger("mailpipe.sentiment")

PAUSE_AFTER_FAILURE = 30.0


class LlmClassifier:
    """The chat endpoint with the lexicon behind it."""

    def __init__(self, client: ChatClient, fallback: Classifier, per_minute: int) -> None:
        self.client, self.fallback, self.per_minute = client, fallback, per_minute
        self.name = f"llm:{client.model}"[:200]
        self._lock = threading.Lock()
        self._bucket: Bucket | None = None
        self._paused_until = 0.0

    def _admit(self) -> str | None:
        """None when a call may go out now, else why not."""
        now = time.monotonic()
        with self._lock:
            if now < self._paused_until:
                return "paused"
            self._bucket, wait = take(self._bucket, now, self.per_minute)
            return "rate_limited" if wait else None

    def classify(self, text: str) -> Sentiment:
        if not text.strip():
            return self.fallback.classify(text)
        refused = self._admit()
        if refused is not None:
            metrics.SENTIMENT_FALLBACK.labels(refused).inc()
            return self.fallback.classify(text)
        try:
            label, score = read_answer(self.client.complete(messages_for(text)))
        except (ChatError, ValueError) as exc:
            with self._lock:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("sentiment_llm_failed", error=str(exc), pause_seconds=PAUSE_AFTER_FAILURE)
            metrics.SENTIMENT_FALLBACK.labels("error").inc()
            return self.fallback.classify(text)
        # The lexicon's cues still name the reasons an account is at risk.
        return Sentiment(label, score, self.name, self.fallback.classify(text).cues)


class _OnnxWithCues:
    """The local model's label and score, with the lexicon's business cues for the at-risk reasons."""

    def __init__(self, model: OnnxSentimentModel, lexicon: LexiconClassifier) -> None:
        self.model, self.lexicon = model, lexicon
        self.name = model.name

    def classify(self, text: str) -> Sentiment:
        result = self.model.classify(text)
        return Sentiment(result.label, result.score, result.model, self.lexicon.classify(text).cues)


@cache
def _lexicon() -> LexiconClassifier:
    return LexiconClassifier(THRESHOLDS)


@cache
def _onnx(path: str) -> Classifier:
    try:
        return _OnnxWithCues(OnnxSentimentModel(path), _lexicon())
    except (ModelDirError, OSError, ValueError, RuntimeError) as exc:  # onnxruntime's load errors are RuntimeErrors
        log.error("sentiment_model_unavailable", error=str(exc), fallback=_lexicon().name)
        metrics.SENTIMENT_FALLBACK.labels("unavailable").inc()
        return _lexicon()


@cache
def _llm(url: str, key: str | None, model: str, timeout: float, per_minute: int) -> LlmClassifier:
    return LlmClassifier(ChatClient(url, key, model, timeout), _lexicon(), per_minute)


def backend_kind(model: str) -> str:
    """The metrics label of a result's ``model``: lexicon, onnx or llm."""
    return model.split(":", 1)[0] if ":" in model else "lexicon"


def classifier_for(llm_opt_in: bool, settings: Settings | None = None) -> Classifier:
    """The classifier for an organization (``llm_opt_in``: its ``sentiment_llm`` setting)."""
    s = settings or get_settings()
    if s.sentiment_backend == "onnx" and s.sentiment_model:
        return _onnx(s.sentiment_model)
    if s.sentiment_backend == "llm" and s.sentiment_llm_url and llm_opt_in:
        return _llm(s.sentiment_llm_url, s.sentiment_llm_key, s.sentiment_llm_model, s.sentiment_llm_timeout_seconds,
                    s.sentiment_llm_per_minute)
    return _lexicon()


def reset_backends() -> None:
    """Forget loaded models and clients (tests; a process that changed its settings)."""
    _onnx.cache_clear()
    _llm.cache_clear()

