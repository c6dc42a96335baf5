# Job handlers and the context they report through. A handler runs in its own thread; every
# report is published straight to the Outbox and becomes a durable status update there.
# Invariant: run_handler() ends every job with exactly one terminal status (completed, failed or
# cancelled) and then tells the router.
from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.actor_messages import Count, JobDone, Observe, send
from jobrelay.protocol.messages import JobRequest, JobStatus, JobStatusUpdate

if TYPE_CHECKING:
    from jobrelay.actors.outbox_actor import OutboxHandle

__all__ = [
    "CommandHandler",
    "Handler",
    "JobCancelled",
    "JobContext",
    "publish_status",
    "resumable",
    "run_handler",
]

# How long a handler's update waits for its status to become durable (back-pressure).
_UPDATE_TIMEOUT = 60.0


class JobCancelled(Exception):
    """Raise from a handler (or let ctx.check_cancelled() raise it) to end the job as cancelled."""


def publish_status(
    outbox: OutboxHandle,
    job_id: str,
    status: JobStatus,
    *,
    at: float,
    detail: str = "",
    progress: float | None = None,
) -> pykka.Future[int]:
    """Publish one status update of ``job_id``; the future resolves once it is durable."""
    return outbox.publish(
        JobStatusUpdate(job_id=job_id, status=status, at=at, progress=progress, detail=detail)
    )


class JobContext:
    """What a handler gets besides the job: progress reporting and cancellation."""

    def __init__(self, job: JobRequest, *, outbox: OutboxHandle, clock: Callable[[], float]) -> None:
        self.job = job
        self._outbox = outbox
        self._clock = clock
        self._cancelled = threading.Event()
        self.cancel_reason = ""
        self.started_at = clock()

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

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._cancelled.set()

    def update(
        self, status: JobStatus = JobStatus.RUNNING, *, progress: float | None = None, detail: str = ""
    ) -> None:
        """Report progress; returns once the update is durable (raises if it cannot be stored).

        Raises:
            ValueError: a terminal status (return from the handler or raise instead).
        """
        if status.terminal or status is JobStatus.RELEASED:  # released: only the router hands jobs back
            raise ValueError("a handler ends its job by returning (completed) or raising (failed)")
        self.report(status, detail=detail, progress=progress).get(timeout=_UPDATE_TIMEOUT)

    def elapsed(self) -> float:
        """Seconds since the job's handler started."""
        return self._clock() - self.started_at

    def report(
        self, status: JobStatus, *, detail: str = "", progress: float | None = None
    ) -> pykka.Future[int]:
        """Publish a status of this job (terminal ones too: run_handler ends jobs through it)."""
        at = self._clock()
        return publish_status(self._outbox, self.job.job_id, status, at=at, detail=detail, progress=progress)


class Handler(Protocol):
    def __call__(self, job: JobRequest, ctx: JobContext) -> Any: ...


H = TypeVar("H", bound=Handler)


def resumable(handler: H) -> H:
    """Declare a handler safe to run again after a crash interrupted it (it resumes from its
    own checkpoints, or is idempotent). Its interrupted jobs run again at the next start
    instead of ending as ``failed: worker_restarted``."""
    handler.resumable = True  # type: ignore[attr-defined]
    return handler


class CommandHandler:
    """Runs an external command per job: the job as JSON on stdin, one JSON status per stdout line.

    Each stdout line is ``{"status": "running", "progress": 0.5, "detail": "…"}`` (all optional).
    Exit code 0 completes the job; anything else fails it with the end of stderr. A cancelled job's
    process is terminated (then killed after ``kill_after`` seconds).
    """

    def __init__(self, argv: Sequence[str], *, kill_after: float = 3.0) -> None:
        if not argv:
            raise ValueError("CommandHandler needs a command")
        self.argv = list(argv)
        self.kill_after = kill_after

    def __call__(self, job: JobRequest, ctx: JobContext) -> str:
        proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C at the worker's terminal must not reach the job directly;
            # the worker decides (a stopping worker cancels it, which terminates it).
            start_new_session=True,
        )
        watcher = threading.Thread(target=self._watch, args=(proc, ctx), daemon=True)
        watcher.start()
        stderr: list[str] = []
        reader = threading.Thread(
            target=lambda: stderr.append(proc.stderr.read() if proc.stderr else ""), daemon=True
        )
        reader.start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(msgspec.json.encode(job).decode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        last_detail = ""
        for line in proc.stdout:
            last_detail = self._report(line, ctx) or last_detail
        code = proc.wait()
        reader.join(timeout=5)
        ctx.check_cancelled()
        if code != 0:
            tail = "".join(stderr).strip()[-500:]
            raise RuntimeError(f"command exited with {code}" + (f": {tail}" if tail else ""))
        return last_detail

    @staticmethod
    def _report(line: str, ctx: JobContext) -> str:
        line = line.strip()
        if not line:
            return ""
        try:
            doc = json.loads(line)
            status = JobStatus(doc.get("status", "running"))
            progress = doc.get("progress")
            detail = str(doc.get("detail", ""))
        except (ValueError, AttributeError, TypeError):
            logger.warning(
                "job {}: ignoring a stdout line that is not a status: {!r}", ctx.job.job_id, line[:200]
            )
            return ""
        if status.terminal:
            return detail  # the exit code decides the terminal status
        ctx.update(status, progress=progress if isinstance(progress, int | float) else None, detail=detail)
        return detail

    def _watch(self, proc: subprocess.Popen[str], ctx: JobContext) -> None:
        while proc.poll() is None:
            if ctx.wait_cancelled(0.1):
                proc.terminate()
                try:
                    proc.wait(self.kill_after)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return


def run_handler(
    handler: Handler, ctx: JobContext, router: pykka.ActorRef[Any], metrics: pykka.ActorRef[Any]
) -> None:
    """Run one job to its terminal status (in the job's own thread)."""
    with logger.contextualize(job_id=ctx.job.job_id):
        _run(handler, ctx, router, metrics)


def _run(
    handler: Handler, ctx: JobContext, router: pykka.ActorRef[Any], metrics: pykka.ActorRef[Any]
) -> None:
    job = ctx.job
    status, detail = JobStatus.COMPLETED, ""
    try:
        ctx.update(JobStatus.RUNNING)
        result = handler(job, ctx)
        if ctx.cancelled:
            status, detail = JobStatus.CANCELLED, ctx.cancel_reason
        elif result is not None:
            detail = str(result)[:2000]
    except JobCancelled:
        status, detail = JobStatus.CANCELLED, ctx.cancel_reason or "cancelled"
    except Exception as exc:
        if ctx.cancelled:
            status, detail = JobStatus.CANCELLED, ctx.cancel_reason
        else:
            logger.opt(exception=exc).warning("job {} failed: {}", job.job_id, exc)
            status, detail = JobStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
    try:
        ctx.report(status, detail=detail).get(timeout=_UPDATE_TIMEOUT)
    except Exception as exc:
        logger.error("job {}: could not record terminal status {}: {}", job.job_id, status.value, exc)
    send(metrics, Count(f"jobs_{status.value}"))
    send(metrics, Observe("job_duration", ctx.elapsed()))
    send(router, JobDone(job.job_id))
