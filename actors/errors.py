# Errors the actor layer raises to library users. All derive from JobrelayError.
from __future__ import annotations

from jobrelay.protocol.errors import JobrelayError

__all__ = ["ConfigError", "JobTooLarge", "NotConnected", "WorkerCrashed"]


class ConfigError(JobrelayError):
    """A configuration value is invalid; the message names the field and what is expected."""


class WorkerCrashed(JobrelayError):
    """An actor of the worker failed; the worker stopped. The cause is chained."""


class NotConnected(JobrelayError):
    """The worker did not reach the connected state in time."""


class JobTooLarge(JobrelayError, ValueError):
    """A job's request (or cancel) would not fit in one frame (``max_frame_bytes``); nothing
    was stored. A ValueError, so callers that catch bad input catch it too."""
