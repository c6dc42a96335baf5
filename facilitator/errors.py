# Errors the reference facilitator raises to its callers. All derive from JobrelayError.
from __future__ import annotations

from jobrelay.protocol.errors import JobrelayError

__all__ = ["JobTooLarge"]


class JobTooLarge(JobrelayError, ValueError):
    """A job's request (or cancel) would not fit in one frame (``max_frame_bytes``); nothing
    was stored. A ValueError, so callers that catch bad input catch it too."""
