"""The sentiment classifier alone: messages/second and accuracy on the labelled sets.

Reads ``tests/data/sentiment/labelled.jsonl`` (the set the default backend's thresholds were chosen
on) and ``holdout.jsonl`` (written after tuning, never tuned on) and, for the configured backend
(``MAILPIPE_SENTIMENT_BACKEND``, default the lexicon), prints accuracy and negative precision/recall
per set, then the time of new-text extraction, of classification, and of both, per message, over
``--rounds`` passes (the median pass). Usage::

    .venv/bin/python bench/sentiment.py
    MAILPIPE_SENTIMENT_BACKEND=onnx MAILPIPE_SENTIMENT_MODEL=/models/sentiment .venv/bin/python bench/sentiment.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.flows.sentiment_backends import classifier_for  # noqa: E402
from pipeline.stages.reply_text import new_text  # noqa: E402

DATA = ROOT / "tests" / "data" / "sentiment"


def load(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(rows: list[dict[str, object]], labels: list[str]) -> dict[str, float]:
    truth = [str(r["label"]) for r in rows]
    tp = sum(g == t == "negative" for g, t in zip(labels, truth, strict=True))
    fp = sum(g == "negative" != t for g, t in zip(labels, truth, strict=True))
    fn = sum(t == "negative" != g for g, t in zip(labels, truth, strict=True))
    return {"n": len(rows), "accuracy": round(sum(g == t for g, t in zip(labels, truth, strict=True)) / len(rows), 3),
            "negative_precision": round(tp / max(tp + fp, 1), 3), "negative_recall": round(tp / max(tp + fn, 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    clf = classifier_for(True)
    out: dict[str, object] = {"model": clf.name}
    rows_all: list[dict[str, object]] = []
    for name in ("labelled.jsonl", "holdout.jsonl"):
        rows = load(name)
        rows_all += rows
        labels = [clf.classify(new_text(str(r["text"]), r["html"] if isinstance(r["html"], str) else None)).label for r in rows]
        out[name.split(".")[0]] = scores(rows, labels)
    bodies = [(str(r["text"]), r["html"] if isinstance(r["html"], str) else None) for r in rows_all]
    texts = [new_text(t, h) for t, h in bodies]
    extract, classify = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for t, h in bodies:
            new_text(t, h)
        extract.append((time.perf_counter() - started) / len(bodies))
        started = time.perf_counter()
        for text in texts:
            clf.classify(text)
        classify.append((time.perf_counter() - started) / len(texts))
    e, c = statistics.median(extract), statistics.median(classify)
    out.update(extract_us=round(e * 1e6, 1), classify_us=round(c * 1e6, 1), msgs_per_s=round(1 / (e + c)),
               classify_msgs_per_s=round(1 / c))
    if args.json:
        print(json.dumps(out))
        return
    print(f"backend: {clf.name}")
    for name in ("labelled", "holdout"):
        s = out[name]
        assert isinstance(s, dict)
        print(f"{name:9s} n={s['n']:3d}  accuracy {s['accuracy']:.3f}  negative precision {s['negative_precision']:.3f}  "
              f"recall {s['negative_recall']:.3f}")
    print(f"per message: new text {e * 1e6:.0f} µs + classify {c * 1e6:.0f} µs  →  {1 / (e + c):,.0f} msg/s "
          f"({1 / c:,.0f} msg/s classifying alone)")


if __name__ == "__main__":
    main()
