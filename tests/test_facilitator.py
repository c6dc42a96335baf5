"""The reference facilitator over real sockets on 127.0.0.1: routing, replay, statuses, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.facilitator import Facilitator, JobTooLarge
from jobrelay.protocol.messages import (
    JobCancel,
    JobRequest,
    JobStatus,
    JobStatusUpdate,
    MachineSpecs,
    WorkerEvent,
)
from tests.facilitator_client import (
    KEYS,
    ClientStore,
    TestWorker,
    make_facilitator,
    pump_until,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

LIFECYCLE = (JobStatus.ACCEPTED, JobStatus.RUNNING, JobStatus.COMPLETED)


@pytest.fixture
def workers() -> Iterator[list[TestWorker]]:
    made: list[TestWorker] = []
    try:
        yield made
    finally:
        for worker in made:
            worker.disconnect()


def connect(fac: Facilitator, made: list[TestWorker], worker_id: str, **kwargs: object) -> TestWorker:
    worker = TestWorker(fac.url, worker_id, KEYS[worker_id], **kwargs)  # type: ignore[arg-type]
    made.append(worker)
    worker.connect()
    return worker


def job_ids(bodies: list[object]) -> list[str]:
    return [b.job_id for b in bodies if isinstance(b, JobRequest)]


def test_submitted_jobs_reach_the_named_worker_and_are_replayed_until_acked(
    fac: Facilitator, workers: list[TestWorker]
) -> None:
    ids = [fac.submit("echo", {"n": n}, worker="w1") for n in range(5)]  # w1 not connected yet
    assert fac.workers()[0].outbox_depth == 5
    other = connect(fac, workers, "w2")
    w1 = connect(fac, workers, "w1", persist_incoming=False)  # sees them, never makes them durable
    w1.wait_for(lambda: len(w1.seen) == 5)
    assert job_ids(w1.seen) == ids
    w1.kill()
    w1.persist_incoming = True
    w1.connect()
    w1.wait_for(lambda: len(w1.store.received) == 5)
    assert job_ids(w1.store.received) == ids
    assert [b.payload for b in w1.store.received] == [{"n": n} for n in range(5)]
    wait_until(lambda: fac.workers()[0].outbox_depth == 0)
    w1.disconnect()
    w1.connect()  # everything was acked: nothing comes again
    w1.wait_for(lambda: fac.stats().sessions_opened == 4)
    w1.pump(0.2)
    assert w1.seen == []
    assert other.seen == []


def test_jobs_sent_as_just_committed_and_as_read_back_are_the_same_stream(
    fac: Facilitator, workers: list[TestWorker]
) -> None:
    """A connected worker's new jobs go out from memory (no store read); a cancel, a job
    submitted while it was away and a replay come from the store. Either way the worker sees one
    stream: every body as stored, each seq once, in order."""
    w1 = connect(fac, workers, "w1")
    first = [fac.submit("echo", {"n": n, "nested": [n, {"x": None}]}, worker="w1") for n in range(3)]
    assert fac.cancel(first[1], "changed")  # from the store, between fresh rows
    more = fac.submit_many([("echo", {"n": 3}, None), ("echo", {"n": 4}, None)], worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 6)
    w1.kill()
    away = fac.submit("echo", {"n": 5}, worker="w1")  # stored while w1 is away
    w1.connect()
    later = fac.submit("echo", {"n": 6}, worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 8)
    received = w1.store.received
    assert [b.job_id for b in received] == [*first, first[1], *more, away, later]
    assert received[3] == JobCancel(job_id=first[1], reason="changed")
    for body in received:
        if isinstance(body, JobRequest):
            view = fac.job(body.job_id)
            assert view is not None and body.payload == view.payload and body.kind == view.record.kind
    assert w1.store.in_hwm == 8  # seqs 1..8, each delivered once


def test_status_history_recorded_in_order_exactly_once_with_resent_duplicates(
    fac: Facilitator, workers: list[TestWorker]
) -> None:
    w1 = connect(fac, workers, "w1")
    ids = fac.submit_many([("echo", n, None) for n in range(20)], worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 20)
    for job_id in ids:
        for status in LIFECYCLE:
            w1.status(job_id, status, progress=0.5 if status is JobStatus.RUNNING else None)
    w1.wait_for(w1.all_acked)
    old_frames = list(w1.sent_frames)
    assert old_frames
    # The worker's store "loses" its acks (restored copy): the facilitator still resumes it after
    # its own high-water mark, and frames re-sent raw are dropped as duplicates.
    w1.store.out_acked = 0
    w1.kill()
    w1.connect()
    assert w1.opened is not None and w1.opened.resume_after == 60
    for frame in old_frames:
        w1.send_raw(frame)
    w1.status(ids[0], JobStatus.RUNNING)  # after a terminal status: refused, not recorded
    w1.wait_for(w1.all_acked)
    wait_until(lambda: fac.stats().duplicates_dropped >= 60)
    for job_id in ids:
        view = fac.job(job_id)
        assert view is not None
        assert [h.status for h in view.history] == [s.value for s in LIFECYCLE]
        assert view.status == "completed"
        assert view.worker == "w1"
    assert fac.stats().data_accepted == 61
    assert fac.stats().refused_updates == 1
    assert [w.code for w in w1.warnings] == []  # not told: it was its own job


def test_worker_cannot_update_another_workers_job(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1")
    w2 = connect(fac, workers, "w2")
    theirs = fac.submit("echo", worker="w1")
    mine = fac.submit("echo", worker="w2")
    w2.wait_for(lambda: len(w2.store.received) == 1)
    w2.status(theirs, JobStatus.COMPLETED)
    w2.status("no-such-job", JobStatus.FAILED)
    w2.status(mine, JobStatus.ACCEPTED)  # the stream goes on after the refusal
    w2.wait_for(lambda: w2.all_acked() and len(w2.warnings) == 2)
    assert {w.code for w in w2.warnings} == {"job_not_yours"}
    assert theirs in w2.warnings[0].detail
    view = fac.job(theirs)
    assert view is not None and view.history == [] and view.status is None
    assert fac.job("no-such-job") is None
    mine_view = fac.job(mine)
    assert mine_view is not None and [h.status for h in mine_view.history] == ["accepted"]
    assert fac.stats().refused_updates == 2
    assert w2.is_open and w1.is_open


def test_unassigned_jobs_wait_for_a_worker_and_go_to_the_least_busy(
    fac: Facilitator, workers: list[TestWorker]
) -> None:
    first = fac.submit("echo", job_id="queued-1")
    view = fac.job(first)
    assert view is not None and view.worker == ""
    w1 = connect(fac, workers, "w1")
    w1.wait_for(lambda: len(w1.store.received) == 1)
    assert job_ids(w1.store.received) == ["queued-1"]
    w2 = connect(fac, workers, "w2")
    w3 = connect(fac, workers, "w3")
    w3.draining = True
    w3.heartbeat()
    wait_until(lambda: any(v.draining for v in fac.workers()))
    ids = fac.submit_many([("echo", n, None) for n in range(5)])
    pump_until([w1, w2, w3], lambda: len(w1.store.received) + len(w2.store.received) == 6)
    assert len(w1.store.received) == 3 and len(w2.store.received) == 3  # balanced by outstanding jobs
    assert w3.seen == []
    assert sorted(job_ids(w1.store.received[1:]) + job_ids(w2.store.received)) == sorted(ids)
    assert fac.submit("echo", job_id="queued-1") == "queued-1"  # idempotent: nothing new
    assert fac.stats().jobs_submitted == 7


def test_cancel_queued_and_routed_jobs(fac: Facilitator, workers: list[TestWorker]) -> None:
    queued = fac.submit("echo")
    assert fac.cancel(queued, "changed my mind")
    view = fac.job(queued)
    assert view is not None and view.status == "cancelled"
    assert not fac.cancel(queued)  # already finished
    assert not fac.cancel("unknown")
    w1 = connect(fac, workers, "w1")
    routed = fac.submit("sleep", worker="w1")
    assert fac.cancel(routed, "stop")
    w1.wait_for(lambda: len(w1.store.received) == 2)
    assert w1.store.received[1] == JobCancel(job_id=routed, reason="stop")
    w1.status(routed, JobStatus.CANCELLED)
    w1.wait_for(w1.all_acked)
    routed_view = fac.job(routed)
    assert routed_view is not None and routed_view.status == "cancelled"


def test_a_job_too_large_for_one_frame_is_refused_and_the_stream_keeps_flowing(
    tmp_path: Path, workers: list[TestWorker]
) -> None:
    fac = make_facilitator(tmp_path, max_frame_bytes=4096)
    try:
        w1 = connect(fac, workers, "w1")
        with pytest.raises(JobTooLarge, match=r"job 'big' encodes to \d+ bytes.*max_frame_bytes \(4096\)"):
            fac.submit("echo", "x" * 4000, job_id="big", worker="w1")
        with pytest.raises(ValueError, match="max_frame_bytes"):  # one too large refuses the call
            fac.submit_many([("echo", "small", "a"), ("echo", "x" * 4000, "b")])
        assert fac.jobs() == [] and fac.job("big") is None
        fits = fac.submit("echo", "x" * 3800, worker="w1")  # ~3.95 kB frame: fits
        w1.wait_for(lambda: job_ids(w1.store.received) == [fits])
        with pytest.raises(JobTooLarge, match="cancel"):
            fac.cancel(fits, "r" * 4096)
        assert fac.cancel(fits, "short")
        w1.wait_for(lambda: len(w1.store.received) == 2)
        assert fac.stats().sessions_opened == 1  # the stream never broke
        w1.disconnect()
    finally:
        fac.stop()


def test_a_job_msgpack_cannot_carry_is_refused(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1")
    with pytest.raises(ValueError, match="outside the 64-bit signed range"):
        fac.submit("echo", {"n": 2**70}, job_id="huge-int", worker="w1")  # msgpack and SQLite cannot
    assert fac.job("huge-int") is None
    ok = fac.submit("echo", {"n": 2**60}, worker="w1")
    w1.wait_for(lambda: job_ids(w1.store.received) == [ok])
    w1.disconnect()


def test_machine_specs_and_events_are_kept_per_worker(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1")
    w1.publish(
        [
            MachineSpecs(specs={"cpus": 2}, at=time.time()),
            WorkerEvent(event="started", at=time.time()),
            MachineSpecs(specs={"cpus": 4, "gpu": "none"}, at=time.time()),
        ]
    )
    w1.wait_for(w1.all_acked)
    view = next(v for v in fac.workers() if v.worker_id == "w1")
    assert view.specs == {"cpus": 4, "gpu": "none"}
    assert view.last_event == "started"
    assert view.connected and not view.draining and view.in_hwm == 3


def test_restart_keeps_jobs_history_and_stream_marks(tmp_path: Path) -> None:
    store = ClientStore()
    fac = make_facilitator(tmp_path)
    w1 = TestWorker(fac.url, "w1", KEYS["w1"], store)
    try:
        w1.connect()
        ids = fac.submit_many([("echo", n, None) for n in range(3)], worker="w1")
        w1.wait_for(lambda: len(store.received) == 3)
        w1.status(ids[0], JobStatus.ACCEPTED)
        w1.status(ids[0], JobStatus.COMPLETED)
        w1.wait_for(w1.all_acked)
        queued_later = fac.submit("echo", worker="w1")  # stored for w1, maybe not acked yet
        fac.stop()
        w1.wait_closed()
        assert w1.close_code == 1001

        fac = make_facilitator(tmp_path)
        w1.url = fac.url
        opened = w1.connect()
        assert not opened.new_in_stream and not opened.new_out_stream
        assert opened.resume_after == 2
        w1.wait_for(lambda: len(store.received) == 4)
        assert job_ids(store.received) == [*ids, queued_later]  # each exactly once
        w1.status(ids[1], JobStatus.FAILED, detail="boom")
        w1.wait_for(w1.all_acked)
        first = fac.job(ids[0])
        assert first is not None and [h.status for h in first.history] == ["accepted", "completed"]
        second = fac.job(ids[1])
        assert second is not None and second.status == "failed" and second.record.detail == "boom"
        assert fac.stats().new_streams == 0
        assert len(fac.jobs()) == 4 and [r.job_id for r in fac.jobs(status="failed")] == [ids[1]]
    finally:
        w1.disconnect()
        fac.stop()


def test_a_new_worker_store_starts_a_new_stream(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1")
    w1.publish([WorkerEvent(event="e", at=time.time()) for _ in range(3)])
    w1.wait_for(w1.all_acked)
    old_epoch = w1.store.out_epoch
    w1.disconnect()
    w1.store = ClientStore()  # database deleted: new epoch, seq 1 again
    opened = w1.connect()
    assert opened.new_in_stream
    w1.publish([WorkerEvent(event="after-restore", at=time.time())])
    w1.wait_for(w1.all_acked)
    view = next(v for v in fac.workers() if v.worker_id == "w1")
    assert view.in_epoch == w1.store.out_epoch != old_epoch
    assert view.in_hwm == 1 and view.last_event == "after-restore"
    assert fac.stats().new_streams == 2 and fac.stats().data_accepted == 4


def test_a_second_connection_replaces_the_first(fac: Facilitator, workers: list[TestWorker]) -> None:
    store = ClientStore()
    first = connect(fac, workers, "w1", store=store)
    second = connect(fac, workers, "w1", store=store)
    assert first.wait_closed() == 1001
    job = fac.submit("echo")
    second.wait_for(lambda: len(store.received) == 1)
    assert job_ids(store.received) == [job]
    assert fac.stats().connections_replaced == 1
    assert [v.connected for v in fac.workers() if v.worker_id == "w1"] == [True]


def test_thousand_jobs_four_updates_each_exactly_once_in_order(
    fac: Facilitator, workers: list[TestWorker]
) -> None:
    w1 = connect(fac, workers, "w1")
    ids = fac.submit_many([("echo", n, None) for n in range(1000)], worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 1000, timeout=10)
    statuses = (JobStatus.ACCEPTED, JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.COMPLETED)
    started = time.perf_counter()
    for start in range(0, 1000, 100):  # a worker with a backlog sends batches (≤ 500 per frame)
        w1.publish(
            [
                JobStatusUpdate(
                    job_id=job_id,
                    status=status,
                    at=time.time(),
                    progress=n / 4 if status is JobStatus.RUNNING else None,
                )
                for job_id in ids[start : start + 100]
                for n, status in enumerate(statuses)
            ]
        )
        w1.pump(0.001)
    w1.wait_for(w1.all_acked, timeout=20)
    elapsed = time.perf_counter() - started
    print(f"\n4000 status updates acked in {elapsed:.3f}s: {4000 / elapsed:,.0f}/s")
    assert fac.stats().data_accepted == 4000
    for job_id in ids[::97]:
        view = fac.job(job_id)
        assert view is not None and [h.status for h in view.history] == [s.value for s in statuses]
    assert len(fac.jobs(status="completed", limit=2000)) == 1000


def test_msgpack_worker(fac: Facilitator, workers: list[TestWorker]) -> None:
    w1 = connect(fac, workers, "w1", formats=("msgpack",))
    job = fac.submit("echo", {"x": 1}, worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 1)
    assert w1.store.received[0].payload == {"x": 1}
    w1.status(job, JobStatus.COMPLETED)
    w1.wait_for(w1.all_acked)
    view = fac.job(job)
    assert view is not None and view.status == "completed"


def test_jobs_refuses_a_negative_limit(fac: Facilitator) -> None:
    fac.submit("echo", None, job_id="one")
    assert [r.job_id for r in fac.jobs(limit=1)] == ["one"]
    assert fac.jobs(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        fac.jobs(limit=-1)
