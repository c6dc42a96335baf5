# Reconnect delays, pure: randomness is an argument so tests (and the sans-I/O layer) stay exact.
from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["ReconnectPolicy", "full_jitter", "full_jitter_delays"]


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


class ReconnectPolicy:
    """When to try connecting again after a failure (sans-I/O: time and randomness are arguments).

    Consecutive failures back off with full jitter; a session that held for ``stable_after``
    seconds counts as a success, so the next failure starts afresh (one that opens and fails at
    once, like a poisoned stream or a peer that keeps refusing, keeps backing off); after
    ``max_attempts`` consecutive failures it gives up (None: never).
    """

    def __init__(
        self, *, base: float, cap: float, max_attempts: int | None = None, stable_after: float = 10.0
    ) -> None:
        self.base = base
        self.cap = cap
        self.max_attempts = max_attempts
        self.stable_after = stable_after
        self.failures = 0
        self._opened_at: float | None = None

    def opened(self, now: float) -> None:
        """A session opened at ``now``."""
        self._opened_at = now

    def closed(self, now: float) -> None:
        """The open session ended at ``now``."""
        opened_at, self._opened_at = self._opened_at, None
        if opened_at is not None and now - opened_at >= self.stable_after:
            self.failures = 0

    def next_delay(self, rand: float) -> float | None:
        """Count a failure; the delay before the next attempt, or None to give up.

        Args:
            rand: a uniform random number in [0, 1), injected by the caller.
        """
        self.failures += 1
        if self.max_attempts is not None and self.failures >= self.max_attempts:
            return None
        return full_jitter(self.failures - 1, base=self.base, cap=self.cap, rand=rand)
