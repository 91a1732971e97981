"""pipeline.flows.selftest and its two actors: the pipeline on the embedded broker."""

from __future__ import annotations

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from pipeline.actors import selftest as actors
from pipeline.flows import selftest


class TestEmbeddedPipeline:
    def test_round_trip(self, db: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """Stage one hands the run id to stage two through the in-memory broker."""
        run_id = selftest.start_run()
        stub_broker.join("ops", timeout=10_000)
        stub_worker.join()
        run = selftest.wait_for_run(run_id, timeout=5)
        assert run is not None
        assert run.first_at is not None and run.second_at is not None and run.second_at >= run.first_at
        assert (run.first_runs, run.second_runs) == (1, 1)

    def test_redelivery_is_harmless(self, db: str, stub_broker: StubBroker, stub_worker: Worker) -> None:
        """Running stage two again (a redelivery) leaves the run complete and counts the repeat."""
        run_id = selftest.start_run()
        stub_broker.join("ops", timeout=10_000)
        actors.second.send(run_id)
        stub_broker.join("ops", timeout=10_000)
        stub_worker.join()
        run = selftest.wait_for_run(run_id, timeout=5)
        assert run is not None and run.second_runs == 2 and run.first_runs == 1
