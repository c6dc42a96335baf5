# What a submit may ask of a job besides its kind and payload: a start deadline, time limits and
# a retry policy. One home for their check and for how they land in the job request (or, for the
# start deadline, in the facilitator's memory), so the Python API and the HTTP API cannot drift
# apart.
from __future__ import annotations

import time
from typing import Any, NamedTuple

from jobrelay.protocol.messages import JobRequest
from jobrelay.protocol.retries import check_retries
from jobrelay.protocol.time_limits import check_time_limits

__all__ = ["JobOptions"]


class JobOptions(NamedTuple):
    """A submit's options (PROTOCOL.md §3.6, §3.7, §6.3); the defaults ask for nothing.

    Attributes:
        soft_time_limit: Seconds from the handler's start until it is told to wrap up.
        time_limit: Seconds from the handler's start until the job ends ``failed: time_limit``.
            Both override the worker's defaults for the kind.
        retries: How many more attempts a retryable failure may have (0..99; 0: none).
        retry_backoff: Seconds before the second attempt; each later one waits twice as long.
        start_within: Seconds the job may wait queued for a worker of its kind with credit;
            still queued then, it ends ``failed: no_worker`` (None: the facilitator's
            ``schedule_to_start_timeout``). Not part of the request: the facilitator keeps it.
    """

    soft_time_limit: float | None = None
    time_limit: float | None = None
    retries: int = 0
    retry_backoff: float = 0.0
    start_within: float | None = None

    def check(self) -> None:
        """Raises:
        TypeError: a value of the wrong type.
        ValueError: a limit not in (0, 366 days] or the soft one not below the hard one,
            ``retries`` outside 0..99, ``retry_backoff`` outside 0..86400 seconds,
            ``start_within`` not a positive number of seconds.
        """
        check_time_limits(self.soft_time_limit, self.time_limit)
        check_retries(self.retries, self.retry_backoff)
        _check_start_within(self.start_within)

    def start_by(self, default: float | None) -> float | None:
        """The start deadline of a job submitted now, ``default`` seconds unless the options say
        (None: it waits as long as it takes).

        Raises:
            ValueError: ``default`` is not a positive number of seconds.
        """
        start_within = self.start_within if self.start_within is not None else default
        if start_within is None:
            return None
        _check_start_within(start_within)
        return time.time() + start_within

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


def _check_start_within(start_within: float | None) -> None:
    if start_within is not None and (
        isinstance(start_within, bool)
        or not isinstance(start_within, int | float)
        or not 0 < start_within < 1e9
    ):
        raise ValueError(f"start_within must be a positive number of seconds, got {start_within!r}")
