# argparse types for the command's plain flags (those not in the settings registry): a bad value
# is refused by argparse itself (usage, one error line, exit 2) before anything runs, instead of
# a hang (nan seconds), a traceback (1e400 seconds) or a demo that fails late.
from __future__ import annotations

import argparse
import math
import threading
from collections.abc import Callable

from jobrelay.protocol.retries import MAX_BACKOFF
from jobrelay.protocol.time_limits import MAX_LIMIT_SECONDS

__all__ = ["backoff_seconds", "count", "limit_seconds", "seconds"]


def seconds(text: str) -> float:
    """A number of seconds: finite, ≥ 0 and no longer than a thread can wait.

    Raises:
        argparse.ArgumentTypeError: anything else (``nan``, ``inf``, ``-1``, ``1e400``, ``soon``).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= threading.TIMEOUT_MAX):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds ≥ 0 (at most {threading.TIMEOUT_MAX:.0f}), got {text!r}"
        )
    return value


def limit_seconds(text: str) -> float:
    """A job's time limit: seconds, more than 0 and at most a year (what a job request carries).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_LIMIT_SECONDS):
        raise argparse.ArgumentTypeError(
            f"expected seconds more than 0 and at most {MAX_LIMIT_SECONDS:.0f}, got {text!r}"
        )
    return value


def backoff_seconds(text: str) -> float:
    """A retry backoff: seconds, 0 up to a day (what a job request carries).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    value = seconds(text)
    if value > MAX_BACKOFF:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BACKOFF:.0f} seconds, got {text!r}")
    return value


def count(low: int = 1, high: int = 1 << 31) -> Callable[[str], int]:
    """An integer type in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {value}")
        return value

    parse.__name__ = "count"
    return parse
