"""The optional backends: a local ONNX model directory (a tiny model the test builds) and an
OpenAI-compatible endpoint (a local stand-in; must-show 4), with their fallbacks to the default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.settings import reset_settings
from pipeline.flows import sentiment_backends
from pipeline.flows.sentiment_backends import PAUSE_AFTER_FAILURE, classifier_for, reset_backends
from tests.harness.llm_server import LlmStandIn
from tests.harness.tiny_onnx import build_tiny_model


@pytest.fixture(autouse=True)
def _fresh_backends() -> Iterator[None]:
    reset_backends()
    yield
    reset_backends()


def _use(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(f"MAILPIPE_SENTIMENT_{k.upper()}", v)
    reset_settings()


class TestOnnx:
    def test_loads_a_local_model_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The model's labels and scores, its name recorded; the lexicon's cues kept for the at-risk reasons."""
        _use(monkeypatch, backend="onnx", model=str(build_tiny_model(tmp_path / "model")))
        clf = classifier_for(False)
        assert clf.name == "onnx:tiny-test-sentiment"
        love = clf.classify("We love it, great stuff")
        assert love.label == "positive" and love.score > 0.3 and love.model == "onnx:tiny-test-sentiment"
        hate = clf.classify("Broken again. I hate it and we will cancel our subscription")
        assert hate.label == "negative" and hate.score < -0.1 and "churn" in hate.cues
        assert clf.classify("Please send the invoice").label == "neutral"

    def test_missing_file_falls_back_to_the_lexicon(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A directory without model.onnx is never filled from anywhere: the lexicon classifies."""
        directory = build_tiny_model(tmp_path / "model")
        (directory / "model.onnx").unlink()
        _use(monkeypatch, backend="onnx", model=str(directory))
        clf = classifier_for(False)
        assert clf.name == "vader-business-1"
        assert clf.classify("Still broken, this is unacceptable.").label == "negative"


@pytest.fixture
def standin() -> Iterator[LlmStandIn]:
    server = LlmStandIn().start()
    yield server
    server.stop()


class TestLlm:
    def test_labels_come_from_the_endpoint(self, standin: LlmStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """Must-show 4: the stand-in's labels are used (its marker words mean nothing to the lexicon), the key goes
        in the Authorization header, the model is named, only the new text is sent."""
        _use(monkeypatch, backend="llm", llm_url=standin.url, llm_key=standin.key, llm_model="standin-1")
        clf = classifier_for(True)
        result = clf.classify("The zorp is here.")
        assert (result.label, result.score, result.model) == ("negative", -0.9, "llm:standin-1")
        assert clf.classify("Everything is blix.").label == "positive"
        assert standin.requests[0]["model"] == "standin-1" and standin.requests[0]["authorization"] == f"Bearer {standin.key}"
        assert standin.requests[0]["messages"][-1] == {"role": "user", "content": "The zorp is here."}

    def test_organizations_that_did_not_opt_in_never_reach_the_endpoint(self, standin: LlmStandIn,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        _use(monkeypatch, backend="llm", llm_url=standin.url, llm_key=standin.key)
        assert classifier_for(False).classify("The zorp is here.").model == "vader-business-1"
        assert standin.requests == []

    def test_down_slow_or_failing_endpoint_falls_back(self, standin: LlmStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        """Must-show 4: a timeout, an error status and a stopped server each give the default backend's label, at
        once after the first failure (the endpoint is paused), never an exception."""
        _use(monkeypatch, backend="llm", llm_url=standin.url, llm_key=standin.key, llm_timeout_seconds="0.5")
        clf = classifier_for(True)
        standin.delay = 2.0
        slow = clf.classify("Still broken and nobody answers. Unacceptable.")
        assert (slow.label, slow.model) == ("negative", "vader-business-1")
        standin.delay = 0.0
        before = len(standin.requests)
        assert clf.classify("Works perfectly now, thank you!").model == "vader-business-1"  # paused: no request
        assert len(standin.requests) == before
        monkeypatch.setattr(sentiment_backends.time, "monotonic", lambda: 10_000_000.0)  # the pause is over
        standin.status = 503
        assert clf.classify("Works perfectly now, thank you!").label == "positive"
        monkeypatch.setattr(sentiment_backends.time, "monotonic", lambda: 10_000_000.0 + 2 * PAUSE_AFTER_FAILURE)
        standin.stop()
        down = clf.classify("Works perfectly now, thank you!")
        assert (down.label, down.model) == ("positive", "vader-business-1")

    def test_rate_limit_hands_the_rest_to_the_lexicon(self, standin: LlmStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        _use(monkeypatch, backend="llm", llm_url=standin.url, llm_key=standin.key, llm_per_minute="2")
        clf = classifier_for(True)
        models = [clf.classify("The zorp is here.").model for _ in range(4)]
        assert models[:2] == ["llm:gpt-4o-mini"] * 2 and models[2:] == ["vader-business-1"] * 2
        assert len(standin.requests) == 2
