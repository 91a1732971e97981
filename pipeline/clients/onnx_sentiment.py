"""A sentiment model from a local directory, run with ONNX Runtime (the optional transformer backend).

The directory is what exporting a Hugging Face sequence classifier to ONNX leaves (``optimum-cli export
onnx --task text-classification``): ``model.onnx``, ``tokenizer.json`` and ``config.json`` with
``id2label``. Nothing is downloaded, ever: every file is read from the directory, and a missing one is
an error naming it. Labels are matched by name (``negative``/``NEG``/``LABEL_0`` with a
``label_order`` in ``config.json``), so the usual three-class and two-class models both work; the
score is P(positive) - P(negative).

Needs the ``sentiment-onnx`` extra (``onnxruntime``, ``tokenizers``, ``numpy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.stages.sentiment import Sentiment, clamp

__all__ = ["ModelDirError", "OnnxSentimentModel"]

_FILES = ("model.onnx", "tokenizer.json", "config.json")
MAX_TOKENS = 512


class ModelDirError(Exception):
    """The model directory is unusable (missing file, unknown labels, runtime not installed)."""


def _label_kind(name: str) -> str | None:
    low = name.lower()
    for kind in ("negative", "neutral", "positive"):
        if low.startswith(kind[:3]):
            return kind
    return None


class OnnxSentimentModel:
    """``classify(text)`` with the model in ``path``; safe to share between threads."""

    def __init__(self, path: str) -> None:
        directory = Path(path)
        missing = [f for f in _FILES if not (directory / f).is_file()]
        if missing:
            raise ModelDirError(f"sentiment model directory {path!r} lacks {', '.join(missing)}")
        try:
            import numpy
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:  # the optional extra is not installed
            raise ModelDirError(f"the onnx sentiment backend needs `pip install 'mailpipe[sentiment-onnx]'` ({exc.name} missing)") from None
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        order = config.get("label_order")  # for models whose labels are LABEL_0, LABEL_1, ...
        if isinstance(order, list):
            id2label = {i: str(v) for i, v in enumerate(order)}
        self.kinds = {i: _label_kind(name) for i, name in id2label.items()}
        if "negative" not in self.kinds.values() or "positive" not in self.kinds.values():
            raise ModelDirError(f"config.json of {path!r} must name negative and positive labels (id2label or label_order)")
        self.np = numpy
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        limit = min(int(config.get("max_position_embeddings", MAX_TOKENS)), MAX_TOKENS)
        self.tokenizer.enable_truncation(max_length=limit)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # worker threads run several messages at once
        self.session = onnxruntime.InferenceSession(str(directory / "model.onnx"), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name = f"onnx:{config.get('name_or_path') or config.get('_name_or_path') or directory.name}"[:200]

    def classify(self, text: str) -> Sentiment:
        encoding = self.tokenizer.encode(text or "")
        ids = self.np.array([encoding.ids or [0]], dtype=self.np.int64)
        feeds: dict[str, Any] = {}
        for name in self.inputs:
            if name == "input_ids":
                feeds[name] = ids
            elif name == "attention_mask":
                feeds[name] = self.np.ones_like(ids)
            elif name == "token_type_ids":
                feeds[name] = self.np.zeros_like(ids)
        logits = self.session.run(None, feeds)[0][0]
        probs = self.np.exp(logits - logits.max())
        probs = probs / probs.sum()
        by_kind: dict[str, float] = {}
        for i, p in enumerate(probs):
            kind = self.kinds.get(i)
            if kind is not None:
                by_kind[kind] = by_kind.get(kind, 0.0) + float(p)
        best = max(by_kind, key=lambda k: by_kind[k])
        score = clamp(by_kind.get("positive", 0.0) - by_kind.get("negative", 0.0))
        return Sentiment(best, score, self.name)
