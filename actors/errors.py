# Errors the worker's actors raise to library users. All derive from JobrelayError; ConfigError,
# shared with the facilitator, lives in jobrelay.protocol.errors.
from __future__ import annotations

from jobrelay.protocol.errors import JobrelayError

__all__ = ["NotConnected", "WorkerCrashed"]


class WorkerCrashed(JobrelayError):
    """An actor of the worker failed; the worker stopped. The cause is chained."""


class NotConnected(JobrelayError):
    """The worker did not reach the connected state in time."""
