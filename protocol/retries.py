# A job's retry policy: the one check of its values (the facilitator's submit, the CLI) and the
# delay before each attempt. Pure: the facilitator decides with these and its own clock.
from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_ATTEMPTS", "MAX_BACKOFF", "check_retries", "retry_delay"]

MAX_ATTEMPTS: Final = 100
"""The most attempts a job request carries (``Attempt``)."""
MAX_BACKOFF: Final = 86400.0
"""The largest ``retry_backoff`` (a day) and the largest delay between two attempts."""


def check_retries(retries: int, retry_backoff: float) -> None:
    """Refuse a policy a job request could not carry (``retries`` after the first attempt: a
    request carries ``max_attempts = retries + 1``).

    Raises:
        TypeError: a value of the wrong type.
        ValueError: ``retries`` outside 0..99, ``retry_backoff`` outside 0..86400 seconds.
    """
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an integer, got {retries!r}")
    if not 0 <= retries < MAX_ATTEMPTS:
        raise ValueError(f"retries must be 0..{MAX_ATTEMPTS - 1}, got {retries}")
    if isinstance(retry_backoff, bool) or not isinstance(retry_backoff, int | float):
        raise TypeError(f"retry_backoff must be a number of seconds, got {retry_backoff!r}")
    if not (math.isfinite(retry_backoff) and 0 <= retry_backoff <= MAX_BACKOFF):
        raise ValueError(f"retry_backoff must be 0..{MAX_BACKOFF:.0f} seconds, got {retry_backoff!r}")


def retry_delay(retry_backoff: float, next_attempt: int) -> float:
    """Seconds to wait before ``next_attempt`` (≥ 2): the backoff, doubled for each attempt after
    the second, at most a day."""
    return min(MAX_BACKOFF, retry_backoff * 2.0 ** max(0, next_attempt - 2))
