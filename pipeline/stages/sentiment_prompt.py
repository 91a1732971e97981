"""What the LLM backend asks a chat model and how its answer is read. Pure: no I/O.

The model is asked for one JSON object ``{"label": ..., "score": ...}``; an answer that does not
name one of the three labels is an error (the caller falls back to the default backend), a missing or
out-of-range score is replaced by the label's usual value.
"""

from __future__ import annotations

import json
import re

from pipeline.stages.sentiment import LABELS, clamp

__all__ = ["PROMPT_CHARS", "messages_for", "read_answer"]

PROMPT_CHARS = 4_000  # the new text sent, at most (the beginning of a long one is enough)
SYSTEM = ("You classify the sentiment of one customer email sent to a software vendor, for customer-success managers. "
          "Politeness (thanks, regards) is not praise. Complaints, churn or cancellation talk, escalations, billing "
          "problems and problems that persist are negative; neutral requests and questions are neutral. Answer with one "
          'JSON object only: {"label": "positive" | "neutral" | "negative", "score": number from -1 (very negative) to 1 (very positive)}.')
_DEFAULT_SCORE = {"positive": 0.6, "neutral": 0.0, "negative": -0.6}
_JSON = re.compile(r"\{[^{}]{0,500}\}")
_WORD = re.compile(r"\b(positive|neutral|negative)\b", re.I)


def messages_for(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text[:PROMPT_CHARS]}]


def read_answer(answer: str) -> tuple[str, float]:
    """(label, score) from the model's answer; ValueError when it names no label."""
    label, score = None, None
    match = _JSON.search(answer)
    if match is not None:
        try:
            data = json.loads(match.group())
        except ValueError:
            data = None
        if isinstance(data, dict):
            raw = str(data.get("label", "")).strip().lower()
            label = raw if raw in LABELS else None
            value = data.get("score")
            if isinstance(value, int | float) and not isinstance(value, bool) and -1.0 <= value <= 1.0:
                score = float(value)
    if label is None:
        words = {w.lower() for w in _WORD.findall(answer[:500])}
        if len(words) == 1:
            label = words.pop()
    if label is None:
        raise ValueError("the answer names no sentiment label")
    if score is None or (label == "negative" and score > 0) or (label == "positive" and score < 0):
        score = _DEFAULT_SCORE[label]
    return label, clamp(score)
