"""Jobs reach the workers that can take them, and no wake-up is lost: a worker whose session
closed is no longer eligible at once (not when its socket finally closes), and a job committed
after its submit timed out (a slow store) is still sent. Real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobrelay.facilitator.store import FacilitatorStore
from tests.facilitator_client import KEYS, TestWorker, make_facilitator, pump_until, wait_until

pytestmark = pytest.mark.timeout(30)


def test_a_timed_out_worker_is_not_routed_new_jobs(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, heartbeat_interval=0.2, heartbeat_timeout=0.6)
    w1 = TestWorker(fac.url, "w1", KEYS["w1"])
    w2 = TestWorker(fac.url, "w2", KEYS["w2"])
    try:
        w1.connect()
        w2.connect()
        # w1 goes silent (no frames, does not answer the close): its session closes with 4002.
        pump_until([w2], lambda: fac.stats().heartbeat_timeouts == 1, timeout=5)
        assert fac.hub.eligible() == ["w2"]
        job = fac.submit("k")
        assert fac.job(job).record.peer == "w2"  # not w1, although it is the least busy by id
    finally:
        w1.disconnect()
        w2.disconnect()
        fac.stop()


def test_a_job_committed_after_its_submit_timed_out_reaches_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fac = make_facilitator(tmp_path)
    w1 = TestWorker(fac.url, "w1", KEYS["w1"])
    call = FacilitatorStore._call
    try:
        w1.connect()
        stalled, resume = threading.Event(), threading.Event()

        def stall(_: Any) -> None:
            stalled.set()
            resume.wait(10)

        threading.Thread(target=call, args=(fac.store, "stall", stall, 15.0), daemon=True).start()
        assert stalled.wait(5)

        def short_call(self: FacilitatorStore, name: str, fn: Callable[..., Any], timeout: float = 30.0,
                       on_late: Callable[[Any], object] | None = None) -> Any:  # fmt: skip
            return call(self, name, fn, 0.2, on_late)

        with monkeypatch.context() as patch:
            patch.setattr(FacilitatorStore, "_call", short_call)
            with pytest.raises(TimeoutError):
                fac.submit("k", job_id="B", worker="w1")  # the store is slow, not gone
        resume.set()
        wait_until(lambda: fac.job("B") is not None)  # committed after all
        assert fac.submit("k", job_id="B", worker="w1") == "B"  # the caller's retry: idempotent
        w1.wait_for(lambda: [getattr(b, "job_id", "") for b in w1.store.received] == ["B"], timeout=5)
    finally:
        resume.set()
        w1.disconnect()
        fac.stop()
