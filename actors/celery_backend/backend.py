# The worker's side of the Celery backend: job kinds mapped to Celery tasks by name. A CeleryHandler
# is an ordinary handler to the JobRouter; for each job it records the dispatch, sends the task
# (effectively once), then relays the task's events (actors/celery_backend/relay.py).
# Invariants (the order of a new dispatch): the job's `running` status and its dispatch row (task
# id = job id, per attempt) become durable in one commit, then the task is sent. A crash between
# the steps is resumed at the next start from what is durable: no row → dispatch now (nothing
# was sent); a row whose task has not started (its claim is free) → send again with the same task
# id (of two messages the first run takes the claim, the other does nothing); a started task →
# only re-attach.
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import celery
from loguru import logger

from jobrelay.actors.celery_backend.channel import Channel, client_for, task_id_of
from jobrelay.actors.celery_backend.relay import Relay
from jobrelay.actors.handlers import JobContext, JobFailed
from jobrelay.actors.job_limits import Limits, limits_for
from jobrelay.protocol.messages import JobRequest, JobStatus
from jobrelay.protocol.time_limits import check_time_limits
from jobrelay.storage.dispatch import START

__all__ = ["BACKEND", "CeleryBackend", "CeleryHandler", "celery_task"]

BACKEND = "celery"

_backends: dict[tuple[str, str], CeleryBackend] = {}
_backends_lock = threading.Lock()


class CeleryBackend:
    """A Celery cluster reached through ``broker`` (a Redis URL), results in ``result_backend``
    (default: the broker), the relay channel in ``redis_url`` (default: the broker).

    One per cluster: the handlers of every kind it runs share its Celery app and Redis pool.
    """

    def __init__(
        self,
        broker: str,
        *,
        result_backend: str | None = None,
        redis_url: str | None = None,
        app: celery.Celery | None = None,
    ) -> None:
        if not broker.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"the Celery backend needs a Redis broker URL (redis://…), got {broker!r}")
        self.broker = broker
        self.redis_url = redis_url or broker
        self.app = app or celery.Celery("jobrelay", broker=broker, backend=result_backend or broker)
        self.app.conf.broker_connection_retry_on_startup = True
        self._lock = threading.Lock()
        self._running = 0

    @classmethod
    def shared(cls, broker: str, result_backend: str | None = None) -> CeleryBackend:
        """The process's backend for ``broker`` (made on first use)."""
        key = (broker, result_backend or broker)
        with _backends_lock:
            found = _backends.get(key)
            if found is None:
                found = _backends[key] = cls(broker, result_backend=result_backend)
            return found

    def channel(self, task_id: str) -> Channel:
        return Channel(client_for(self.redis_url), task_id)

    def send(self, name: str, job: JobRequest, task_id: str, limits: Limits, queue: str | None) -> None:
        """Send the task message (the caller recorded the dispatch first)."""
        options: dict[str, Any] = {"task_id": task_id}
        if limits.soft is not None:
            options["soft_time_limit"] = limits.soft
        if limits.hard is not None:
            options["time_limit"] = limits.hard
        if queue is not None:
            options["queue"] = queue
        self.app.send_task(name, args=(job.payload,), **options)

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        self.app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")

    def task_state(self, task_id: str) -> tuple[str, Any]:
        """``(state, result)`` from the result backend (PENDING until a worker records one)."""
        meta = self.app.backend.get_task_meta(task_id, cache=False)
        return str(meta.get("status", "PENDING")), meta.get("result")

    def running(self, delta: int) -> int:
        with self._lock:
            self._running += delta
            return self._running


@dataclass(frozen=True, kw_only=True)
class _Options:
    queue: str | None
    cancel_grace: float
    poll: float


class CeleryHandler:
    """Runs a job kind as the Celery task ``name`` (a RelayedTask), relaying its statuses.

    Time limits (the job's own, else ``soft_time_limit``/``time_limit`` here) become the task's
    Celery soft and hard limits. Cancel revokes the task (``terminate=True`` once it runs).
    """

    resumable = True  # re-attached at the next start, never failed as worker_restarted
    announces_running = True  # `running` is reported when the task is dispatched, not again
    own_time_limits = True  # Celery enforces them; run_handler does not watch the clock
    concurrency = None

    def __init__(
        self,
        name: str,
        backend: CeleryBackend,
        *,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        queue: str | None = None,
        cancel_grace: float = 10.0,
        poll: float = 0.5,
    ) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"a Celery task name, e.g. media.encode, got {name!r}")
        check_time_limits(soft_time_limit, time_limit)
        if not cancel_grace >= 0 or not poll > 0:
            raise ValueError("cancel_grace must be >= 0 and poll > 0 seconds")
        self.name = name
        self.backend = backend
        self.time_limits = Limits(soft_time_limit, time_limit)
        self._options = _Options(queue=queue, cancel_grace=cancel_grace, poll=poll)

    def __repr__(self) -> str:
        return f"<CeleryHandler {self.name} via {self.backend.broker}>"

    def __call__(self, job: JobRequest, ctx: JobContext) -> str:
        task_id = task_id_of(job)
        with logger.contextualize(celery_task=task_id):
            position = self._dispatch(job, ctx, task_id)
            running = self.backend.running(+1)
            ctx.gauge("celery_running", running)
            try:
                opts = self._options
                return Relay(self.backend, ctx, task_id, position, opts.cancel_grace, opts.poll).run()
            finally:
                ctx.gauge("celery_running", self.backend.running(-1))

    def cancel_interrupted(self, job: JobRequest, reason: str) -> None:
        """The JobRouter at start: ``job``'s cancel arrived before a crash ended its relay, so
        its task may still run or wait: no run may start (its claim), a running one is revoked."""
        task_id = task_id_of(job)
        try:
            started = not self.backend.channel(task_id).claim_for_cancel()
            self.backend.revoke(task_id, terminate=started)
            logger.info("job {}: revoked celery task {} after the restart ({})", job.job_id, task_id, reason)
        except Exception as exc:
            logger.error("job {}: could not revoke celery task {}: {}", job.job_id, task_id, exc)

    def _dispatch(self, job: JobRequest, ctx: JobContext, task_id: str) -> str:
        """Dispatch ``job`` (or find its dispatch from before a restart); the relayed position."""
        found = ctx.dispatched() if ctx.resumed else None  # a dispatch exists only if it ran before
        if found is not None and found.attempt == job.attempt:
            logger.info(
                "job {}: re-attached to celery task {} (relayed up to {})",
                job.job_id,
                task_id,
                found.position,
            )
            ctx.count("celery_reattached")
            if self.backend.channel(task_id).holder() is not None:
                return found.position  # it started: its message is not needed again
        else:
            ctx.update(
                JobStatus.RUNNING, detail=f"dispatched to celery task {task_id}", dispatch=(BACKEND, task_id)
            )
        try:
            self.backend.send(self.name, job, task_id, limits_for(job, self), self._options.queue)
        except Exception as exc:  # the broker is away (after kombu's own retries): worth another attempt
            logger.error("job {}: could not send celery task {}: {}", job.job_id, task_id, exc)
            raise JobFailed(
                f"celery_unreachable: {type(exc).__name__}: {exc}"[:2000], retryable=True
            ) from exc
        ctx.count("celery_dispatched")
        logger.info("job {}: sent to celery as task {} ({})", job.job_id, task_id, self.name)
        return START if found is None or found.attempt != job.attempt else found.position


def celery_task(
    name: str,
    *,
    broker: str | None = None,
    result_backend: str | None = None,
    backend: CeleryBackend | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    queue: str | None = None,
) -> CeleryHandler:
    """A handler that runs its kind as the Celery task ``name`` (defined with base=RelayedTask)
    on the cluster of ``backend``, or of ``broker`` (one shared backend per broker URL).

    Raises:
        ValueError: no broker, a broker that is not Redis, a bad name or time limits.
    """
    if backend is None:
        if broker is None:
            raise ValueError("celery_task needs broker='redis://…' or backend=CeleryBackend(…)")
        backend = CeleryBackend.shared(broker, result_backend)
    return CeleryHandler(name, backend, soft_time_limit=soft_time_limit, time_limit=time_limit, queue=queue)
