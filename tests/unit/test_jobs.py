"""pipeline.jobs: messages go to the process broker by job name; chains never use Dramatiq's implicit broker."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from pipeline import jobs
from pipeline.broker import ACTORS, QUEUES


def test_every_job_has_its_actor_and_a_known_queue(stub_broker: StubBroker) -> None:
    """Each job is run by exactly one declared actor, on the job's queue (the names queued messages carry)."""
    declared = {a.actor_name: a.queue_name for a in ACTORS}
    for job in jobs.JOBS:
        assert job.queue in QUEUES
        assert declared[job.name] == job.queue, job


def test_send_enqueues_on_the_process_broker(stub_broker: StubBroker) -> None:
    message = jobs.FETCH_ACCOUNT.send("acct-1", "token-1")
    queued = stub_broker.queues["fetch"].get_nowait()
    assert dramatiq.Message.decode(queued).message_id == message.message_id
    assert (message.actor_name, message.args) == ("fetch.account", ("acct-1", "token-1"))


def test_delayed_send_waits_in_the_delay_queue(stub_broker: StubBroker) -> None:
    jobs.SEND_EMAIL.send("email-1", delay_ms=60_000)
    assert stub_broker.queues["send"].qsize() == 0 and stub_broker.queues["send.DQ"].qsize() == 1


def test_chains_run_on_the_process_broker_not_dramatiqs_default(stub_broker: StubBroker) -> None:
    """A pipeline built without naming a broker would go to Dramatiq's global one (in a CLI process: a
    RabbitMQ on localhost's default vhost); the chain is bound to ours, every stage ignoring results."""
    dramatiq.set_broker(StubBroker())  # a different global broker: must not be used
    run = jobs.ingest_chain(["e1", "e2"])
    assert run.broker is stub_broker
    assert [m.actor_name for m in run.messages] == ["ingest.parse", "ingest.attachments", "ingest.link", "ingest.leads",
                                                    "ingest.notify"]
    assert all(m.args == (["e1", "e2"],) for m in run.messages)
    assert [m.options.get("pipe_ignore", False) for m in run.messages] == [False, True, True, True, True]
    run.run()
    assert stub_broker.queues["pipeline"].qsize() == 1
