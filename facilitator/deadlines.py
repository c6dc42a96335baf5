# The loop's side of start deadlines: while jobs may wait for a worker, ask the store a few times a
# second to end those whose deadline passed (``failed: no_worker``; the store's side is queued.py).
# Invariants: runs on the event loop; at most one check is scheduled or running at a time; checks
# stop while nothing is queued (``active`` false) and resume with ``arm``.
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from loguru import logger

from jobrelay.facilitator.counters import Counters
from jobrelay.facilitator.events import EventBus
from jobrelay.facilitator.store import FacilitatorStore

__all__ = ["StartDeadlines"]

T = TypeVar("T")

_EVERY: Final = 0.25  # seconds between checks while jobs wait


class StartDeadlines:
    """Checks queued jobs' start deadlines every quarter second while ``active()``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: FacilitatorStore,
        default: float | None,
        counters: Counters,
        wait: Callable[[asyncio.Future[list[str]]], Awaitable[list[str]]],
        active: Callable[[], bool],
        events: EventBus | None = None,
    ) -> None:
        self._loop = loop
        self._store = store
        self._default = default  # schedule_to_start_timeout, also for jobs queued before a restart
        self._counters = counters
        self._wait = wait
        self._active = active
        self._events = events or EventBus()
        self._timer: asyncio.TimerHandle | None = None
        self._running = False

    def arm(self) -> None:
        """Check soon, if no check is pending and jobs may wait (on the loop)."""
        if self._timer is None and not self._running and self._active():
            self._timer = self._loop.call_later(_EVERY, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._running = True
        self._loop.create_task(self._check())

    async def _check(self) -> None:
        try:
            expired = await self._wait(self._store.expire(time.time(), self._default))
        except Exception as exc:
            logger.warning("facilitator: checking queued jobs' start deadlines failed: {}", exc)
        else:
            if expired:
                self._counters.add("jobs_no_worker", len(expired))
                for job_id in expired:
                    self._events.job_status(job_id, None, "failed", "no_worker")
                logger.warning(
                    "facilitator: {} job(s) found no worker for their kind in time: failed no_worker "
                    "(first: {})",
                    len(expired),
                    expired[0],
                )
        finally:
            self._running = False
        self.arm()
