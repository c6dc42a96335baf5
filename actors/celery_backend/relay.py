# Relaying one Celery task's events to the jobrelay Outbox, from the position recorded in the
# worker's database, until the job's one ending. Runs in the job's thread.
# Invariants: an event is relayed only as a durable status whose publish carries its stream
# position (one transaction: storage.Dispatches.advance), so after any crash the relay resumes
# right after the last relayed event, nothing twice; the ending is the task's terminal event when
# there is one. Without one, the result backend and the claim decide, read BEFORE one last read of
# the stream (the task appends its terminal event before Celery stores its state and before the
# lease goes): FAILURE with WorkerLostError or a claim whose lease expired → failed: worker_lost
# (retryable); TimeLimitExceeded → failed: time_limit; REVOKED → cancelled.
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from jobrelay.actors.celery_backend.channel import CANCELLED_HOLDER, Event
from jobrelay.actors.handlers import JobCancelled, JobContext, JobDetached, JobFailed
from jobrelay.actors.job_limits import TimeLimitExceeded
from jobrelay.protocol.messages import JobStatus

if TYPE_CHECKING:
    from jobrelay.actors.celery_backend.backend import CeleryBackend

__all__ = ["WORKER_LOST", "Relay"]

WORKER_LOST = "worker_lost"
_BLOCK_MS = 200  # longest wait on the stream: how soon a cancel or a stop is noticed
_READ_COUNT = 100  # entries per read
_TIME_LIMITS = ("TimeLimitExceeded", "SoftTimeLimitExceeded")


def _exception_name(result: Any) -> str:
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, dict):  # a result backend that could not rebuild the exception
        return str(result.get("exc_type", "Exception"))
    return "Exception"


class Relay:
    """Relays the events of ``task_id`` for ``ctx``'s job, after ``position``."""

    def __init__(
        self,
        backend: CeleryBackend,
        ctx: JobContext,
        task_id: str,
        position: str,
        cancel_grace: float,
        poll: float,
    ) -> None:
        self.backend = backend
        self.ctx = ctx
        self.task_id = task_id
        self.position = position
        self.channel = backend.channel(task_id)
        self._cancel_grace = cancel_grace
        self._poll = poll
        self._caught_up = False  # the last _pump read the stream and relayed all it held

    def run(self) -> str:
        """Relay until the task's ending: returns the completion detail, or raises JobFailed,
        TimeLimitExceeded, JobCancelled, or JobDetached when the worker stops first."""
        ctx = self.ctx
        cancel_by: float | None = None
        next_check = time.monotonic() + self._poll
        while True:
            if ctx.cancelled and cancel_by is None:
                if ctx.worker_stopping:
                    raise JobDetached(self.task_id)
                cancel_by = self._cancel()
                next_check = time.monotonic()
            ending = self._pump(min(_BLOCK_MS, int(self._poll * 1000)))
            if ending is not None:
                return self._end(ending)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + self._poll
                ended = self._check()
                if ended is not None:
                    return ended
            if cancel_by is not None and now >= cancel_by:
                grace = self._cancel_grace
                logger.warning("celery task {}: no ending {} s after its revoke", self.task_id, grace)
                raise JobCancelled(ctx.cancel_reason)

    def _pump(self, block_ms: int | None) -> Event | None:
        """Relay what the stream holds after our position; the terminal event if it came."""
        self._caught_up = False
        try:
            entries = self.channel.read(self.position, block_ms=block_ms, count=_READ_COUNT)
        except Exception as exc:  # Redis away: the events wait there (or in its restart)
            logger.warning("celery task {}: cannot read its events: {}", self.task_id, exc)
            self.ctx.wait_cancelled(self._poll)
            return None
        for entry_id, fields in entries:
            try:
                event = Event.parse(fields)
            except ValueError as exc:
                logger.error("celery task {}: ignoring a bad event {}: {}", self.task_id, entry_id, exc)
                self.position = entry_id  # in memory only: after a restart it is skipped again
                continue
            if event.status.terminal:
                return event
            try:
                mark = (self.ctx.job.job_id, self.task_id, entry_id)
                self.ctx.update(JobStatus.RUNNING, progress=event.progress, detail=event.detail, mark=mark)
            except Exception as exc:  # not durable: relayed again from the recorded position
                logger.error("celery task {}: could not relay event {}: {}", self.task_id, entry_id, exc)
                self.ctx.wait_cancelled(self._poll)
                return None
            self.position = entry_id
            self.ctx.count("celery_relayed")
        self._caught_up = len(entries) < _READ_COUNT  # else more may wait behind them
        return None

    def _check(self) -> str | None:
        """The ending when the stream has none: from the result backend or the claim."""
        try:
            state, result = self.backend.task_state(self.task_id)
            holder, leased = self.channel.holder_and_lease()
        except Exception as exc:
            logger.warning("celery task {}: cannot read its state: {}", self.task_id, exc)
            return None
        ending = self._pump(None)  # read after the facts: a terminal event written before them
        if ending is not None:
            return self._end(ending)
        if not self._caught_up:  # events not yet relayed: no ending may overtake them
            return None
        if state == "REVOKED" or holder == CANCELLED_HOLDER:
            raise JobCancelled(self.ctx.cancel_reason or "revoked")
        if state == "FAILURE":
            name = _exception_name(result)
            logger.warning("celery task {} ended without an event: {} {}", self.task_id, name, result)
            if name in _TIME_LIMITS:
                raise TimeLimitExceeded
            if name == "WorkerLostError":
                raise JobFailed(WORKER_LOST, retryable=True)
            raise JobFailed(f"{name}: {result}"[:2000])
        if state == "SUCCESS" and holder is None:  # not a RelayedTask: no claim, no events
            return "" if result is None else str(result)[:2000]
        if holder is not None and not leased:
            logger.warning("celery task {}: its run ({}) stopped renewing its lease", self.task_id, holder)
            raise JobFailed(WORKER_LOST, retryable=True)
        return None

    def _end(self, event: Event) -> str:
        if event.status is JobStatus.COMPLETED:
            return event.detail
        if event.status is JobStatus.CANCELLED:
            raise JobCancelled(event.detail or self.ctx.cancel_reason)
        raise JobFailed(event.detail or "failed", retryable=event.retryable)

    def _cancel(self) -> float:
        """Cancel the task: before it starts, by taking its claim (no run will start); once it
        runs, by revoke(terminate=True). When to give up waiting for its ending."""
        try:
            before_start = self.channel.claim_for_cancel()
            logger.info("celery task {}: revoking it (started: {})", self.task_id, not before_start)
            # Before the start: only its message is dropped (no run can take the claim now).
            self.backend.revoke(self.task_id, terminate=not before_start)
        except Exception as exc:
            logger.warning("celery task {}: could not revoke it: {}", self.task_id, exc)
            before_start = False
        if before_start:
            raise JobCancelled(self.ctx.cancel_reason)
        return time.monotonic() + self._cancel_grace
