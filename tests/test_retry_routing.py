"""A retry is routed like a new job through placement (protocol v3 kinds and credit).

What a user relies on: the next attempt of a job goes only to a worker that announced its kind,
and only while that worker has credit left; with none it waits queued (still ``retrying``) and
starts as soon as credit comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import JobContext, RetryableError, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobRequest
from tests.facilitator_client import wait_until
from tests.facilitator_client import worker_config as shared_worker_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def worker_config(fac: Facilitator, tmp_path: Path, worker_id: str) -> WorkerConfig:
    return shared_worker_config(fac, tmp_path, worker_id, max_concurrent_jobs=1, prefetch=0)  # credit 1


def test_a_retry_goes_only_to_a_worker_of_its_kind_with_credit(fac: Facilitator, tmp_path: Path) -> None:
    started, fail_now, blocking, unblock = (threading.Event() for _ in range(4))
    other_ran: list[str] = []

    def flaky(job: JobRequest, ctx: JobContext) -> str:
        if job.attempt == 1:
            started.set()
            fail_now.wait(30)
            raise RetryableError("transient")
        return f"attempt {job.attempt}"

    def block(job: JobRequest, ctx: JobContext) -> None:
        blocking.set()
        unblock.wait(30)

    def other(job: JobRequest, ctx: JobContext) -> None:
        other_ran.append(job.job_id)

    try:
        with (
            start_worker(worker_config(fac, tmp_path, "w1"), {"flaky": flaky, "block": block}) as w1,
            start_worker(worker_config(fac, tmp_path, "w2"), {"other": other}) as w2,
        ):
            w1.wait_connected(10)
            w2.wait_connected(10)
            fac.submit("flaky", job_id="J", retries=1, retry_backoff=0.1)
            wait_until(started.is_set, 20)
            fac.submit("block", job_id="B", worker="w1")  # pinned: waits on w1 behind J
            fail_now.set()
            wait_until(blocking.is_set, 20)  # B holds w1's only credit now
            # w2 has credit but not the kind; w1 has the kind but no credit: the retry waits.
            time.sleep(1.0)
            view = fac.job("J")
            assert view is not None
            assert (view.record.status, view.record.peer) == (None, "")  # queued again, unrouted
            unblock.set()  # B ends: its credit takes the retry
            wait_until(lambda: (v := fac.job("J")) is not None and v.record.status == "completed", 30)
    finally:
        fail_now.set()
        unblock.set()
    view = fac.job("J")
    assert view is not None
    assert view.record.peer == "w1" and view.record.detail == "attempt 2"
    assert [e.status for e in view.history] == [
        "accepted",
        "running",
        "retrying",
        "accepted",
        "running",
        "completed",
    ]
    assert other_ran == []
    assert fac.stats().refused_updates == 0
