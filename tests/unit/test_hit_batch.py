"""pipeline.stages.hit_batch: the wire form of a tracking.record batch, old and new."""

from __future__ import annotations

import json

import pytest

from pipeline.stages.hit_batch import decode_hits, encode_hits

HITS = [{"id": "a1", "kind": "open", "email_id": "0" * 24, "token": "ab" * 8, "at": 1733370000.25, "ip": "203.0.113.9",
         "ua": "Mozilla/5.0 \"quoted\" ünïcode", "method": "GET", "dnt": False}]


def test_round_trip_and_the_older_list_form() -> None:
    wire = encode_hits(HITS)
    assert isinstance(wire, str) and json.loads(wire) == HITS
    assert decode_hits(wire) == HITS
    assert decode_hits(HITS) == HITS, "batches queued or spooled before the change are lists"


@pytest.mark.parametrize("bad", ['{"id": 1}', "[1, 2]", "not json", 5])
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        decode_hits(bad)  # type: ignore[arg-type]
