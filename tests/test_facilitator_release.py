"""The reference facilitator takes back jobs a draining worker releases (over real sockets, with
the protocol-speaking TestWorker): it says so in its welcome, queues a released job again for
another worker, and never lets a release undo a cancel that was on its way to the worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobCancel, JobRequest, JobStatus
from tests.facilitator_client import KEYS, TestWorker, pump_until

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
    job_id = fac.submit("echo", "hi", worker="w1")
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
