"""A worker whose network hangs (TcpProxy.stall: nothing forwarded, nothing closed) while the
facilitator has megabytes to send it: nobody else waits on its socket, it is dropped after the
heartbeat timeout, and a fresh connection of the same worker gets in. Real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobRequest, JobStatus
from jobrelay.testing.proxy import TcpProxy
from tests.facilitator_client import KEYS, TestWorker, make_facilitator, pump_until, wait_until

pytestmark = pytest.mark.timeout(30)

# 60 requests of 400 kB (~24 MB): far more than the loopback socket buffers between the
# facilitator and the stalled proxy hold, so the facilitator's send to w1 blocks for good.
BIG = [("k", "p" * 400_000, f"big-{i}") for i in range(60)]


@pytest.fixture
def made() -> Iterator[list[TestWorker | TcpProxy | Facilitator]]:
    things: list[TestWorker | TcpProxy | Facilitator] = []
    try:
        yield things
    finally:
        for thing in reversed(things):
            if isinstance(thing, TestWorker):
                thing.kill()
            elif isinstance(thing, TcpProxy):
                thing.stall(False)
                thing.stop()
            else:
                thing.stop()


def returns_within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn()'s result; AssertionError if it takes longer than ``seconds`` (it is left running)."""
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"did not return within {seconds}s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def connected(fac: Facilitator, worker_id: str) -> bool:
    return any(v.connected for v in fac.workers() if v.worker_id == worker_id)


def stalled_w1(tmp_path: Path, made: list[TestWorker | TcpProxy | Facilitator], **config: float) -> tuple[
    Facilitator, TcpProxy, TestWorker
]:  # fmt: skip
    fac = make_facilitator(tmp_path, **config)
    made.append(fac)
    proxy = TcpProxy(("127.0.0.1", fac.port)).start()
    made.append(proxy)
    w1 = TestWorker(proxy.url, "w1", KEYS["w1"])
    made.append(w1)
    w1.connect()
    proxy.stall()
    return fac, proxy, w1


def test_a_stalled_worker_blocks_nobody_and_is_dropped_after_the_heartbeat_timeout(
    tmp_path: Path, made: list[TestWorker | TcpProxy | Facilitator]
) -> None:
    fac, _, w1 = stalled_w1(tmp_path, made, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    stalled_at = time.monotonic()
    w2 = TestWorker(fac.url, "w2", KEYS["w2"])
    made.append(w2)
    w2.connect()

    # Durable, and nobody waits on w1 (the next test proves it against a 20 s timeout; the bounds
    # here leave a loaded machine room). w2 keeps talking meanwhile (its timeout is 1 s too).
    done: list[bool] = []
    submitter = threading.Thread(
        target=lambda: done.append(bool(fac.submit_many(BIG, worker="w1")) and fac.cancel("big-1", "no")),
        daemon=True,
    )
    submitter.start()
    pump_until([w2], lambda: bool(done), 5.0)
    assert done == [True]

    # w2's traffic flows both ways while the facilitator's writer to w1 is stuck.
    job = fac.submit("k", {"n": 1}, worker="w2")
    pump_until([w2], lambda: any(isinstance(b, JobRequest) for b in w2.store.received), 5.0)
    for status in (JobStatus.ACCEPTED, JobStatus.RUNNING, JobStatus.COMPLETED):
        w2.status(job, status)
    pump_until([w2], lambda: w2.all_acked() and getattr(fac.job(job), "status", None) == "completed", 5.0)

    # w1 is silent (its link hangs): dropped after heartbeat_timeout although a send is stuck,
    # and its handler thread ends (the stuck writer is aborted after the close grace).
    pump_until([w2], lambda: not connected(fac, "w1"), 8.0)
    assert 0.9 < time.monotonic() - stalled_at < 8.0
    assert fac.stats().heartbeat_timeouts == 1
    pump_until([w2], lambda: fac.stats().sessions_closed == 1, 5.0)
    assert connected(fac, "w2")

    # The same worker, back on a working network, gets in and receives everything once, in order.
    fresh = TestWorker(fac.url, "w1", KEYS["w1"], store=w1.store)
    made.append(fresh)
    fresh.connect()
    pump_until([fresh, w2], lambda: len(fresh.store.received) == len(BIG) + 1, 10.0)
    assert [b.job_id for b in fresh.store.received] == [j for _, _, j in BIG] + ["big-1"]
    assert fac.stats().heartbeat_timeouts == 1  # w2 was never affected


def test_a_fresh_connection_replaces_a_stuck_one_at_once(
    tmp_path: Path, made: list[TestWorker | TcpProxy | Facilitator]
) -> None:
    fac, _, w1 = stalled_w1(tmp_path, made)  # heartbeat_timeout 20 s: only the replacement ends it
    returns_within(5.0, lambda: fac.submit_many(BIG, worker="w1"))  # a wait on w1 would take 20 s
    pump_until([], lambda: fac.stats().frames_out >= 4, 5.0)  # the writer is sending (and stuck)

    fresh = TestWorker(fac.url, "w1", KEYS["w1"], store=w1.store)
    made.append(fresh)
    started = time.monotonic()
    fresh.connect(timeout=5.0)
    assert time.monotonic() - started < 5.0  # not the 20 s heartbeat timeout
    assert fac.stats().connections_replaced == 1
    fresh.wait_for(lambda: len(fresh.store.received) == len(BIG), 10.0)
    wait_until(lambda: fac.stats().sessions_closed == 1, 5.0)  # the stuck one was aborted
    assert connected(fac, "w1") and fac.stats().heartbeat_timeouts == 0
