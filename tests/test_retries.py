"""Retries over real sockets: a real facilitator and real workers (one process, separate databases).

What a user relies on: a job submitted with ``retries`` that fails retryably runs again as
attempt 2, 3, … (possibly on another worker, and as new work on the same one), its history
shows every attempt, and it still has exactly one ending; without ``retries`` it never runs
again; a retry waiting for its backoff survives a facilitator restart and can be cancelled.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pykka
import pytest

from jobrelay.actors import CommandHandler, JobContext, RetryableError, start_worker
from jobrelay.facilitator import Facilitator
from jobrelay.facilitator.http_api import serve_facilitator
from jobrelay.protocol.messages import JobRequest, JobStatus, JobStatusUpdate
from tests.facilitator_client import KEYS, TestWorker, make_facilitator, wait_until, worker_config
from tests.test_health import http

pytestmark = pytest.mark.timeout(60)

TERMINAL = {"completed", "failed", "rejected", "cancelled"}


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def statuses(fac: Facilitator, job_id: str) -> list[str]:
    view = fac.job(job_id)
    assert view is not None
    return [e.status for e in view.history]


def ended(fac: Facilitator, job_id: str) -> bool:
    view = fac.job(job_id)
    return view is not None and view.record.status in TERMINAL


def test_a_retried_job_succeeds_on_attempt_2_on_the_other_worker(fac: Facilitator, tmp_path: Path) -> None:
    started, fail_now, blocking, unblock = (threading.Event() for _ in range(4))

    def flaky_on_w1(job: JobRequest, ctx: JobContext) -> None:
        started.set()
        fail_now.wait(30)
        raise RetryableError("transient")

    def block(job: JobRequest, ctx: JobContext) -> None:
        blocking.set()
        unblock.wait(30)

    def fine_on_w2(job: JobRequest, ctx: JobContext) -> str:
        return f"attempt {job.attempt} on w2"

    try:
        with start_worker(worker_config(fac, tmp_path, "w1"), {"flaky": flaky_on_w1, "block": block}) as w1:
            w1.wait_connected(10)
            fac.submit("flaky", job_id="J", retries=1, retry_backoff=0.2)  # w1: the only worker
            wait_until(started.is_set, 20)
            with start_worker(worker_config(fac, tmp_path, "w2"), {"flaky": fine_on_w2}) as w2:
                w2.wait_connected(10)
                # w1 stays busier than w2, so the retry, routed like a new job, goes to w2.
                fac.submit("block", job_id="B", worker="w1")
                wait_until(blocking.is_set, 20)
                fail_now.set()
                wait_until(lambda: ended(fac, "J"), 30)
    finally:
        fail_now.set()
        unblock.set()
    view = fac.job("J")
    assert view is not None
    assert view.record.status == "completed" and view.record.peer == "w2"
    assert view.record.detail == "attempt 2 on w2"
    assert statuses(fac, "J") == ["accepted", "running", "retrying", "accepted", "running", "completed"]
    retrying = next(e for e in view.history if e.status == "retrying")
    assert "attempt 1 failed: RetryableError: transient" in retrying.detail
    assert "attempt 2 of 2" in retrying.detail
    assert fac.stats().refused_updates == 0


def test_no_retry_by_default(fac: Facilitator, tmp_path: Path) -> None:
    runs: list[int] = []

    def flaky(job: JobRequest, ctx: JobContext) -> None:
        runs.append(job.attempt)
        raise RetryableError("transient")

    with start_worker(worker_config(fac, tmp_path, "w1"), {"flaky": flaky}) as worker:
        worker.wait_connected(10)
        fac.submit("flaky", job_id="once")
        wait_until(lambda: ended(fac, "once"), 20)
        # A job submitted after it, to the same worker, ends after it: had a retry been
        # decided, its attempt would have been routed before this job was.
        fac.submit("flaky", job_id="later")
        wait_until(lambda: ended(fac, "later"), 20)
    assert statuses(fac, "once") == ["accepted", "running", "failed"]
    assert runs == [1, 1]


def test_every_attempt_fails_one_ending_and_the_same_worker_runs_each_as_new_work(
    fac: Facilitator, tmp_path: Path
) -> None:
    runs: list[int] = []

    def always(job: JobRequest, ctx: JobContext) -> None:
        runs.append(job.attempt)
        raise RetryableError(f"try {job.attempt}")

    def not_retryable(job: JobRequest, ctx: JobContext) -> None:
        runs.append(-job.attempt)
        raise ValueError("a bug, not a hiccup")

    with start_worker(worker_config(fac, tmp_path, "w1"), {"always": always, "bug": not_retryable}) as worker:
        worker.wait_connected(10)
        fac.submit("always", job_id="A", retries=2)
        fac.submit("bug", job_id="B", retries=2)
        wait_until(lambda: ended(fac, "A") and ended(fac, "B"), 30)
    assert statuses(fac, "A") == ["accepted", "running", "retrying"] * 2 + ["accepted", "running", "failed"]
    view = fac.job("A")
    assert view is not None and view.record.detail == "RetryableError: try 3"
    assert statuses(fac, "B") == ["accepted", "running", "failed"]
    assert sorted(runs) == [-1, 1, 2, 3]


def test_a_time_limit_is_retried_as_new_work_on_the_same_worker(fac: Facilitator, tmp_path: Path) -> None:
    release = threading.Event()

    def slow_then_fast(job: JobRequest, ctx: JobContext) -> str:
        if job.attempt == 1:
            release.wait(30)  # stuck: the hard limit ends this attempt
        return f"attempt {job.attempt}"

    try:
        with start_worker(worker_config(fac, tmp_path, "w1"), {"k": slow_then_fast}) as worker:
            worker.wait_connected(10)
            fac.submit("k", job_id="T", time_limit=0.5, retries=1)
            wait_until(lambda: ended(fac, "T"), 30)
    finally:
        release.set()
    view = fac.job("T")
    assert view is not None
    assert (view.record.status, view.record.detail) == ("completed", "attempt 2")
    assert statuses(fac, "T") == ["accepted", "running", "retrying", "accepted", "running", "completed"]
    assert "attempt 1 failed: time_limit" in view.history[2].detail


def test_a_waiting_retry_survives_a_restart_and_a_cancel_ends_it(tmp_path: Path) -> None:
    def flaky(job: JobRequest, ctx: JobContext) -> str:
        if job.attempt == 1:
            raise RetryableError("transient")
        return f"attempt {job.attempt}"

    fac = make_facilitator(tmp_path)
    try:
        with start_worker(worker_config(fac, tmp_path, "w1"), {"flaky": flaky}) as worker:
            worker.wait_connected(10)
            fac.submit("flaky", job_id="R", retries=1, retry_backoff=3600)  # waits for an hour...
            fac.submit("flaky", job_id="C", retries=1, retry_backoff=3600)
            wait_until(lambda: statuses(fac, "R")[-1:] == ["retrying"] == statuses(fac, "C")[-1:], 20)
            assert fac.cancel("C", "no longer needed")
            assert statuses(fac, "C")[-2:] == ["retrying", "cancelled"]
    finally:
        fac.stop()
    fac = make_facilitator(tmp_path)  # ...unless the facilitator restarts: then it is queued
    try:
        with start_worker(worker_config(fac, tmp_path, "w1"), {"flaky": flaky}) as worker:
            worker.wait_connected(10)
            wait_until(lambda: ended(fac, "R"), 20)
        view = fac.job("R")
        assert view is not None and (view.record.status, view.record.detail) == ("completed", "attempt 2")
        assert statuses(fac, "C")[-1] == "cancelled" and statuses(fac, "C").count("accepted") == 1
    finally:
        fac.stop()


def test_worker_restarted_and_a_listed_exit_code_are_retried(fac: Facilitator, tmp_path: Path) -> None:
    stuck = threading.Event()
    release = threading.Event()

    def hang_once(job: JobRequest, ctx: JobContext) -> str:
        if job.attempt == 1:
            stuck.set()
            release.wait(30)  # ignores the stop's cancel: interrupted by the "crash" below
        return f"attempt {job.attempt}"

    script = "import json, sys; sys.exit(0 if json.load(sys.stdin)['attempt'] > 1 else 75)"
    command = CommandHandler([sys.executable, "-c", script], retryable_exit_codes=[75])
    handlers = {"hang": hang_once, "cmd": command}
    try:
        worker = start_worker(worker_config(fac, tmp_path, "w1"), handlers)
        worker.wait_connected(10)
        fac.submit("hang", job_id="H", retries=1)
        fac.submit("cmd", job_id="X", retries=1)
        wait_until(lambda: stuck.is_set() and ended(fac, "X"), 20)
        worker.stop(timeout=1.0)  # H is left running, as after a crash
        with start_worker(worker_config(fac, tmp_path, "w1"), handlers) as again:
            again.wait_connected(10)
            wait_until(lambda: ended(fac, "H"), 20)
    finally:
        release.set()
    view = fac.job("H")
    assert view is not None and (view.record.status, view.record.detail) == ("completed", "attempt 2")
    assert "attempt 1 failed: worker_restarted" in view.history[2].detail
    assert statuses(fac, "X") == ["accepted", "running", "retrying", "accepted", "running", "completed"]
    x = fac.job("X")
    assert x is not None and "command exited with 75" in x.history[2].detail


def test_submit_refuses_a_retry_policy_a_request_cannot_carry(fac: Facilitator) -> None:
    for retries, backoff in ((-1, 0.0), (100, 0.0), (1, -1.0), (1, float("inf")), (1, 86401.0)):
        with pytest.raises(ValueError, match="retr"):
            fac.submit("k", retries=retries, retry_backoff=backoff)
    with pytest.raises(TypeError, match="retries"):
        fac.submit("k", retries=1.5)  # type: ignore[arg-type]
    assert fac.jobs() == []


def test_the_http_api_takes_the_limits_and_the_retry_policy(fac: Facilitator) -> None:
    server = serve_facilitator(fac)
    try:
        body = {
            "kind": "k",
            "job_id": "h1",
            "time_limit": 5,
            "soft_time_limit": 2,
            "retries": 3,
            "retry_backoff": 1.5,
        }
        status, doc = http("POST", server.url + "/jobs", body)
        assert (status, doc) == (201, {"job_id": "h1"})
        stored = fac.store.job("h1")
        assert stored is not None
        request = msgspec.json.decode(stored[2], type=JobRequest)
        assert (request.soft_time_limit, request.time_limit) == (2.0, 5.0)
        assert (request.attempt, request.max_attempts, request.retry_backoff) == (1, 4, 1.5)
        for bad in (
            {"retries": 100},
            {"retries": "3"},
            {"time_limit": 0},
            {"soft_time_limit": 9, "time_limit": 3},
        ):
            status, doc = http("POST", server.url + "/jobs", {"kind": "k", **bad})
            assert status == 400 and ("retries" in doc["error"] or "time_limit" in doc["error"]), doc
        assert [r.job_id for r in fac.jobs()] == ["h1"]
    finally:
        server.stop()


def test_a_failure_racing_a_cancel_ends_the_job_instead_of_retrying(fac: Facilitator) -> None:
    """The worker fails the attempt before the cancel reaches it: the user asked for the job to
    stop, so no attempt follows (a protocol-level worker, to order the two exactly)."""
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        worker.connect()
        fac.submit("k", job_id="raced", retries=3, worker="w1")
        worker.wait_for(lambda: len(worker.store.received) == 1)
        worker.status("raced", JobStatus.ACCEPTED)
        assert fac.cancel("raced", "stop it")
        worker.publish(
            [JobStatusUpdate(job_id="raced", status=JobStatus.FAILED, at=1.0, detail="boom", retryable=True)]
        )
        worker.wait_for(worker.all_acked)
        wait_until(lambda: ended(fac, "raced"), 10)
        assert statuses(fac, "raced") == ["accepted", "failed"]
    finally:
        worker.disconnect()
