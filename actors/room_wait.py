# Publishes waiting, in the order they were made, for room in a full outbox (the Publisher's
# queue; see actors/publisher.py), each with the time it fails if no room comes.
# Invariants: order is the publishing order; a job's terminal status never expires (the job must
# end exactly once, so it waits for the facilitator to free room).
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from jobrelay.actors.actor_messages import Publish
from jobrelay.protocol.messages import JobStatusUpdate

__all__ = ["Waiting", "WaitingForRoom"]

Waiting = list[tuple[float, Publish]]  # (deadline, publish), in publishing order


class WaitingForRoom:
    """The queue, and when each of its publishes fails."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self._timeout = timeout
        self._clock = clock
        self._queue: Waiting = []

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, publishes: Sequence[Publish]) -> None:
        """Queue ``publishes`` behind those already waiting."""
        now = self._clock()
        for publish in publishes:
            body = publish.body
            terminal = isinstance(body, JobStatusUpdate) and body.status.terminal
            self._queue.append((math.inf if terminal else now + self._timeout, publish))

    def publishes(self) -> list[Publish]:
        return [p for _, p in self._queue]

    def take(self, count: int | None = None) -> Waiting:
        """Remove and return the first ``count`` (all when None), deadlines kept."""
        count = len(self._queue) if count is None else count
        taken, self._queue = self._queue[:count], self._queue[count:]
        return taken

    def restore(self, front: Waiting, rest: Waiting) -> None:
        """Make the queue ``front`` then ``rest`` (what take() removed, back in its order)."""
        self._queue = front + rest

    def expire(self, now: float) -> list[Publish]:
        """Remove and return the publishes whose deadline has passed."""
        expired = [p for deadline, p in self._queue if deadline <= now]
        if expired:
            self._queue = [(d, p) for d, p in self._queue if d > now]
        return expired
