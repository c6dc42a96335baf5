# Throttling of outgoing data messages: a token bucket (one token a message) between the Outbox's
# hand-over and the session. A plain class the Connection owns; no threads, time passed in.
# Invariants: items leave in the order they came (seqs stay contiguous for the session); what is
# held belongs to the current session only (``clear`` on its end: the Outbox replays it from the
# next session's resume point, so nothing held is ever lost); the hold is bounded by the Outbox's
# hand-over limit, not here.
from __future__ import annotations

from collections import deque
from typing import Any

from jobrelay.protocol.bucket import TokenBucket

__all__ = ["SendThrottle"]


class SendThrottle:
    """Lets data messages through at ``rate`` a second (bursts of ``burst``), holding the rest.

    Attributes:
        throttled: messages that had to wait for a token (the owner reads and resets it).
    """

    def __init__(self, rate: float | None, burst: int, *, now: float) -> None:
        self._bucket = None if rate is None else TokenBucket(rate, burst, now=now)
        self._held: deque[tuple[int, Any]] = deque()
        self.throttled = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def offer(self, items: list[tuple[int, Any]], now: float) -> list[tuple[int, Any]]:
        """New items from the Outbox; returns those that may be sent now, in order."""
        if self._bucket is None:
            return items
        self._held.extend(items)
        ready = self.release(now)
        self.throttled += min(len(items), len(self._held))  # the new ones that must wait
        return ready

    def release(self, now: float) -> list[tuple[int, Any]]:
        """Items whose tokens have come, in order."""
        if self._bucket is None or not self._held:
            return []
        n = self._bucket.take_up_to(len(self._held), now)
        return [self._held.popleft() for _ in range(n)]

    def next_release(self, now: float) -> float | None:
        """Seconds until the next held item may go (None: nothing is held)."""
        if self._bucket is None or not self._held:
            return None
        return self._bucket.wait_time(1, now)

    def clear(self) -> None:
        """The session ended: drop what is held (the Outbox replays it)."""
        self._held.clear()
