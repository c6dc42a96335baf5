# Circuit breaker, sans-I/O: time is an argument of every call, nothing here reads a clock,
# sleeps or retries. The breaker only answers "may I try now?" and learns each outcome; when to
# try again is the caller's backoff (protocol/backoff.py), so the two never nest.
# Invariants:
# - CLOSED → OPEN after ``failure_threshold`` consecutive failures, or when a failure ratio over
#   the sliding window reaches ``failure_ratio`` (with at least ``min_calls`` outcomes in it).
# - OPEN refuses everything until ``recovery_timeout`` has passed since it opened; then it is
#   HALF_OPEN, which admits at most ``half_open_max`` trials at once, closes after
#   ``success_threshold`` successes there, and reopens (a new full recovery_timeout) on any failure.
# - Every state change is recorded once as a Transition, in order, for the owner to log and count.
from __future__ import annotations

import enum
import math
from collections import deque
from typing import NamedTuple

import msgspec

from jobrelay.protocol.errors import ConfigError

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "Transition"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Transition(NamedTuple):
    """One state change: ``before`` → ``after`` at ``at`` seconds, and why."""

    before: BreakerState
    after: BreakerState
    at: float
    reason: str


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker opens and how it recovers.

    Attributes:
        failure_threshold: consecutive failures that open a closed breaker.
        recovery_timeout: seconds an open breaker refuses everything before it lets trials through.
        success_threshold: successes in HALF_OPEN that close it.
        half_open_max: trials HALF_OPEN admits at once (outcomes not yet recorded).
        failure_ratio: also open when failures / outcomes in the last ``window`` seconds reach this
            (None: consecutive failures only).
        window: the sliding window of ``failure_ratio``, seconds.
        min_calls: outcomes the window must hold before the ratio counts.
    """

    failure_threshold: int = 5
    recovery_timeout: float = 2.0
    success_threshold: int = 1
    half_open_max: int = 1
    failure_ratio: float | None = None
    window: float = 60.0
    min_calls: int = 10

    def check(self, owner: str = "BreakerConfig") -> None:
        """Raises:
        ConfigError: naming the first field out of range.
        """
        for name in ("failure_threshold", "success_threshold", "half_open_max", "min_calls"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
                raise ConfigError(f"{owner}.{name}: expected an integer from 1 to 1000000, got {value!r}")
        for name in ("recovery_timeout", "window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ConfigError(
                    f"{owner}.{name}: expected a positive, finite number of seconds, got {value!r}"
                )
        ratio = self.failure_ratio
        if ratio is not None and (not isinstance(ratio, int | float) or not 0 < ratio <= 1):
            raise ConfigError(f"{owner}.failure_ratio: expected a number in (0, 1] or None, got {ratio!r}")


class CircuitBreaker:
    """A circuit breaker driven by the caller's clock.

    Use: ``if breaker.allow(now): try…; breaker.record_success(now) / record_failure(now)``,
    else fail fast (``retry_at(now)`` says when a trial will be allowed). Read
    ``transitions()`` after each call to log and count what changed.

    Attributes:
        trips: times it opened from CLOSED (a failed trial reopening it is not a new trip).
        reopened: times a failure in HALF_OPEN reopened it.
    """

    def __init__(self, config: BreakerConfig | None = None, *, now: float = 0.0) -> None:
        self.config = config or BreakerConfig()
        self.config.check()
        self._state = BreakerState.CLOSED
        self._since = now
        self._failures = 0  # consecutive, in CLOSED
        self._successes = 0  # in HALF_OPEN
        self._trials = 0  # admitted in HALF_OPEN and not yet recorded
        self._outcomes: deque[tuple[float, bool]] = deque()  # (at, failed) within the window
        self._window_failures = 0
        self._pending: list[Transition] = []
        self.trips = 0
        self.reopened = 0

    # ------------------------------------------------------------ queries

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an OPEN breaker whose recovery timeout passed is HALF_OPEN)."""
        self._advance(now)
        return self._state

    @property
    def since(self) -> float:
        """When the current state began (as of the last call)."""
        return self._since

    def retry_at(self, now: float) -> float:
        """When a trial may be tried: ``now`` unless OPEN, then the end of its recovery timeout."""
        if self.state(now) is BreakerState.OPEN:
            return self._since + self.config.recovery_timeout
        return now

    def transitions(self) -> list[Transition]:
        """The state changes since the last call, oldest first."""
        pending, self._pending = self._pending, []
        return pending

    # ------------------------------------------------------------ inputs

    def allow(self, now: float) -> bool:
        """Whether to try now; in HALF_OPEN an allowed trial holds a slot until its outcome."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._trials < self.config.half_open_max:
            self._trials += 1
            return True
        return False

    def record_success(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._failures = 0
            self._note(now, failed=False)
        elif state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._move(BreakerState.CLOSED, now, f"{self._successes} trial(s) succeeded")
        # OPEN: the outcome of something admitted before it opened says nothing new.

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._failures += 1
            self._note(now, failed=True)
            if self._failures >= self.config.failure_threshold:
                self.trips += 1
                self._move(BreakerState.OPEN, now, f"{self._failures} consecutive failures")
            elif self._ratio_reached():
                self.trips += 1
                seen = len(self._outcomes)
                self._move(BreakerState.OPEN, now, f"{self._window_failures} of {seen} failed in the window")
        elif state is BreakerState.HALF_OPEN:
            self.reopened += 1
            self._move(BreakerState.OPEN, now, "a trial failed")

    # ------------------------------------------------------------ internals

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._since + self.config.recovery_timeout:
            self._move(
                BreakerState.HALF_OPEN, self._since + self.config.recovery_timeout, "recovery timeout passed"
            )

    def _move(self, state: BreakerState, now: float, reason: str) -> None:
        self._pending.append(Transition(self._state, state, now, reason))
        self._state, self._since = state, now
        self._failures = self._successes = self._trials = 0
        if state is BreakerState.CLOSED:
            self._outcomes.clear()
            self._window_failures = 0

    def _note(self, now: float, *, failed: bool) -> None:
        if self.config.failure_ratio is None:
            return
        self._outcomes.append((now, failed))
        self._window_failures += failed
        horizon = now - self.config.window
        while self._outcomes and self._outcomes[0][0] <= horizon:
            _, old = self._outcomes.popleft()
            self._window_failures -= old

    def _ratio_reached(self) -> bool:
        ratio = self.config.failure_ratio
        seen = len(self._outcomes)
        return ratio is not None and seen >= self.config.min_calls and self._window_failures >= ratio * seen
