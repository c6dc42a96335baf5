"""A job submitted for one worker (``submit --worker``) stays that worker's: its retry and, when
that worker drains, its hand-back wait for it, even while another worker of the kind has room
(before: both were routed like any queued job, so a pinned job could run its retry elsewhere)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import JobContext, RetryableError, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobRequest
from tests.facilitator_client import wait_until, worker_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def config(fac: Facilitator, tmp_path: Path, worker_id: str, **changes: object) -> WorkerConfig:
    return worker_config(fac, tmp_path, worker_id, **{"max_concurrent_jobs": 1, "prefetch": 0, **changes})


def statuses(fac: Facilitator, job_id: str) -> list[str]:
    view = fac.job(job_id)
    return [] if view is None else [h.status for h in view.history]


def test_a_pinned_jobs_retry_waits_for_its_worker_although_another_has_room(
    fac: Facilitator, tmp_path: Path
) -> None:
    attempts: list[tuple[str, int]] = []
    busy, release_busy = threading.Event(), threading.Event()

    def flaky(name: str):  # type: ignore[no-untyped-def]
        def run(job: JobRequest, ctx: JobContext) -> None:
            attempts.append((name, job.attempt))
            if job.attempt == 1:
                raise RetryableError("transient")

        return run

    def block(job: JobRequest, ctx: JobContext) -> None:
        busy.set()
        release_busy.wait(30)

    try:
        with (
            start_worker(config(fac, tmp_path, "w1"), {"flaky": flaky("w1"), "block": block}) as w1,
            start_worker(config(fac, tmp_path, "w2", max_concurrent_jobs=4), {"flaky": flaky("w2")}) as w2,
        ):
            w1.wait_connected(10)
            w2.wait_connected(10)
            fac.submit("block", job_id="B")  # w1's only credit...
            wait_until(busy.is_set, 20)
            fac.submit("flaky", job_id="P", worker="w1", retries=1, retry_backoff=0.05)  # ...pinned anyway
            # Attempt 1 waits behind B on w1: B ends, P fails, its retry must come back to w1
            # (w2 runs `flaky` and has the most credit left: an unpinned retry goes there).
            release_busy.set()
            wait_until(lambda: "completed" in statuses(fac, "P"), 30)
    finally:
        release_busy.set()
    assert attempts == [("w1", 1), ("w1", 2)]
    view = fac.job("P")
    assert view is not None and view.record.peer == "w1"


def test_a_pinned_job_handed_back_by_a_draining_worker_waits_for_it(fac: Facilitator, tmp_path: Path) -> None:
    ran: list[tuple[str, str]] = []
    busy, release_busy = threading.Event(), threading.Event()

    def work(name: str):  # type: ignore[no-untyped-def]
        def run(job: JobRequest, ctx: JobContext) -> None:
            ran.append((name, job.job_id))
            if job.job_id == "B":
                busy.set()
                release_busy.wait(30)

        return run

    cfg1 = config(fac, tmp_path, "w1", drain_timeout=10.0)
    w2 = start_worker(config(fac, tmp_path, "w2"), {"k": work("w2")})
    try:
        with start_worker(cfg1, {"k": work("w1")}) as w1:
            w1.wait_connected(10)
            w2.wait_connected(10)
            fac.submit("k", job_id="B", worker="w1")
            wait_until(busy.is_set, 20)
            fac.submit("k", job_id="P", worker="w1")  # queued at w1 behind B
            wait_until(lambda: statuses(fac, "P") == ["accepted"], 20)
            stopper = threading.Thread(target=w1.stop, daemon=True)
            stopper.start()  # drains: P is handed back, B finishes
            wait_until(lambda: "released" in statuses(fac, "P"), 20)
            release_busy.set()
            stopper.join(30)
        view = fac.job("P")
        assert view is not None and (view.record.peer, view.record.status) == ("", "released")
        assert ("w2", "P") not in ran  # w2 runs `k` and is idle: P waits for w1 all the same
        with start_worker(cfg1, {"k": work("w1")}) as again:
            again.wait_connected(10)
            wait_until(lambda: "completed" in statuses(fac, "P"), 30)
    finally:
        release_busy.set()
        w2.stop(5)
    assert ran.count(("w1", "P")) == 1 and ("w2", "P") not in ran
