# The one check of a job's time limits, shared by the facilitator's submit (before anything is
# stored), the worker's per-kind defaults and the CLI: what the wire accepts (JobRequest's
# LimitSeconds) and that a soft limit comes before the hard one.
from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_LIMIT_SECONDS", "check_time_limits"]

MAX_LIMIT_SECONDS: Final = 366 * 86400.0
"""The largest time limit the wire carries (a year): more is a typo, not a limit."""


def check_time_limits(soft: float | None, hard: float | None) -> None:
    """Refuse limits a job request could not carry, or a soft limit not before the hard one.

    Raises:
        TypeError: a limit that is not a number.
        ValueError: a limit out of range, or the soft one not below the hard one.
    """
    for name, value in (("soft_time_limit", soft), ("time_limit", hard)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if not (math.isfinite(value) and 0 < value <= MAX_LIMIT_SECONDS):
            raise ValueError(
                f"{name} must be more than 0 and at most {MAX_LIMIT_SECONDS:.0f} s, got {value!r}"
            )
    if soft is not None and hard is not None and soft >= hard:
        raise ValueError(f"soft_time_limit ({soft} s) must be below time_limit ({hard} s)")
