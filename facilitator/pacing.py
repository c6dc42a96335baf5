# Pacing on the facilitator's loop: handshake slots handed out newest waiter first, the fleet
# size heartbeats are budgeted for, and per-connection log lines summarised in a storm (and per
# source for peers without a key).
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from loguru import logger

__all__ = ["Chatter", "NewestFirst", "RecentPeak"]

_LOG_EVERY: Final = 60.0  # the window of Chatter's per-source line budget


class NewestFirst:
    """Handshake slots handed out newest waiter first. Under overload a waiter's worker gives up
    after its own handshake timeout; serving the newest first serves workers that still wait,
    where first-come-first-served would spend every slot on workers already gone (and their
    retries would queue behind more of them: a storm that feeds itself)."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise
        finally:
            self.waiting -= 1

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class RecentPeak:
    """The most connections held within the last ``memory`` seconds: the fleet a new session's
    heartbeat interval is budgeted for (``heartbeat_rate``). A session keeps its interval until it
    reconnects, so after a mass cut (a reconnect storm, a network blip) sizing each returning
    session by the count at its own welcome would give the first thousands the short interval of
    a small fleet for as long as they stay, and the load would exceed the budget once all are
    back. A fleet that really shrank is budgeted for its new size after ``memory``. ``clock`` is
    injected for tests."""

    def __init__(self, memory: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.memory = memory
        self._clock = clock
        self._peak = 0
        self._at = 0.0

    def observe(self, count: int) -> int:
        """Note ``count`` connections held now; the fleet size to budget for."""
        now = self._clock()
        if count >= self._peak or now - self._at > self.memory:
            self._peak, self._at = count, now
        return self._peak


class Chatter:
    """Per-connection lines (connected, disconnected) one by one while they are few; in a storm
    at most ``per_second`` of each kind a second, and one summary line for the rest, so ten
    thousand reconnecting workers cost neither the loop its time nor the operator the log.
    Lines anyone can cause without a key (refused handshakes) also name their ``source``: at
    most ``per_source`` of those per remote address a minute, so one address cannot flood the
    log or crowd out the lines of others."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_second: int = 20, per_source: int = 5) -> None:
        self._loop = loop
        self._per_second = per_second
        self._per_source = per_source
        self._second = 0
        self._seen: dict[str, int] = {}
        self._sources: dict[str, tuple[float, int]] = {}  # address → (its minute's start, lines)
        self._left_out: dict[str, int] = {}
        self._summary: asyncio.TimerHandle | None = None

    def allow(self, kind: str, source: str = "") -> bool:
        """True when a line of ``kind`` (from ``source``, if given) may be logged now; otherwise
        it is counted."""
        now = time.monotonic()
        second = int(now)
        if second != self._second:
            self._second, self._seen = second, {}
        if source:
            start, lines = self._sources.get(source, (now, 0))
            if now - start >= _LOG_EVERY:
                start, lines = now, 0
            if len(self._sources) > 10_000:
                self._sources.clear()  # bounded: a flood of addresses only logs more
            self._sources[source] = (start, lines + 1)
            if lines >= self._per_source:
                return self._leave_out(kind)
        seen = self._seen[kind] = self._seen.get(kind, 0) + 1
        if seen <= self._per_second:
            return True
        return self._leave_out(kind)

    def _leave_out(self, kind: str) -> bool:
        self._left_out[kind] = self._left_out.get(kind, 0) + 1
        if self._summary is None:
            self._summary = self._loop.call_later(1.0, self._summarise)
        return False

    def _summarise(self) -> None:
        self._summary = None
        left_out, self._left_out = self._left_out, {}
        if left_out:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(left_out.items()))
            logger.info("facilitator: also {} in the last second (not logged one by one)", counts)
