# Handing the store thread's results to whoever waits: a concurrent future (a caller's thread)
# is set at once; asyncio futures are settled on their own loop's thread, all of one group's in
# one wake-up per loop (ten thousand connections share the store cheaply).
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

__all__ = ["Outcome", "release"]

Outcome = tuple["Future[Any] | asyncio.Future[Any]", Any, "BaseException | None"]
"""A future, the value it gets (when no error) and the error it gets (or None)."""


def release(outcomes: Iterable[Outcome]) -> None:
    """Give each future its value or error (safe from any thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for future, value, error in outcomes:
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, value, error))
        else:
            _set(future, value, error)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[Outcome]) -> None:
    for future, value, error in items:
        if not future.done():  # done: its waiter was cancelled
            _set(future, value, error)


def _set(future: Future[Any] | asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
