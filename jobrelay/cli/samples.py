# Built-in sample handlers for the tour and the demo: `echo` and `sleep`.
# Invariant: both honour cancellation promptly (sleep wakes on cancel) and report progress with
# strictly increasing values, so a repeated status is always visible as a duplicate.
from __future__ import annotations

from typing import Any

from loguru import logger

from jobrelay.actors.handlers import Handler, JobCancelled, JobContext
from jobrelay.protocol.messages import JobRequest, JobStatus

__all__ = ["SAMPLE_HANDLERS", "echo", "sleep"]


def echo(job: JobRequest, ctx: JobContext) -> str:
    """Completes at once with the payload as its detail."""
    logger.bind(job_id=job.job_id).debug("echo")
    return "" if job.payload is None else str(job.payload)


def sleep(job: JobRequest, ctx: JobContext) -> str:
    """Sleeps ``payload.seconds`` (default 1) in ``payload.steps`` (default 3) progress updates.

    Payload: ``{"seconds": 1.5, "steps": 3}`` or a bare number of seconds.
    """
    payload: Any = job.payload
    if isinstance(payload, int | float):
        seconds, steps = float(payload), 3
    elif isinstance(payload, dict):
        seconds, steps = float(payload.get("seconds", 1.0)), int(payload.get("steps", 3))
    else:
        seconds, steps = 1.0, 3
    steps = max(1, min(steps, 1000))
    log = logger.bind(job_id=job.job_id)
    log.debug("sleep {seconds}s in {steps} steps", seconds=seconds, steps=steps)
    for step in range(1, steps + 1):
        if ctx.wait_cancelled(seconds / steps):
            raise JobCancelled(ctx.cancel_reason)
        ctx.update(JobStatus.RUNNING, progress=round(step / steps, 4), detail=f"step {step}/{steps}")
    return f"slept {seconds:g}s"


SAMPLE_HANDLERS: dict[str, Handler] = {"echo": echo, "sleep": sleep}
