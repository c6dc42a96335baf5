# What a submit may ask of a job besides its kind and payload: time limits and a retry policy.
# One home for their check and for how they land in the job request, so the Python API and the
# HTTP API cannot drift apart.
from __future__ import annotations

from typing import Any, NamedTuple

from jobrelay.protocol.messages import JobRequest
from jobrelay.protocol.retries import check_retries
from jobrelay.protocol.time_limits import check_time_limits

__all__ = ["JobOptions"]


class JobOptions(NamedTuple):
    """A submit's options (PROTOCOL.md §3.6, §3.7); the defaults ask for nothing.

    Attributes:
        soft_time_limit: Seconds from the handler's start until it is told to wrap up.
        time_limit: Seconds from the handler's start until the job ends ``failed: time_limit``.
            Both override the worker's defaults for the kind.
        retries: How many more attempts a retryable failure may have (0..99; 0: none).
        retry_backoff: Seconds before the second attempt; each later one waits twice as long.
    """

    soft_time_limit: float | None = None
    time_limit: float | None = None
    retries: int = 0
    retry_backoff: float = 0.0

    def check(self) -> None:
        """Raises:
        TypeError: a value of the wrong type.
        ValueError: a limit not in (0, 366 days] or the soft one not below the hard one,
            ``retries`` outside 0..99, ``retry_backoff`` outside 0..86400 seconds.
        """
        check_time_limits(self.soft_time_limit, self.time_limit)
        check_retries(self.retries, self.retry_backoff)

    def request(self, job_id: str, kind: str, payload: Any, submitted_at: float) -> JobRequest:
        """The first attempt's request (call ``check`` first)."""
        soft, hard = self.soft_time_limit, self.time_limit
        return JobRequest(
            job_id=job_id,
            kind=kind,
            payload=payload,
            submitted_at=submitted_at,
            soft_time_limit=None if soft is None else float(soft),
            time_limit=None if hard is None else float(hard),
            max_attempts=self.retries + 1,
            retry_backoff=float(self.retry_backoff),
        )
