"""ElasticExecutor: bounded threads that end when idle (after ``linger``), nothing run twice or
stranded. The HTTP servers and both ends' call handlers run their blocking work on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from jobrelay.common.elastic import ElasticExecutor

pytestmark = pytest.mark.timeout(30)


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _threads_named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_a_lingering_thread_takes_the_next_calls_and_ends_when_idle() -> None:
    pool = ElasticExecutor(4, "elastic-linger", linger=0.3)
    try:
        for i in range(50):  # one after the other: the lingering thread takes each
            assert pool.submit(lambda i=i: i * 2).result(5) == i * 2
            assert pool.threads == 1
        _wait_until(lambda: pool.threads == 0 and _threads_named("elastic-linger") == 0)
    finally:
        pool.shutdown()


def test_without_linger_a_thread_ends_as_soon_as_the_queue_is_empty() -> None:
    pool = ElasticExecutor(4, "elastic-now")
    try:
        assert pool.submit(lambda: "done").result(5) == "done"
        _wait_until(lambda: pool.threads == 0 and _threads_named("elastic-now") == 0)
    finally:
        pool.shutdown()


def test_a_burst_runs_each_call_once_on_at_most_max_threads_then_all_end() -> None:
    pool = ElasticExecutor(3, "elastic-burst", linger=0.2)
    gate = threading.Event()
    running, most, ran = [0], [0], []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(5)
        with lock:
            running[0] -= 1
            ran.append(i)
        return i

    try:
        futures = [pool.submit(work, i) for i in range(40)]
        _wait_until(lambda: running[0] == 3)
        assert pool.threads == 3
        gate.set()
        assert [f.result(5) for f in futures] == list(range(40))
        assert sorted(ran) == list(range(40)) and most[0] == 3
        _wait_until(lambda: pool.threads == 0 and _threads_named("elastic-burst") == 0)
    finally:
        pool.shutdown()


def test_shutdown_ends_lingering_threads_and_refuses_new_calls() -> None:
    pool = ElasticExecutor(2, "elastic-stop", linger=60.0)
    assert pool.submit(lambda: 1).result(5) == 1
    assert pool.threads == 1  # lingering, for up to a minute
    pool.shutdown()
    _wait_until(lambda: pool.threads == 0)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: 2)


def test_calls_submitted_from_many_threads_all_run_once() -> None:
    pool = ElasticExecutor(4, "elastic-many", linger=0.05)
    results: list[int] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        with lock:
            results.append(i)

    def submitter(base: int) -> None:
        for i in range(500):
            pool.submit(add, base + i).result(5)

    try:
        threads = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == sorted(k * 1000 + i for k in range(6) for i in range(500))
        assert pool.threads <= 4
        _wait_until(lambda: pool.threads == 0)
    finally:
        pool.shutdown()


def test_shutdown_with_wait_returns_once_every_call_taken_has_run() -> None:
    pool = ElasticExecutor(2, "elastic-wait")
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 5) for _ in range(4)]
    releaser = threading.Timer(0.2, gate.set)
    releaser.start()
    try:
        pool.shutdown(wait=True)
        assert all(f.done() for f in futures) and pool.threads == 0
    finally:
        releaser.cancel()
        gate.set()


def test_a_thread_that_cannot_start_fails_its_call_instead_of_stranding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = ElasticExecutor(2, "elastic-nothread")

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    future = pool.submit(lambda: 1)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        future.result(1)
    assert pool.threads == 0
    monkeypatch.undo()
    assert pool.submit(lambda: 2).result(5) == 2  # threads can be had again: calls run
    pool.shutdown()
