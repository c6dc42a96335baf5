# The task side: a Celery task base class whose runs report to the jobrelay worker that dispatched
# them, and report() for progress from inside the task. Runs in Celery's worker processes.
# Invariants: a run appends events only after it took the task's claim (a second run of the same
# task id appends nothing and leaves the result backend alone: celery.exceptions.Ignore); the
# terminal event is appended before the run returns or raises, and before the lease is dropped;
# a run ended by a signal (revoke with terminate, a cold shutdown) appends no terminal event:
# the dispatching worker reads that ending from the result backend or the lost lease.
from __future__ import annotations

import contextvars
import os
import socket
import threading
from typing import Any, Final

import celery
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from loguru import logger

from jobrelay.actors.celery_backend.channel import Channel, Event, client_for
from jobrelay.protocol.messages import JobStatus

__all__ = ["DEFAULT_LEASE_SECONDS", "RelayedTask", "report"]

DEFAULT_LEASE_SECONDS: Final = 30.0
"""How long a run's lease lasts without renewal (renewed every third of it): after a Celery worker
dies whole, its jobs end ``failed: worker_lost`` about this long after. Set ``jobrelay_lease_seconds``
in the Celery app's config to change it."""

_current: contextvars.ContextVar[Channel | None] = contextvars.ContextVar("jobrelay_channel", default=None)


def report(*, progress: float | None = None, detail: str = "") -> None:
    """Report progress of the current job from inside a RelayedTask's run: the jobrelay worker
    relays it as a ``running`` status, in order, exactly once. Returns once Redis has it.

    Raises:
        ValueError: ``progress`` outside [0, 1].
        redis.RedisError: the event could not be stored (the task decides whether to go on).
    """
    event = Event(JobStatus.RUNNING, None if progress is None else float(progress), str(detail)[:2000])
    Event.parse(event.fields())  # the same check the relay makes: refuse it here, where it is made
    channel = _current.get()
    if channel is None:  # called outside a relayed run (a direct call, a test): nowhere to report
        logger.debug("report() outside a relayed Celery task: {}", event)
        return
    channel.append(event)


class _Lease(threading.Thread):
    """Keeps the run's lease alive while the task runs (a dead process stops renewing it)."""

    def __init__(self, channel: Channel, holder: str, seconds: float) -> None:
        super().__init__(name=f"jobrelay-lease-{channel.task_id}", daemon=True)
        self.channel, self.holder, self.seconds = channel, holder, seconds
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.seconds / 3):
            try:
                self.channel.renew(self.holder, self.seconds)
            except Exception as exc:  # a Redis hiccup: the next renewal may pass
                logger.warning("task {}: could not renew its lease: {}", self.channel.task_id, exc)


class RelayedTask(celery.Task):  # type: ignore[misc]
    """Base class of Celery tasks that run jobrelay jobs: ``@app.task(base=RelayedTask, name=…)``.

    The task gets the job's payload as its one argument. Its return value completes the job (its
    ``str`` is the detail); an exception fails it (retryable if it has a true ``retryable``
    attribute); SoftTimeLimitExceeded fails it as ``time_limit``. Celery's own retries
    (``self.retry``) do not apply: a job is retried per its own retry policy.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = getattr(self.request, "id", None)
        if task_id is None or getattr(self.request, "called_directly", True):
            return super().__call__(*args, **kwargs)
        conf = self.app.conf
        channel = Channel(client_for(conf.get("jobrelay_redis_url") or conf.broker_url), task_id)
        seconds = float(conf.get("jobrelay_lease_seconds") or DEFAULT_LEASE_SECONDS)
        holder = f"{self.request.hostname or socket.gethostname()} pid {os.getpid()}"
        if not channel.claim(holder, seconds):
            logger.warning(
                "task {}: refusing to run it again (held by {})", task_id, channel.holder() or "a cancel"
            )
            raise Ignore()  # no state update: the run that holds the claim owns the result
        lease = _Lease(channel, holder, seconds)
        lease.start()
        token = _current.set(channel)
        try:
            channel.append(Event(JobStatus.RUNNING, None, f"celery task {task_id} started on {holder}"))
            try:
                result = super().__call__(*args, **kwargs)
            except SoftTimeLimitExceeded:
                channel.append(Event(JobStatus.FAILED, None, "time_limit", True))
                raise
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:2000]
                retryable = getattr(exc, "retryable", False) is True
                channel.append(Event(JobStatus.FAILED, None, detail, retryable))
                raise
            channel.append(Event(JobStatus.COMPLETED, None, "" if result is None else str(result)[:2000]))
            return result
        finally:
            _current.reset(token)
            lease.done.set()
            channel.drop_lease()
