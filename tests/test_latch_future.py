"""LatchFuture, the future publish() returns: the pykka.Future contract callers rely on."""

from __future__ import annotations

import queue
import threading

import pykka
import pytest

from jobrelay.actors.latch_future import LatchFuture


def test_a_value_set_by_another_thread_reaches_every_reader() -> None:
    future: LatchFuture[int] = LatchFuture()
    got: list[int] = []
    readers = [threading.Thread(target=lambda: got.append(future.get(timeout=10))) for _ in range(4)]
    for reader in readers:
        reader.start()
    future.set(7)
    for reader in readers:
        reader.join(10)
    assert got == [7, 7, 7, 7]
    assert future.get(timeout=0) == 7  # resolved: no wait, any number of times


def test_get_times_out_while_unresolved() -> None:
    future: LatchFuture[int] = LatchFuture()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.01)
    future.set(1)
    assert future.get(timeout=0) == 1


def test_an_exception_is_raised_by_get_and_a_second_result_is_refused() -> None:
    future: LatchFuture[int] = LatchFuture()
    error = ValueError("no room")
    future.set_exception(exc_info=(ValueError, error, None))
    for _ in range(2):
        with pytest.raises(ValueError, match="no room"):
            future.get(timeout=0)
    with pytest.raises(queue.Full):
        future.set(1)
    with pytest.raises(queue.Full):
        future.set_exception(exc_info=(ValueError, error, None))


def test_set_exception_from_an_except_block_and_from_a_class() -> None:
    inside: LatchFuture[int] = LatchFuture()
    empty: dict[str, int] = {}
    try:
        empty["k"]
    except KeyError:
        inside.set_exception()
    with pytest.raises(KeyError):
        inside.get(timeout=0)
    bare: LatchFuture[int] = LatchFuture()
    bare.set_exception(exc_info=(RuntimeError, None, None))
    with pytest.raises(RuntimeError):
        bare.get(timeout=0)


def test_map_join_and_get_all_work_as_with_pykka_futures() -> None:
    a: LatchFuture[int] = LatchFuture()
    b: LatchFuture[int] = LatchFuture()
    doubled = a.map(lambda x: x * 2)
    both = a.join(b)
    a.set(3)
    b.set(4)
    assert doubled.get(timeout=1) == 6
    assert both.get(timeout=1) == [3, 4]
    assert list(pykka.get_all([a, b], timeout=1)) == [3, 4]
