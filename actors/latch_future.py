# A pykka Future for the publish path: resolved once, by one thread (the Outbox's), read by any.
# It waits on a lock held from creation and released by set() (a latch) instead of
# ThreadingFuture's Condition, whose construction alone was a fifth of the CPU of a publish()
# (scripts/bench_publish.py under py-spy: Condition.__init__ and RLock, 25 % of GIL time).
# Invariants: a result is set at most once (a second set raises queue.Full, as ThreadingFuture
# does) and only by one thread; get() returns at once after that; any number of threads may
# get(); map/filter/join/await work through pykka.Future's get hooks.
from __future__ import annotations

import queue
import sys
import threading
import types
from typing import Any, TypeVar

import pykka

__all__ = ["LatchFuture"]

T = TypeVar("T")

_ExcInfo = tuple[type[BaseException], BaseException, types.TracebackType | None]


class LatchFuture(pykka.Future[T]):
    """A ``pykka.Future`` as cheap to make as a lock."""

    def __init__(self) -> None:
        super().__init__()
        self._latch = threading.Lock()
        self._latch.acquire()
        self._result: tuple[Any, _ExcInfo | None] | None = None

    def get(self, *, timeout: float | None = None) -> Any:
        try:
            return super().get(timeout=timeout)  # a get hook (map, filter, join...)
        except NotImplementedError:
            pass
        result = self._result
        if result is None:
            wait = -1 if timeout is None else max(timeout, 0.0)
            if not self._latch.acquire(timeout=wait):
                raise pykka.Timeout(f"{timeout} seconds")
            self._latch.release()  # open for every other reader
            result = self._result
            assert result is not None
        value, exc_info = result
        if exc_info is not None:
            _, exc_value, exc_traceback = exc_info
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return value

    def set(self, value: Any = None) -> None:
        self._resolve((value, None))

    def set_exception(self, exc_info: Any = None) -> None:
        info: Any = exc_info if exc_info is not None else sys.exc_info()
        if info[1] is None:  # an exception class: raise an instance of it
            info = (info[0], info[0](), info[2])
        self._resolve((None, info))

    def _resolve(self, result: tuple[Any, _ExcInfo | None]) -> None:
        if self._result is not None or self._get_hook is not None:
            raise queue.Full
        self._result = result
        self._latch.release()
