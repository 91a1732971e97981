"""Issue 22, must-show 1: the labelled suite (tests/data/tracking_scenarios.py) through the real
recording flows on PostgreSQL, with precision and recall of the machine flag and count errors.

Every scenario is a sent, tracked email (its recipient hash and link hashes signed as in a real
send); its hits go through ``tracking.record`` (verification, per-hit rules, storage, counting)
and ``tracking.settle_clicks`` (the sequence rules) in the order and at the times they would
happen: the flows' clock is simulated, and each settle pass runs when its delayed message would
(``SETTLE_DELAY_MS`` after the hit), so an open can be judged before or after the clicks beside
it, as in production. The report is printed (``make test`` shows it) and asserted:
precision and recall of the machine flag >= 0.95, no human hit flagged in any human group, and
every email's open and click counts equal to its labelled people (and Gmail proxy opens).
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlmodel import Session, select

from models import Delivery, Email, TrackedLink, TrackingEvent
from models.db import get_engine
from ops.keys import get_keyring
from pipeline.flows import tracking_record
from pipeline.stages.tracking_ids import link_hash, recipient_hash
from tests.data.tracking_scenarios import SCENARIOS, Scenario
from tests.harness.flow import make_account, make_org

pytestmark = pytest.mark.integration

SENT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RECIPIENT = "reader@prospect.example"
_serial = itertools.count()


@dataclass
class Outcome:
    scenario: Scenario
    flags: list[tuple[str, bool, str | None]]  # (truth, machine flag, reason) per hit
    counts: tuple[int, int]  # (open_count, click_count) stored
    expected: tuple[int, int]


def _sent_email(org_id: str, account_id: str, sc: Scenario) -> tuple[str, str, list[str]]:
    """A sent, tracked email with ``sc.links`` links: (email id, pixel token, link tokens)."""
    keyring = get_keyring()
    n = next(_serial)
    with Session(get_engine()) as s:
        email = Email(org_id=org_id, account_id=account_id, direction="outbound", status="sent", dedupe_key=f"mid:suite{n}@t",
                      message_id=f"suite{n}@t", subject=sc.name[:200], sent_at=SENT, pipeline_state="done")
        s.add(email)
        s.flush()
        s.add(Delivery(email_id=email.id, seq=0, recipients=[RECIPIENT], tracked_for=RECIPIENT, state="sent"))
        tokens = []
        for i in range(sc.links):
            url = f"https://vendor.example/{n}/link{i}"
            lh = link_hash(partial(keyring.sign, "click"), email.id, url)
            s.add(TrackedLink(email_id=email.id, link_hash=lh, url=url, position=i, text=f"Link {i}"))
            tokens.append(lh)
        s.commit()
        return email.id, recipient_hash(partial(keyring.sign, "open"), email.id, RECIPIENT), tokens


def _run(sc: Scenario, email_id: str, pixel: str, links: list[str], clock: dict[str, datetime]) -> dict[int, str]:
    """Record the hits at their times and settle as the delayed settle messages would; intake ids by hit index."""
    delay = timedelta(milliseconds=tracking_record.SETTLE_DELAY_MS)
    due: list[datetime] = []
    ids: dict[int, str] = {}

    def settle_until(t: datetime) -> None:
        while due and min(due) <= t:
            when = min(due)
            due.remove(when)
            clock["now"] = when
            tracking_record.settle([email_id])
            if _waiting(email_id):
                due.append(when + delay)

    for i, h in sorted(enumerate(sc.hits), key=lambda ih: ih[1].t):
        at = SENT + timedelta(seconds=h.t)
        settle_until(at)
        clock["now"] = at
        ids[i] = uuid.uuid4().hex
        token = pixel if h.kind == "open" else links[h.link]
        tracking_record.record([{"id": ids[i], "kind": h.kind, "email_id": email_id, "token": token, "at": at.timestamp(),
                                 "ip": h.ip, "ua": h.ua, "method": h.method, "dnt": False}])
        if _waiting(email_id):
            due.append(at + delay)
    settle_until(SENT + timedelta(days=30))
    assert not _waiting(email_id), f"{sc.name}: hits left unsettled"
    return ids


def _waiting(email_id: str) -> bool:
    with Session(get_engine()) as s:
        return s.exec(select(TrackingEvent.id).where(TrackingEvent.email_id == email_id,
                                                     TrackingEvent.settled == False)).first() is not None  # noqa: E712


def _outcome(sc: Scenario, email_id: str, ids: dict[int, str]) -> Outcome:
    with Session(get_engine()) as s:
        events = {e.intake_id: e for e in s.exec(select(TrackingEvent).where(TrackingEvent.email_id == email_id))}
        email = s.get(Email, email_id)
        assert email is not None
        counts = (email.open_count, email.click_count)
    flags = []
    for i, h in enumerate(sc.hits):
        ev = events[ids[i]]
        flags.append((h.truth, ev.machine, ev.reason))
    expected = (sum(1 for h in sc.hits if h.kind == "open" and h.truth in ("human", "proxy")),
                sum(1 for h in sc.hits if h.kind == "click" and h.truth == "human"))
    return Outcome(sc, flags, counts, expected)


@pytest.fixture
def outcomes(use_pg: str, stub_broker: StubBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Outcome]]:
    """Every scenario recorded and settled on PostgreSQL under a simulated clock."""
    clock = {"now": SENT}
    monkeypatch.setattr(tracking_record, "utcnow", lambda: clock["now"])
    org_id, _ = make_org(f"suite-{uuid.uuid4().hex[:8]}")
    account_id = make_account(org_id)
    results = []
    for sc in SCENARIOS:
        email_id, pixel, links = _sent_email(org_id, account_id, sc)
        ids = _run(sc, email_id, pixel, links, clock)
        results.append(_outcome(sc, email_id, ids))
    yield results


def _report(results: list[Outcome]) -> dict[str, Any]:
    tp = fp = fn = tn = 0
    human_flagged: dict[str, int] = defaultdict(int)
    reasons: Counter[str] = Counter()
    misses: list[str] = []
    for o in results:
        for truth, flagged, reason in o.flags:
            expect = truth in ("machine", "proxy")
            tp += expect and flagged
            fp += (not expect) and flagged
            fn += expect and not flagged
            tn += (not expect) and not flagged
            if flagged:
                reasons[reason or "?"] += 1
            if truth == "human" and flagged:
                human_flagged[o.scenario.group] += 1
            if expect != flagged:
                misses.append(f"{o.scenario.name}: {truth} hit {'flagged ' + str(reason) if flagged else 'not flagged'}")
    count_errors = [f"{o.scenario.name}: counts {o.counts}, labelled {o.expected}" for o in results if o.counts != o.expected]
    return {"sequences": len(results), "hits": tp + fp + fn + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "human_flagged": dict(human_flagged), "count_errors": count_errors, "misses": misses, "reasons": dict(reasons),
            "groups": Counter(o.scenario.group for o in results)}


def test_labelled_suite_precision_recall_and_counts(outcomes: list[Outcome], capsys: pytest.CaptureFixture[str]) -> None:
    """Must-show 1: precision and recall >= 0.95, no human hit flagged in any human group, count errors 0."""
    r = _report(outcomes)
    with capsys.disabled():
        print(f"\n[tracking signal suite] {r['sequences']} sequences, {r['hits']} hits "
              f"({sum(v for k, v in r['groups'].items() if k.startswith('human'))} human sequences, "
              f"{sum(v for k, v in r['groups'].items() if k.startswith('machine'))} machine)")
        print(f"[tracking signal suite] machine flag: precision {r['precision']:.3f}, recall {r['recall']:.3f} "
              f"(tp {r['tp']}, fp {r['fp']}, fn {r['fn']}, tn {r['tn']}); count errors {len(r['count_errors'])}")
        print(f"[tracking signal suite] reasons: {dict(sorted(r['reasons'].items()))}")
        for line in r["misses"] + r["count_errors"]:
            print(f"[tracking signal suite]   {line}")
    assert r["sequences"] >= 60
    assert {g for g in r["groups"] if g.startswith("human/")} >= {"human/webmail", "human/gmail", "human/outlook", "human/apple",
                                                                   "human/apps", "human/vdi", "human/forwarded"}
    assert r["human_flagged"] == {}, r["misses"]
    assert r["precision"] >= 0.95 and r["recall"] >= 0.95, r["misses"]
    assert r["count_errors"] == []


def test_gmail_proxy_counted_and_mpp_flagged_in_the_suite(outcomes: list[Outcome]) -> None:
    """Must-show 2 (suite part): every Gmail proxy open is flagged gmail_proxy and counted; every MPP fetch is apple_mpp."""
    proxy = [(flag, reason) for o in outcomes for (truth, flag, reason) in o.flags if truth == "proxy"]
    assert proxy and all(flag and reason == "gmail_proxy" for flag, reason in proxy)
    mpp = [reason for o in outcomes for h, (truth, flag, reason) in zip(o.scenario.hits, o.flags, strict=True)
           if h.ua == "Mozilla/5.0" and h.ip.startswith("17.")]
    assert mpp and set(mpp) == {"apple_mpp"}
