"""`jobrelay worker` with one more built-in job kind, ``chaos``, that writes down what it published.

Usage: chaos_worker.py worker [the `jobrelay worker` flags]   (environment: CHAOS_RECORD=FILE)

The ``chaos`` handler (payload ``{"steps": n, "pause": s}``) publishes n progress updates with
details ``step i/n``, pausing s seconds before each. After each ``ctx.update`` returns (the update
is durable in the worker's outbox: the worker *accepted* it), it appends ``{"job", "step"}`` to
CHAOS_RECORD and fsyncs. The chaos checker holds the facilitator's histories against these records:
an update recorded here and missing there was lost. Everything else is the real command (flags,
signals, ready file, stop), so the chaos run exercises what users run.

Invariant: each record is one write() of one whole line to a file opened O_APPEND, so a SIGKILL
leaves whole lines only (a kill between the update's return and the write loses the record, never
the update: the checker allows the facilitator one update more than was recorded).
"""

from __future__ import annotations

import json
import os
import sys

from jobrelay.actors.handlers import JobCancelled, JobContext
from jobrelay.cli import samples
from jobrelay.cli.main import main
from jobrelay.protocol.messages import JobRequest, JobStatus

__all__ = ["KIND", "chaos_handler"]

KIND = "chaos"
_RECORD = os.environ.get("CHAOS_RECORD", "")


def _record(job_id: str, step: int) -> None:
    if not _RECORD:
        return
    line = (json.dumps({"job": job_id, "step": step}) + "\n").encode()
    fd = os.open(_RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def chaos_handler(job: JobRequest, ctx: JobContext) -> str:
    payload = job.payload if isinstance(job.payload, dict) else {}
    steps, pause = int(payload.get("steps", 3)), float(payload.get("pause", 0.05))
    for step in range(1, steps + 1):
        if ctx.wait_cancelled(pause):
            raise JobCancelled(ctx.cancel_reason)
        ctx.update(JobStatus.RUNNING, progress=round(step / steps, 4), detail=f"step {step}/{steps}")
        _record(job.job_id, step)
    return f"{steps} steps"


if __name__ == "__main__":
    samples.SAMPLE_HANDLERS[KIND] = chaos_handler  # read by `jobrelay worker` when it starts
    sys.exit(main(sys.argv[1:]))
