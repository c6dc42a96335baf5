# A thread pool that gives its threads back: at most ``max_threads`` run at once, and a thread ends
# once the queue has been empty for ``linger`` seconds (0: at once). Calls (both ends) and the HTTP
# servers run their blocking work here, so a burst of requests leaves no idle threads behind (a
# process's thread count returns to its baseline, which the fuzz and soak runs check), while a
# steady stream of requests reuses lingering threads instead of starting one per request.
# Invariants: every submitted call runs exactly once (unless shut down first: then its future is
# cancelled); no item is stranded: a thread leaves only while holding the lock over an empty queue,
# and a new item starts a thread unless enough idle threads are waiting to take every queued item.
from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ElasticExecutor"]

T = TypeVar("T")
_Item = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class ElasticExecutor(concurrent.futures.Executor):
    """``submit`` runs ``fn(*args)`` in one of at most ``max_threads`` short-lived threads."""

    def __init__(self, max_threads: int, name: str, linger: float = 0.0) -> None:
        self._max = max_threads
        self._name = name
        self._linger = linger
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Item] = deque()
        self._threads = 0
        self._idle = 0  # threads waiting (at most ``linger``) for an item
        self._shutdown = False

    @property
    def threads(self) -> int:
        """Threads alive now (running an item or lingering)."""
        return self._threads

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Raises:
        RuntimeError: after ``shutdown``.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        call = (lambda: fn(*args, **kwargs)) if kwargs else None
        with self._cond:
            if self._shutdown:
                raise RuntimeError(f"{self._name}: submit after shutdown")
            self._queue.append((future, call or fn, () if call else args))
            start = self._idle < len(self._queue) and self._threads < self._max
            if start:
                self._threads += 1
            elif self._idle:
                self._cond.notify()
        if start:
            try:
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
            except RuntimeError as exc:  # no thread to be had: the call fails, nothing is stranded
                with self._cond:
                    self._threads -= 1
                    stranded = self._idle < len(self._queue) and self._threads == 0
                    if stranded:
                        self._queue.remove(next(i for i in self._queue if i[0] is future))
                if stranded:
                    future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            self._cond.notify_all()  # lingering threads leave now
        for future, _, _ in dropped:
            future.cancel()
        if wait:  # as ThreadPoolExecutor: until every call taken has run
            with self._cond:
                self._cond.wait_for(lambda: self._threads == 0)

    def _next(self) -> _Item | None:
        """The next item, waiting up to ``linger`` for one; None: this thread leaves."""
        with self._cond:
            if not self._queue and self._linger > 0 and not self._shutdown:
                self._idle += 1
                self._cond.wait_for(lambda: self._queue or self._shutdown, self._linger)
                self._idle -= 1
            if not self._queue:
                self._threads -= 1
                self._cond.notify_all()  # a shutdown(wait=True) may be waiting for the last one
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the future's owner, as ThreadPoolExecutor does
                future.set_exception(exc)
