# The timers of retries waiting for their backoff, on the facilitator's event loop: when one is
# due, a store operation queues the job (unless a cancel ended it meanwhile) and routing is
# asked to run. Timers live in memory only: at start the facilitator releases every job left
# waiting (a restart shortens a backoff; it never loses a retry).
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from loguru import logger

from jobrelay.facilitator.retries import Retry, release_retries
from jobrelay.storage.errors import StorageError
from jobrelay.storage.retries import retrying_jobs

if TYPE_CHECKING:
    from jobrelay.facilitator.store import FacilitatorStore

__all__ = ["RetryTimers"]


class RetryTimers:
    """Releases retries to the queue when their backoff is over."""

    def __init__(
        self, store: FacilitatorStore, loop: asyncio.AbstractEventLoop, on_queued: Callable[[], None]
    ) -> None:
        self._store = store
        self._loop = loop
        self._on_queued = on_queued  # thread-safe: routes queued jobs soon

    def schedule(self, retries: Sequence[Retry]) -> None:
        """On the loop: release each job after its delay."""
        for retry in retries:
            self._loop.call_later(retry.delay, self._release, retry.job_id)

    def recover(self, timeout: float) -> int:
        """From another thread, at start: release every job left waiting; returns how many.

        Raises:
            StorageError, TimeoutError: the store could not list them.
        """
        waiting = self._store.queue_op("list retries", lambda s: retrying_jobs(s.db)).result(timeout)
        if waiting:
            logger.info("facilitator: {} jobs were waiting for a retry: queued now", len(waiting))
            self._loop.call_soon_threadsafe(self.schedule, [Retry(job_id, 0.0) for job_id in waiting])
        return len(waiting)

    def _release(self, job_id: str) -> None:
        try:
            future = self._store.queue_async("release a retry", lambda s: release_retries(s, [job_id]))
        except StorageError:
            return  # stopping: the next start releases it
        future.add_done_callback(self._released)

    def _released(self, future: asyncio.Future[list[str]]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.warning("facilitator: releasing a retry failed: {}", future.exception())
            return
        if future.result():
            self._on_queued()
