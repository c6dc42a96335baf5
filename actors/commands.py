# Command handlers: a job kind served by an external program, on a par with a Python handler.
# The job goes to the command as JSON on stdin; each stdout line is a JSON status; exit 0 completes
# the job, with the final stdout line as its detail. The format is documented in docs/CLI.md.
# Invariants: the command runs in its own process group that dies with the worker (see
# actors/processes.py) and is journaled while it may run; when the job ends, nothing of its group
# is left; a cancelled job's group gets SIGTERM, then SIGKILL after `kill_after` seconds. The
# time limits (the job's own, else the kind's options) reach the group the same way: SIGTERM at
# the soft limit, SIGKILL at the hard one (actors/job_limits.py runs the clock).
from __future__ import annotations

import dataclasses
import json
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from loguru import logger

from jobrelay.actors.handlers import JobContext, RetryableError
from jobrelay.actors.job_limits import Limits, TimeLimitExceeded
from jobrelay.actors.processes import GroupProcess, spawn
from jobrelay.protocol.messages import JobRequest, JobStatus
from jobrelay.protocol.time_limits import MAX_LIMIT_SECONDS

__all__ = ["CommandHandler", "CommandOptions"]

_STDERR_TAIL = 500  # characters of stderr a failed job's detail carries
_STDERR_KEEP = 64 * 1024  # what is kept while reading: a chatty command must not fill memory


@dataclass(frozen=True, kw_only=True)
class CommandOptions:
    """How a command handler runs (one set per job kind).

    Attributes:
        resumable: an interrupted job runs again after a restart instead of failing
            (the command must be safe to run twice: it resumes or is idempotent).
        concurrency: at most this many jobs of this kind run at once (None: only the worker's
            ``max_concurrent_jobs`` limits it).
        soft_time_limit: the kind's default soft limit: seconds from the start after which the
            job's process group gets SIGTERM (a command that dies of it ends the job
            ``failed: time_limit``); None: no limit. A job's own limit overrides it.
        time_limit: the kind's default hard limit: seconds after which the job's process group
            is killed and the job ends ``failed: time_limit``; None: no limit. A job's own
            limit overrides it.
        kill_after: seconds from SIGTERM (cancel, stop) to SIGKILL of the group.
    """

    resumable: bool = False
    concurrency: int | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    kill_after: float = 3.0

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency: expected an integer >= 1, got {self.concurrency}")
        for name in ("soft_time_limit", "time_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected seconds > 0, got {value}")
            if value is not None and value > MAX_LIMIT_SECONDS:
                raise ValueError(f"{name}: expected at most {MAX_LIMIT_SECONDS:.0f} seconds, got {value}")
        if not self.kill_after >= 0:
            raise ValueError(f"kill_after: expected seconds >= 0, got {self.kill_after}")
        if (
            self.soft_time_limit is not None
            and self.time_limit is not None
            and self.soft_time_limit > self.time_limit
        ):
            raise ValueError(
                f"soft_time_limit ({self.soft_time_limit}) is above time_limit ({self.time_limit})"
            )


class CommandHandler:
    """Runs an external command per job: the job as JSON on stdin, one JSON status per stdout line.

    Each stdout line is ``{"status": "running", "progress": 0.5, "detail": "…"}`` (all optional).
    Exit code 0 completes the job; its detail is the final stdout line when that is not a status,
    else the last status's detail. Any other exit fails it with the end of stderr; an exit code
    in ``retryable_exit_codes`` fails the attempt as retryable (another attempt runs if the job's
    retry policy allows). ``kill_after``, ``soft_time_limit`` and ``time_limit`` given here
    override those of ``options``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        options: CommandOptions | None = None,
        *,
        kill_after: float | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        retryable_exit_codes: Sequence[int] = (),
    ) -> None:
        if not argv:
            raise ValueError("CommandHandler needs a command")
        self.argv = list(argv)
        self.options = options or CommandOptions()
        opts = self.options
        self.options = dataclasses.replace(
            opts,
            kill_after=opts.kill_after if kill_after is None else kill_after,
            soft_time_limit=opts.soft_time_limit if soft_time_limit is None else soft_time_limit,
            time_limit=opts.time_limit if time_limit is None else time_limit,
        )
        self.retryable_exit_codes = frozenset(retryable_exit_codes)
        # What the JobRouter and run_handler read off any handler.
        self.resumable = self.options.resumable
        self.concurrency = self.options.concurrency
        self.kill_after = self.options.kill_after
        self.time_limits = Limits(self.options.soft_time_limit, self.options.time_limit)

    def __call__(self, job: JobRequest, ctx: JobContext) -> str:
        proc = spawn(self.argv)
        journal = ctx.processes
        try:
            if journal is not None:
                journal.record(job.job_id, proc)
            # The whole group: a shell script's children must stop (and die) with it.
            ctx.on_time_limits(soft=proc.terminate, hard=proc.kill)
            return self._run(proc, job, ctx)
        finally:
            if proc.returncode is None:  # an error in this thread: the job's group must not go on
                proc.kill()
                proc.wait()
            if journal is not None:
                journal.forget(proc)

    def _run(self, proc: GroupProcess, job: JobRequest, ctx: JobContext) -> str:
        done = threading.Event()
        stderr: list[str] = []
        result: list[str] = []
        threads = [
            threading.Thread(target=self._watch, args=(proc, ctx, done), daemon=True),
            threading.Thread(target=_tail, args=(proc, stderr), daemon=True),
            threading.Thread(target=_statuses, args=(proc, ctx, result), daemon=True),
        ]
        for thread in threads:
            thread.start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(msgspec.json.encode(job).decode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the command did not read its job: its exit code tells
        code = proc.wait()  # also kills what the command left behind, so its pipes reach EOF
        done.set()
        for thread in threads:
            thread.join(timeout=5)
        ctx.check_cancelled()
        if code == -signal.SIGTERM and ctx.soft_limit_reached:
            raise TimeLimitExceeded  # it stopped when told to: the time limit ended it
        if code != 0:
            tail = "".join(stderr).strip()[-_STDERR_TAIL:]
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            message = f"command {how}" + (f": {tail}" if tail else "")
            raise RetryableError(message) if code in self.retryable_exit_codes else RuntimeError(message)
        return result[-1] if result else ""

    def _watch(self, proc: GroupProcess, ctx: JobContext, done: threading.Event) -> None:
        while not done.is_set():
            if ctx.wait_cancelled(0.1):
                proc.terminate()
                if not done.wait(self.kill_after):
                    proc.kill()
                return


def _tail(proc: GroupProcess, into: list[str]) -> None:
    assert proc.stderr is not None
    kept = ""
    while chunk := proc.stderr.read(8192):
        kept = (kept + chunk)[-_STDERR_KEEP:]
    into.append(kept)


def _statuses(proc: GroupProcess, ctx: JobContext, result: list[str]) -> None:
    """Report each status line; leave the completion detail in ``result``."""
    assert proc.stdout is not None
    detail = ""
    held = ""  # a line that is not a status: the detail if it is the last one, else a warning
    for raw in proc.stdout:
        line = raw.strip()
        if not line:
            continue
        if held:
            logger.warning(
                "job {}: ignoring a stdout line that is not a status: {!r}", ctx.job.job_id, held[:200]
            )
            held = ""
        parsed = _parse(line)
        if parsed is None:
            held = line
            continue
        status, progress, detail = parsed
        if not status.terminal:  # the exit code decides the terminal status
            try:
                ctx.update(status, progress=progress, detail=detail)
            except Exception as exc:  # keep draining stdout, or the command blocks on a full pipe
                logger.error("job {}: could not record a status: {}", ctx.job.job_id, exc)
    result.append(held or detail)


def _parse(line: str) -> tuple[JobStatus, float | None, str] | None:
    try:
        doc = json.loads(line)
        status = JobStatus(doc.get("status", "running"))
        progress = doc.get("progress")
        detail = str(doc.get("detail", ""))
    except (ValueError, AttributeError, TypeError):
        return None
    ok = isinstance(progress, int | float) and not isinstance(progress, bool) and 0 <= progress <= 1
    return status, float(progress) if ok else None, detail
