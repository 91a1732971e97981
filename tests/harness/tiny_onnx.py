"""A tiny sentiment model directory built on the spot, in the layout of an ONNX export of a Hugging Face
sequence classifier (``model.onnx``, ``tokenizer.json``, ``config.json``), for the ONNX backend's
loading code. The "model" averages per-word logits: a handful of words carry a label."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["build_tiny_model"]

# word -> logits for (negative, neutral, positive)
WORDS = {"[UNK]": (0.0, 0.5, 0.0), "love": (-2.0, 0.0, 3.0), "great": (-1.0, 0.0, 2.5), "hate": (3.0, 0.0, -2.0),
         "broken": (2.5, 0.0, -1.0), "invoice": (0.0, 1.0, 0.0)}


def build_tiny_model(directory: Path, *, name: str = "tiny-test-sentiment") -> Path:
    """Write the three files into ``directory`` and return it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))

    table = numpy_helper.from_array(np.array(list(WORDS.values()), dtype=np.float32), name="embeddings")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embeddings", "input_ids"], ["gathered"], axis=0),
         helper.make_node("ReduceMean", ["gathered"], ["logits"], axes=[1], keepdims=0)],
        "tiny_sentiment",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    config = {"_name_or_path": name, "id2label": {"0": "negative", "1": "neutral", "2": "positive"}, "max_position_embeddings": 64}
    (directory / "config.json").write_text(json.dumps(config))
    return directory
