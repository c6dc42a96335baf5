"""The reference facilitator takes back jobs a draining worker releases (over real sockets, with
the protocol-speaking TestWorker): it says so in its welcome, queues a released job again for
another worker, and never lets a release undo a cancel that was on its way to the worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobCancel, JobRequest, JobStatus
from tests.facilitator_client import KEYS, TestWorker, make_facilitator, pump_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def workers() -> Iterator[list[TestWorker]]:
    made: list[TestWorker] = []
    try:
        yield made
    finally:
        for worker in made:
            worker.disconnect()


def connect(fac: Facilitator, made: list[TestWorker], worker_id: str) -> TestWorker:
    worker = TestWorker(fac.url, worker_id, KEYS[worker_id])
    made.append(worker)
    assert worker.connect().takes_releases  # the welcome says released jobs are taken back
    return worker


def requests(worker: TestWorker) -> list[str]:
    return [b.job_id for b in worker.store.received if isinstance(b, JobRequest)]


def history(fac: Facilitator, job_id: str) -> list[str]:
    view = fac.job(job_id)
    assert view is not None
    return [e.status for e in view.history]


def test_a_released_job_goes_to_another_worker(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1")
    job_id = fac.submit("echo", "hi")  # w1 is the only worker: it goes there (not pinned)
    w1.wait_for(lambda: requests(w1) == [job_id])
    w1.status(job_id, JobStatus.ACCEPTED)
    w2 = connect(fac, workers, "w2")
    w1.draining = True
    w1.heartbeat()
    w1.status(job_id, JobStatus.RELEASED, detail="worker draining")
    pump_until([w1, w2], lambda: requests(w2) == [job_id])
    view = fac.job(job_id)
    assert view is not None and view.worker == "w2" and view.status == "released"
    w2.status(job_id, JobStatus.ACCEPTED)
    w2.status(job_id, JobStatus.COMPLETED)
    pump_until([w1, w2], lambda: w2.all_acked() and w1.all_acked())
    assert history(fac, job_id) == ["accepted", "released", "accepted", "completed"]
    assert fac.stats().jobs_released == 1


def test_a_release_never_undoes_a_cancel_on_its_way(fac: Facilitator, workers: list[TestWorker]) -> None:
    """The worker hands the job back while offline; the operator cancels it meanwhile (the
    cancel waits in the worker's outbox). The release must not queue it for another worker."""
    w1 = connect(fac, workers, "w1")
    w2 = connect(fac, workers, "w2")
    job_id = fac.submit("sleep", worker="w1")
    w1.wait_for(lambda: requests(w1) == [job_id])
    w1.status(job_id, JobStatus.ACCEPTED)
    w1.wait_for(w1.all_acked)
    w1.disconnect()
    assert fac.cancel(job_id, "not needed")  # durable, for w1
    w1.status(job_id, JobStatus.RELEASED, detail="worker draining")  # stored while offline
    w1.connect()
    pump_until([w1, w2], lambda: w1.all_acked() and any(isinstance(b, JobCancel) for b in w1.store.received))
    assert history(fac, job_id) == ["accepted", "released", "cancelled"]
    view = fac.job(job_id)
    assert view is not None and view.record.detail == "not needed"
    pump_until([w1, w2], lambda: True)
    assert requests(w2) == []


def test_a_release_gives_credit_back_and_the_job_is_placed_again_by_kind_and_credit(
    tmp_path: Path, workers: list[TestWorker]
) -> None:
    """Protocol v3 routing and releases together: the releasing worker's unfinished count goes
    down (also as a restarted facilitator counts it), a released job goes only to a worker that
    runs its kind and has credit left, keeps its attempt, and a cancel of it ends it at once."""
    fac = make_facilitator(tmp_path)
    try:
        w1 = TestWorker(fac.url, "w1", KEYS["w1"], kinds=("echo",), credit=2)
        w3 = TestWorker(fac.url, "w3", KEYS["w3"], kinds=("other",), credit=5)
        workers.extend([w1, w3])
        assert w1.connect().takes_releases and w3.connect().takes_releases
        a, c, b = (fac.submit("echo", i, job_id=f"j{i}", retries=2) for i in ("a", "c", "b"))
        w1.wait_for(lambda: requests(w1) == [a, c])
        assert outstanding(fac) == {"w1": 2, "w2": 0, "w3": 0}
        w1.status(a, JobStatus.ACCEPTED)
        w1.status(c, JobStatus.ACCEPTED)
        w1.draining = True
        w1.heartbeat()
        w1.status(a, JobStatus.RELEASED, detail="worker draining")
        w1.status(c, JobStatus.RELEASED, detail="worker draining")
        pump_until([w1, w3], lambda: w1.all_acked() and outstanding(fac)["w1"] == 0)
        assert fac.cancel(c, "not needed")  # queued again at the facilitator: ended at once
        assert history(fac, c) == ["accepted", "released", "cancelled"]
        w2 = TestWorker(fac.url, "w2", KEYS["w2"], kinds=("echo",), credit=1)
        workers.append(w2)
        w2.connect()
        pump_until([w1, w2, w3], lambda: requests(w2) == [a])
        for _ in range(10):
            w2.pump(0.05)  # time for anything wrongly sent to arrive
        assert requests(w2) == [a] and requests(w3) == []  # w2's credit is 1; w3 runs no echo
        sent = [r for r in w2.store.received if isinstance(r, JobRequest)]
        assert (sent[0].attempt, sent[0].max_attempts) == (1, 3)  # a release is not a retry
        view = fac.job(b)
        assert view is not None and view.record.peer == ""  # still queued
        assert outstanding(fac) == {"w1": 0, "w2": 1, "w3": 0}
        for worker in list(workers):
            worker.disconnect()
        workers.clear()
    finally:
        fac.stop()
    fac = make_facilitator(tmp_path)  # a restart counts unfinished jobs from the store
    try:
        assert outstanding(fac) == {"w1": 0, "w2": 1, "w3": 0}
    finally:
        fac.stop()


def outstanding(fac: Facilitator) -> dict[str, int]:
    return {w.worker_id: w.outstanding_jobs for w in fac.workers()}
