# The caller's side of call limits: at most ``max_in_flight`` calls outstanding and a token bucket
# on starting them. Used from any caller thread (thread-safe); a limited caller either waits (up
# to its call's deadline) or gets CallThrottled at once — its choice.
# Invariants: every acquire that returned is matched by exactly one release; the bucket is the
# sans-I/O TokenBucket, fed this process's monotonic clock.
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from jobrelay.protocol.bucket import TokenBucket
from jobrelay.protocol.calls import CallThrottled, CallTimeout

__all__ = ["CallGate"]


class CallGate:
    """Admits calls: a concurrency limit and an optional rate (calls a second, bursts of ``burst``).

    Args:
        on_limited: called with "calls_throttled" (refused) or "calls_waited" (waited for room).
    """

    def __init__(
        self,
        max_in_flight: int,
        rate: float | None,
        burst: int,
        on_limited: Callable[[str], object] = lambda name: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._bucket = None if rate is None else TokenBucket(rate, burst, now=clock())
        self._cond = threading.Condition()
        self._in_flight = 0
        self._on_limited = on_limited

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self, *, wait: bool, timeout: float) -> None:
        """Take a slot (and a token).

        Raises:
            CallThrottled: limited and ``wait`` is false.
            CallTimeout: limited for longer than ``timeout`` seconds.
        """
        deadline = self._clock() + timeout
        waited = False
        with self._cond:
            while True:
                now = self._clock()
                delay = 0.0
                if self._in_flight >= self.max_in_flight:
                    delay = deadline - now  # woken by a release
                elif self._bucket is not None and not self._bucket.try_take(1, now):
                    delay = self._bucket.wait_time(1, now)
                else:
                    self._in_flight += 1
                    break
                if not wait:
                    self._on_limited("calls_throttled")
                    limit = "calls in flight" if self._in_flight >= self.max_in_flight else "call rate"
                    raise CallThrottled(f"{limit} limit reached")
                if now >= deadline:
                    raise CallTimeout(f"no room to start the call within {timeout:g}s")
                waited = True
                self._cond.wait(min(delay, deadline - now))
        if waited:
            self._on_limited("calls_waited")

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()
