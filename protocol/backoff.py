# Reconnect delays, pure: randomness is an argument so tests (and the sans-I/O layer) stay exact.
from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["full_jitter", "full_jitter_delays"]


def full_jitter(attempt: int, *, base: float, cap: float, rand: float) -> float:
    """AWS "full jitter": a uniform delay in [0, min(cap, base * 2**attempt)).

    Args:
        attempt: failed attempts so far (0 for the first retry).
        rand: a uniform random number in [0, 1), injected by the caller.
    """
    ceiling = cap if attempt >= 64 else min(cap, base * 2.0**attempt)
    return rand * ceiling


def full_jitter_delays(
    *, base: float, cap: float, random: Callable[[], float], max_attempts: int | None = None
) -> Iterator[float]:
    """Successive reconnect delays; ends after ``max_attempts`` (None: never ends)."""
    attempt = 0
    while max_attempts is None or attempt < max_attempts:
        yield full_jitter(attempt, base=base, cap=cap, rand=random())
        attempt += 1
