# Job handlers and the context they report through. A handler runs in its own thread; every
# report is published straight to the Outbox and becomes a durable status update there.
# Invariant: run_handler() ends every job with exactly one terminal status (completed, failed or
# cancelled) and then tells the router.
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pykka
from loguru import logger

from jobrelay.actors.actor_messages import Count, Gauge, JobDone, Observe, Tellable, send
from jobrelay.actors.job_limits import TIME_LIMIT, Limits, TimeLimitExceeded, limits_for, run_limited
from jobrelay.protocol.messages import JobRequest, JobStatus, JobStatusUpdate

if TYPE_CHECKING:
    from jobrelay.actors.outbox_actor import OutboxHandle
    from jobrelay.actors.processes import ProcessJournal
    from jobrelay.storage import Dispatch

__all__ = [
    "Handler",
    "JobCancelled",
    "JobContext",
    "JobDetached",
    "JobFailed",
    "RetryableError",
    "publish_status",
    "resumable",
    "run_handler",
]

# How long a handler's update waits for its status to become durable (back-pressure).
_UPDATE_TIMEOUT = 60.0


class JobCancelled(Exception):
    """Raise from a handler (or let ctx.check_cancelled() raise it) to end the job as cancelled."""


class JobDetached(Exception):
    """Raise from a handler whose job goes on elsewhere (an external backend such as Celery) when
    its worker stops: no terminal status is reported now; a resumable handler re-attaches to the
    job at the next start and reports its ending then."""


class JobFailed(Exception):
    """Raise from a handler to fail the job with exactly ``detail`` (e.g. ``worker_lost``), and
    as retryable if asked."""

    def __init__(self, detail: str, *, retryable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


class RetryableError(Exception):
    """Raise from a handler to fail this attempt as worth another one (a transient cause): with
    a retry policy the facilitator runs the job again. Any exception with a true ``retryable``
    attribute counts the same."""

    retryable = True


def publish_status(
    outbox: OutboxHandle,
    job_id: str,
    status: JobStatus,
    *,
    at: float,
    detail: str = "",
    progress: float | None = None,
    attempt: int = 1,
    retryable: bool = False,
    mark: tuple[str, str, str] | None = None,
    dispatch: tuple[str, int, str, str] | None = None,
) -> pykka.Future[int]:
    """Publish one status update of ``job_id``; the future resolves once it is durable (with
    ``mark``/``dispatch``, the external backend's record it carries too: OutboxHandle.publish)."""
    return outbox.publish(
        JobStatusUpdate(
            job_id=job_id,
            status=status,
            at=at,
            progress=progress,
            detail=detail,
            attempt=attempt,
            retryable=retryable,
        ),
        mark=mark,
        dispatch=dispatch,
    )


class JobContext:
    """What a handler gets besides the job: progress reporting and cancellation."""

    def __init__(
        self,
        job: JobRequest,
        *,
        outbox: OutboxHandle,
        clock: Callable[[], float],
        processes: ProcessJournal | None = None,
        metrics: Tellable | None = None,
        resumed: bool = False,
    ) -> None:
        self.job = job
        # It started before the worker restarted (a resumable handler picks it up where it was).
        self.resumed = resumed
        self._metrics = metrics
        self.worker_stopping = False  # the cancel came from a stopping worker, not the facilitator
        # Where a handler that starts processes journals them (None: nowhere, e.g. in unit tests).
        self.processes = processes
        self._outbox = outbox
        self._clock = clock
        self._cancelled = threading.Event()
        self.cancel_reason = ""
        self.started_at = clock()
        self._soft_limit = threading.Event()
        self._abandoned = False
        self._lock = threading.Lock()
        self._soft_hooks: list[Callable[[], object]] = []
        self._hard_hooks: list[Callable[[], object]] = []

    @property
    def soft_limit_reached(self) -> bool:
        """True once the job's soft time limit passed: wrap up (its hard limit will end it)."""
        return self._soft_limit.is_set()

    @property
    def abandoned(self) -> bool:
        """True once the job ended without this handler (hard time limit): its result is ignored."""
        return self._abandoned

    def on_time_limits(self, *, soft: Callable[[], object], hard: Callable[[], object]) -> None:
        """Run ``soft`` at the soft limit and ``hard`` at the hard limit (before the job's ending
        is reported); a hook registered after its limit passed runs at once."""
        with self._lock:
            self._soft_hooks.append(soft)
            self._hard_hooks.append(hard)
            run_soft, run_hard = self._soft_limit.is_set(), self._abandoned
        if run_hard:
            hard()
        elif run_soft:
            soft()

    def reach_soft_limit(self) -> None:
        """The job's thread: the soft time limit passed."""
        with self._lock:
            self._soft_limit.set()
            hooks = list(self._soft_hooks)
        for hook in hooks:
            hook()

    def abandon(self, reason: str) -> None:
        """The job's thread: the job ends without waiting for its handler (hard time limit)."""
        with self._lock:
            self._abandoned = True
            hooks = list(self._hard_hooks)
        self.cancel(reason)  # a handler that looks (ctx.cancelled) stops on its own
        for hook in hooks:
            hook()

    @property
    def cancelled(self) -> bool:
        """True once the facilitator (or a stopping worker) asked this job to stop."""
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation; returns ``cancelled``."""
        return self._cancelled.wait(timeout)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self._cancelled.is_set():
            raise JobCancelled(self.cancel_reason)

    def cancel(self, reason: str, *, stopping: bool = False) -> None:
        """Ask the handler to stop; ``stopping``: because the worker stops (a handler whose job
        runs elsewhere may detach instead)."""
        self.cancel_reason = reason
        self.worker_stopping = self.worker_stopping or stopping
        self._cancelled.set()

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the worker's counter ``name`` (for handlers with metrics of their own)."""
        if self._metrics is not None:
            send(self._metrics, Count(name, n))

    def gauge(self, name: str, value: float) -> None:
        """Set the worker's gauge ``name``."""
        if self._metrics is not None:
            send(self._metrics, Gauge(name, value))

    def update(
        self,
        status: JobStatus = JobStatus.RUNNING,
        *,
        progress: float | None = None,
        detail: str = "",
        mark: tuple[str, str, str] | None = None,
        dispatch: tuple[str, str] | None = None,
    ) -> None:
        """Report progress; returns once the update is durable (raises if it cannot be stored).
        An external backend's handler records with it where the job went (``dispatch``: backend
        and task id) or how far its events were relayed (``mark``: job id, task id, position).

        Raises:
            ValueError: a terminal status (return from the handler or raise instead).
        """
        if status.terminal or status in (JobStatus.RETRYING, JobStatus.RELEASED):
            # retrying: the facilitator's alone; released: only the router hands jobs back
            raise ValueError("a handler ends its job by returning (completed) or raising (failed)")
        if self._abandoned:
            # The job has ended (its hard time limit): nothing more is reported for it, and the
            # exception unwinds the abandoned handler.
            raise JobCancelled(self.cancel_reason)
        note = None if dispatch is None else (self.job.job_id, self.job.attempt, *dispatch)
        self.report(status, detail=detail, progress=progress, mark=mark, dispatch=note).get(
            timeout=_UPDATE_TIMEOUT
        )

    def dispatched(self) -> Dispatch | None:
        """This job's dispatch to an external backend as recorded by update(dispatch=…), also
        before a restart (None: none; an earlier attempt's is returned as it is)."""
        return self._outbox.dispatch(self.job.job_id).get(timeout=_UPDATE_TIMEOUT)

    def elapsed(self) -> float:
        """Seconds since the job's handler started."""
        return self._clock() - self.started_at

    def report(
        self,
        status: JobStatus,
        *,
        detail: str = "",
        progress: float | None = None,
        retryable: bool = False,
        mark: tuple[str, str, str] | None = None,
        dispatch: tuple[str, int, str, str] | None = None,
    ) -> pykka.Future[int]:
        """Publish a status of this job (terminal ones too: run_handler ends jobs through it)."""
        return publish_status(
            self._outbox,
            self.job.job_id,
            status,
            at=self._clock(),
            detail=detail,
            progress=progress,
            attempt=self.job.attempt,
            retryable=retryable,
            mark=mark,
            dispatch=dispatch,
        )


class Handler(Protocol):
    def __call__(self, job: JobRequest, ctx: JobContext) -> Any: ...


H = TypeVar("H", bound=Handler)


def resumable(handler: H) -> H:
    """Declare a handler safe to run again after a crash interrupted it (it resumes from its
    own checkpoints, or is idempotent). Its interrupted jobs run again at the next start
    instead of ending as ``failed: worker_restarted``."""
    handler.resumable = True  # type: ignore[attr-defined]
    return handler


def run_handler(handler: Handler, ctx: JobContext, router: pykka.ActorRef[Any], metrics: Tellable) -> None:
    """Run one job to its terminal status (in the job's own thread)."""
    with logger.contextualize(job_id=ctx.job.job_id):
        _run(handler, ctx, router, metrics)


def _run(handler: Handler, ctx: JobContext, router: pykka.ActorRef[Any], metrics: Tellable) -> None:
    job = ctx.job
    # A handler with its own time limits (they reach its backend) is not watched here.
    limits = Limits() if getattr(handler, "own_time_limits", False) else limits_for(job, handler)
    if limits == Limits():
        try:
            status, detail, retryable = _outcome(handler, ctx)
        except JobDetached:
            logger.info("job {}: detached while it runs elsewhere; its ending is reported later", job.job_id)
            send(router, JobDone(job.job_id, job.attempt, job.kind))
            return
    else:
        outcome = run_limited(lambda: _outcome(handler, ctx), ctx, limits)
        # A time limit is worth another attempt: the next one may run on a less loaded machine.
        status, detail, retryable = outcome or (JobStatus.FAILED, TIME_LIMIT, True)
        if outcome is None:
            logger.warning("job {}: hard time limit of {} s reached; ended", job.job_id, limits.hard)
    try:
        ctx.report(status, detail=detail, retryable=retryable).get(timeout=_UPDATE_TIMEOUT)
    except Exception as exc:
        logger.error("job {}: could not record terminal status {}: {}", job.job_id, status.value, exc)
    send(metrics, Count(f"jobs_{status.value}"))
    send(metrics, Observe("job_duration", ctx.elapsed()))
    send(router, JobDone(job.job_id, job.attempt, job.kind))


def _outcome(handler: Handler, ctx: JobContext) -> tuple[JobStatus, str, bool]:
    """Run the handler; its terminal status, detail and whether a failure is retryable (never
    raises)."""
    job = ctx.job
    status, detail, retryable = JobStatus.COMPLETED, "", False
    try:
        if not getattr(handler, "announces_running", False):  # else the handler reports it
            ctx.update(JobStatus.RUNNING)
        result = handler(job, ctx)
        if ctx.cancelled:
            status, detail = JobStatus.CANCELLED, ctx.cancel_reason
        elif result is not None:
            detail = str(result)[:2000]
    except JobDetached:
        raise
    except JobCancelled:
        status, detail = JobStatus.CANCELLED, ctx.cancel_reason or "cancelled"
    except TimeLimitExceeded:
        status, detail, retryable = JobStatus.FAILED, TIME_LIMIT, True
    except JobFailed as exc:
        status, detail, retryable = JobStatus.FAILED, exc.detail[:2000], exc.retryable
    except Exception as exc:
        if ctx.cancelled:
            status, detail = JobStatus.CANCELLED, ctx.cancel_reason
        else:
            logger.opt(exception=exc).warning("job {} failed: {}", job.job_id, exc)
            status, detail = JobStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
            retryable = getattr(exc, "retryable", False) is True
    return status, detail, retryable
