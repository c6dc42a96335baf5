"""Frames a worker sends back to back: the facilitator reads the ones already buffered before it
commits, so they share one commit and one ack (real sockets on 127.0.0.1)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
import websocket

from jobrelay.facilitator import Facilitator
from jobrelay.facilitator.http_api import serve_facilitator
from jobrelay.protocol.messages import JobStatus, JobStatusUpdate, WorkerEvent
from jobrelay.protocol.session import OutFrame
from tests.facilitator_client import KEYS, TestWorker

pytestmark = pytest.mark.timeout(30)

STATUSES = (JobStatus.ACCEPTED, JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.COMPLETED)


@pytest.fixture
def w1(fac: Facilitator) -> Iterator[TestWorker]:
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    worker.connect()
    try:
        yield worker
    finally:
        worker.disconnect()


def test_frames_sent_back_to_back_share_commits_and_keep_their_order(
    fac: Facilitator, w1: TestWorker
) -> None:
    ids = fac.submit_many([("echo", n, None) for n in range(50)], worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 50)
    before = fac.stats()
    frames = len(w1.sent_frames)
    for job_id in ids:
        for n, status in enumerate(STATUSES):
            # one status a publish: one frame each, sent without waiting for an ack
            w1.publish([JobStatusUpdate(job_id=job_id, status=status, at=float(n), progress=n / 4)])
    assert len(w1.sent_frames) - frames == 200
    w1.wait_for(w1.all_acked, timeout=20)
    after = fac.stats()
    assert after.data_accepted - before.data_accepted == 200
    # One commit a frame was the cap this removes; frames that were waiting share a commit,
    # at most 64 frames a read-ahead (how long one connection holds the loop).
    assert 200 / 64 <= after.store_commits - before.store_commits <= 100, (before, after)
    for job_id in ids:
        view = fac.job(job_id)
        assert view is not None
        assert [(h.status, h.progress) for h in view.history] == [
            (s.value, n / 4) for n, s in enumerate(STATUSES)
        ]


def test_data_read_before_a_malformed_frame_is_kept_and_not_sent_twice(
    fac: Facilitator, w1: TestWorker
) -> None:
    for n in range(20):
        w1.publish([WorkerEvent(event=f"e{n}", at=float(n))])
    w1.send_raw(OutFrame(b"{not json", binary=False))
    assert w1.wait_closed() is not None
    w1.connect()  # the same store: resumes after what the facilitator holds
    w1.wait_for(w1.all_acked)
    stats = fac.stats()
    assert stats.data_accepted == 20 and stats.duplicates_dropped == 0
    view = next(v for v in fac.workers() if v.worker_id == "w1")
    assert view.in_hwm == 20 and view.last_event == "e19"


def test_a_fragmented_frame_among_whole_ones_is_read_whole_and_in_order(
    fac: Facilitator, w1: TestWorker
) -> None:
    captured: list[OutFrame] = []
    w1.send_raw = captured.append  # type: ignore[method-assign]  # frames kept, sent below
    for n in range(3):
        w1.publish([WorkerEvent(event=f"e{n}", at=float(n))])
    assert len(captured) == 3 and w1.ws is not None
    first, middle, last = captured
    w1.ws.send(first.data)
    cut = len(middle.data) // 3
    parts = [middle.data[:cut], middle.data[cut : 2 * cut], middle.data[2 * cut :]]
    w1.ws.send_frame(websocket.ABNF.create_frame(parts[0], websocket.ABNF.OPCODE_TEXT, fin=0))
    w1.ws.send_frame(websocket.ABNF.create_frame(parts[1], websocket.ABNF.OPCODE_CONT, fin=0))
    w1.ws.send_frame(websocket.ABNF.create_frame(parts[2], websocket.ABNF.OPCODE_CONT, fin=1))
    w1.ws.send(last.data)
    w1.wait_for(w1.all_acked)
    assert fac.stats().data_accepted == 3
    view = next(v for v in fac.workers() if v.worker_id == "w1")
    assert view.in_hwm == 3 and view.last_event == "e2"


def test_subscribers_see_each_update_of_a_batch_as_recorded(fac: Facilitator, w1: TestWorker) -> None:
    # Several updates of one job in one batch (frames read ahead make one batch): a retried
    # failure must not relabel the job's other updates, a refused one must not hide them.
    a = fac.submit("echo", worker="w1", retries=1)
    b = fac.submit("echo", worker="w1")
    w1.wait_for(lambda: len(w1.store.received) == 2)
    server = serve_facilitator(fac)
    try:
        request = urllib.request.Request(
            server.url + "/events?type=job.status", headers={"Accept": "text/event-stream"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.readline() == b"event: stream.open\n"
            w1.publish(
                [
                    JobStatusUpdate(job_id=a, status=JobStatus.RUNNING, at=1.0, progress=0.5),
                    JobStatusUpdate(job_id=a, status=JobStatus.FAILED, at=2.0, detail="boom", retryable=True),
                    JobStatusUpdate(job_id=b, status=JobStatus.COMPLETED, at=3.0),
                    JobStatusUpdate(job_id=b, status=JobStatus.COMPLETED, at=4.0),  # refused
                ]
            )
            seen = []
            while len(seen) < 3:
                line = resp.readline()
                if line.startswith(b"data: "):
                    event = json.loads(line.removeprefix(b"data: "))
                    if event["type"] == "job.status":
                        seen.append((event["job_id"], event["status"], event["progress"]))
    finally:
        server.stop()
    assert seen == [(a, "running", 0.5), (a, "retrying", None), (b, "completed", None)]
