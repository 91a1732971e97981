"""pipeline.stages.hit_batch: the wire form of a tracking.record batch, old and new."""

from __future__ import annotations

import json

import pytest

from pipeline.stages.hit_batch import decode_hits, encode_hits

HITS = [{"id": "a1", "kind": "open", "email_id": "0" * 24, "token": "ab" * 8, "at": 1733370000.25, "ip": "203.0.113.9",
         "ua": "Mozilla/5.0 \"quoted\" ünïcode", "method": "GET", "dnt": False}]


def test_round_trip_and_the_older_forms() -> None:
    wire = encode_hits(HITS * 100)
    assert isinstance(wire, str) and wire.isascii() and json.dumps(wire)[1:-1] == wire, "nothing to escape"
    assert len(wire) < len(json.dumps(HITS * 100)) / 10, "a batch's hits share most of their text"
    assert decode_hits(wire) == HITS * 100
    assert decode_hits(json.dumps(HITS)) == HITS, "a JSON text (queued by an earlier version)"
    assert decode_hits(HITS) == HITS, "a list of hits (queued or spooled before either)"


def test_a_batch_that_inflates_beyond_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stages.hit_batch as hit_batch

    monkeypatch.setattr(hit_batch, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(ValueError, match="larger"):
        decode_hits(encode_hits(HITS * 100))


@pytest.mark.parametrize("bad", ['{"id": 1}', "[1, 2]", "not json", 5, "z:not base64!", "z:" + "QUJD"])
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        decode_hits(bad)  # type: ignore[arg-type]
