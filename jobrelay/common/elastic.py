# A thread pool that gives its threads back: at most ``max_threads`` run at once, and a thread ends
# as soon as the queue is empty. Calls (both ends) run their handlers here, so a burst of requests
# leaves no idle threads behind (a process's thread count returns to its baseline, which the
# fuzz and soak runs check).
# Invariants: every submitted call runs exactly once (unless shut down first: then its future is
# cancelled); no item is stranded (a thread leaves only while holding the lock over an empty queue).
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

    def __init__(self, max_threads: int, name: str) -> None:
        self._max = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._queue: deque[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            deque()
        )
        self._threads = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Raises:
        RuntimeError: after ``shutdown``.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        call = (lambda: fn(*args, **kwargs)) if kwargs else None
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self._name}: submit after shutdown")
            self._queue.append((future, call or fn, () if call else args))
            start = self._threads < self._max
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for future, _, _ in dropped:
            future.cancel()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._threads -= 1
                    return
                future, fn, args = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the future's owner, as ThreadPoolExecutor does
                future.set_exception(exc)
