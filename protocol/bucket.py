# Token bucket, sans-I/O: the caller passes the time; nothing here sleeps or reads a clock.
# Invariants: tokens never exceed ``burst`` and never go below 0; over any interval of length T
# the bucket grants at most ``burst + rate * T`` tokens; a take either takes all it asks or
# nothing; time going backwards (a caller's clock step) adds no tokens.
from __future__ import annotations

import math

from jobrelay.protocol.errors import ConfigError

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (it starts full).

    Use: ``if bucket.try_take(n, now): go`` else wait ``bucket.wait_time(n, now)`` seconds (or
    refuse). A request larger than ``burst`` can never be granted: ``wait_time`` is ``inf``.
    """

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        """Raises:
        ConfigError: rate or burst is not a positive, finite number.
        """
        for name, value in (("rate", rate), ("burst", burst)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"TokenBucket.{name}: expected a positive, finite number, got {value!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at = now

    def available(self, now: float) -> float:
        """Tokens that could be taken at ``now``."""
        self._refill(now)
        return self._tokens

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if they are all there; else take none."""
        self._refill(now)
        if n <= self._tokens:
            self._tokens -= n
            return True
        return False

    def take_up_to(self, n: int, now: float) -> int:
        """Take as many whole tokens as are there, at most ``n``; how many were taken."""
        self._refill(now)
        granted = min(n, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait_time(self, n: float, now: float) -> float:
        """Seconds from ``now`` until ``n`` tokens are there (0: now; inf: more than burst)."""
        self._refill(now)
        if n > self.burst:
            return math.inf
        return max(0.0, (n - self._tokens) / self.rate)

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
