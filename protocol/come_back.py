# When a refused connection should come back: the schedule behind the facilitator's
# "503 Service Unavailable, Retry-After: N" (PROTOCOL.md §3.1), sans-I/O (time is an argument).
#
# Why: in a reconnect storm the facilitator admits workers at the pace it finishes handshakes.
# A worker that is only reset backs off blindly (full jitter, doubling to 30 s): early on most
# retries are refused again, each costing both ends a connection, and late on admission slots
# stand idle while workers sleep out long backoffs. Telling each refused worker a distinct time,
# spaced at the rate workers are being admitted, turns the storm into a queue.
# Invariants:
# - Successive hints point at successive slots ``1 / rate`` seconds apart, never before now.
# - ``rate`` is 1.25 × the admissions per second measured over the last ``window`` seconds, never
#   below ``floor``: workers are asked back a little faster than they are taken, so a facilitator
#   that could take more finds out, and one that takes fewer refuses the surplus again (each
#   refusal gets a later slot). The floor is optimistic (500/s, about what one core finishes)
#   because the two errors differ: asking back too early costs a worker one more refusal, too
#   late leaves the facilitator idle while workers wait (measured with a floor of 100/s: a
#   10,000-worker storm spread over 100 s, twice what the facilitator needed).
# - Hints are whole seconds (Retry-After's unit), at least 1 and at most ``cap``; the worker
#   spreads its return over the following second.
from __future__ import annotations

import math
from collections import deque

__all__ = ["MOST_RETRY_AFTER", "ComeBackSchedule", "come_back_delay", "parse_retry_after"]


class ComeBackSchedule:
    """Hands each refused connection a time to come back (see the module invariants)."""

    def __init__(self, *, floor: float = 500.0, cap: float = 120.0, window: float = 5.0) -> None:
        if floor <= 0 or cap < 1 or window <= 0:
            raise ValueError("ComeBackSchedule: floor and window must be > 0, cap ≥ 1")
        self.floor = floor
        self.cap = cap
        self.window = window
        self._admitted: deque[tuple[int, int]] = deque()  # (whole second, admissions in it)
        self._next = 0.0  # the last slot handed out

    def admitted(self, now: float) -> None:
        """A refused-or-not connection was admitted (its handshake finished) at ``now``."""
        second = int(now)
        if self._admitted and self._admitted[-1][0] == second:
            self._admitted[-1] = (second, self._admitted[-1][1] + 1)
        else:
            self._admitted.append((second, 1))
        self._forget(now)

    def rate(self, now: float) -> float:
        """Slots per second to hand out now."""
        self._forget(now)
        measured = sum(count for _, count in self._admitted) / self.window
        return max(self.floor, 1.25 * measured)

    def hint(self, now: float) -> int:
        """Seconds the connection refused at ``now`` should wait (Retry-After)."""
        self._next = max(self._next, now) + 1.0 / self.rate(now)
        if self._next - now > self.cap:
            self._next = now + self.cap  # a queue longer than cap: the rest come back at the cap
        return max(1, min(math.ceil(self._next - now), int(self.cap)))

    def _forget(self, now: float) -> None:
        oldest = now - self.window
        while self._admitted and self._admitted[0][0] < oldest:
            self._admitted.popleft()


MOST_RETRY_AFTER = 120.0
"""The longest Retry-After a worker honours (seconds): a peer cannot park it for longer."""


def come_back_delay(hint: float, rand: float) -> float:
    """A worker's wait after a Retry-After of ``hint`` seconds: the hint (at most
    ``MOST_RETRY_AFTER``) plus ``rand`` (uniform in [0, 1)) of a second, so the workers handed
    the same whole second arrive spread across it."""
    return min(max(hint, 0.0), MOST_RETRY_AFTER) + rand


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After's delay-seconds (RFC 9110 §10.2.3) as a float, or None when absent or not a
    plain non-negative integer (an HTTP-date is not used by the facilitator and is ignored)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        return None
    return float(int(text))
