# Time limits of a job's handler. A soft limit tells the handler to wrap up (ctx flag and hooks,
# e.g. SIGTERM to a command's process group); a hard limit ends the job as ``failed: time_limit``.
# A Python thread cannot be killed, so a limited handler runs in a thread of its own while the
# job's thread watches the clock: at the hard limit the job's thread runs the hooks (a command's
# process group is killed), reports the ending and abandons the handler's thread, whose late
# result is dropped. Invariant: only the job's thread reports the terminal status.
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from jobrelay.protocol.messages import JobRequest
from jobrelay.protocol.time_limits import check_time_limits

if TYPE_CHECKING:
    from jobrelay.actors.handlers import JobContext

__all__ = [
    "TIME_LIMIT",
    "Limits",
    "TimeLimitExceeded",
    "concurrency",
    "limits_for",
    "run_limited",
    "time_limits",
    "with_time_limits",
]

TIME_LIMIT = "time_limit"
"""The detail of a job ended by its hard time limit (``failed: time_limit``)."""


class TimeLimitExceeded(Exception):
    """Raise from a handler that stops at its soft limit: the job ends ``failed: time_limit``
    (retryable), as at the hard limit. A command that dies of the soft limit's SIGTERM ends so too."""

    retryable = True


T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Limits(NamedTuple):
    """Seconds from the handler's start: ``soft`` (wrap up) and ``hard`` (ended); None = none."""

    soft: float | None = None
    hard: float | None = None


def time_limits(*, soft: float | None = None, hard: float | None = None) -> Callable[[F], F]:
    """Declare a handler's default time limits for its kind (a job's own limits override them).

    Raises:
        ValueError: a limit a job request could not carry, or soft not below hard.
    """
    check_time_limits(soft, hard)

    def mark(handler: F) -> F:
        handler.time_limits = Limits(soft, hard)  # type: ignore[attr-defined]
        return handler

    return mark


def concurrency(limit: int) -> Callable[[F], F]:
    """Mark a handler: at most ``limit`` jobs of its kind run at once on this worker (others
    of the kind wait in order while other kinds use the free slots). The worker announces it to
    the facilitator (hello ``kind_credit``), which then sends no more of that kind than
    ``limit + prefetch``, so the rest can go to another worker.

    Raises:
        ValueError: ``limit`` is not an integer >= 1.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"concurrency: expected an integer >= 1, got {limit!r}")

    def mark(handler: F) -> F:
        handler.concurrency = limit  # type: ignore[attr-defined]
        return handler

    return mark


def with_time_limits(handler: Callable[..., Any], limits: Limits) -> Callable[..., Any]:
    """``handler`` wrapped with ``limits`` as its kind's defaults (wrapped, not changed: the
    same handler may serve other kinds without them). A CommandHandler takes its kind's limits
    as options instead (CommandOptions.soft_time_limit/time_limit)."""

    def limited(*args: Any, **kwargs: Any) -> Any:
        return handler(*args, **kwargs)

    limited.__wrapped__ = handler  # type: ignore[attr-defined]
    limited.resumable = getattr(handler, "resumable", False)  # type: ignore[attr-defined]
    limited.concurrency = getattr(handler, "concurrency", None)  # type: ignore[attr-defined]
    limited.time_limits = limits  # type: ignore[attr-defined]
    return limited


def limits_for(job: JobRequest, handler: object) -> Limits:
    """The limits ``job`` runs under: its own, else its handler's defaults for the kind."""
    default = getattr(handler, "time_limits", None)
    kind = default if isinstance(default, Limits) else Limits()
    return Limits(
        job.soft_time_limit if job.soft_time_limit is not None else kind.soft,
        job.time_limit if job.time_limit is not None else kind.hard,
    )


def run_limited(
    call: Callable[[], T], ctx: JobContext, limits: Limits, *, clock: Callable[[], float] = time.monotonic
) -> T | None:
    """Run ``call`` in a thread of its own under ``limits``; None when the hard limit ended it.

    ``call`` must not raise (the caller turns exceptions into outcomes).
    """
    box: list[T] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(call())
        finally:
            done.set()

    start = clock()
    threading.Thread(target=target, name=f"jobrelay-handler-{ctx.job.job_id}", daemon=True).start()
    soft, hard = limits
    if soft is not None and (hard is None or soft < hard) and not done.wait(soft):
        ctx.reach_soft_limit()
    if hard is None:
        done.wait()
    elif not done.wait(max(0.0, hard - (clock() - start))):
        ctx.abandon(TIME_LIMIT)
        return None
    return box[0]
