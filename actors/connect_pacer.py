# When the Connection tries to connect: the circuit breaker decides whether to try at all, the
# full-jitter backoff decides when; they never nest (a refused try is not a retry, and nothing
# here retries). A plain class the Connection actor owns, so it is tested without threads.
# Invariants:
# - While the breaker is CLOSED, delays are the backoff's full jitter (cap backoff_cap).
# - Once it is OPEN, the next attempt is its half-open probe: the rest of the recovery timeout,
#   plus full jitter over one recovery timeout, so a fleet that failed together does not
#   probe together and the backoff's growth cannot push the return beyond ~2 recovery timeouts.
# - Every breaker transition is logged once and handed to ``on_transition`` (for Metrics).
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from jobrelay.actors.config import WorkerConfig
from jobrelay.protocol.backoff import ReconnectPolicy
from jobrelay.protocol.breaker import BreakerState, CircuitBreaker, Transition
from jobrelay.protocol.come_back import come_back_delay

__all__ = ["BreakerStatus", "ConnectPacer"]


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The connection breaker as /healthz, ``jobrelay status`` and tests see it."""

    state: str
    since: float
    trips: int
    retry_at: float | None  # when OPEN: when the next probe may go


class ConnectPacer:
    """Decides whether and when the Connection makes its next connection attempt.

    Args:
        backoff: the reconnect delays (full jitter) and the give-up rule.
        breaker: the connection breaker; an attempt's outcome is a success once a session opens.
        log: a loguru logger bound to the worker.
        on_transition: called with each breaker transition (the Connection tells Metrics).
    """

    def __init__(
        self,
        backoff: ReconnectPolicy,
        breaker: CircuitBreaker,
        log: Any,
        on_transition: Callable[[Transition], None],
    ) -> None:
        self.backoff = backoff
        self.breaker = breaker
        self._log = log
        self._on_transition = on_transition

    @classmethod
    def for_config(
        cls, config: WorkerConfig, log: Any, on_transition: Callable[[Transition], None], now: float
    ) -> ConnectPacer:
        """The pacer of a worker: its backoff settings and its connection breaker."""
        backoff = ReconnectPolicy(
            base=config.backoff_base, cap=config.backoff_cap, max_attempts=config.max_attempts
        )
        return cls(backoff, CircuitBreaker(config.breaker_config(), now=now), log, on_transition)

    def wait_before_try(self, now: float) -> float:
        """0 to try now (a half-open breaker's trial slot is then taken), else seconds to wait."""
        allowed = self.breaker.allow(now)
        self._publish()
        if allowed:
            return 0.0
        return max(0.0, self.breaker.retry_at(now) - now) or self.breaker.config.recovery_timeout

    def retry_delay(
        self, now: float, rand: float, *, failed_attempt: bool, hint: float | None = None
    ) -> float | None:
        """Seconds before the next attempt after a failure or a closed session (None: give up).

        Args:
            rand: uniform in [0, 1), for the jitter.
            failed_attempt: the attempt never opened a session (the breaker counts it); a session
                that opened and later closed is not a failed attempt.
            hint: the facilitator was busy and said when to come back (its Retry-After, seconds):
                that, spread over the following second, replaces the backoff's delay (the
                attempt still counts towards ``max_attempts``).
        """
        if failed_attempt:
            self.breaker.record_failure(now)
            self._publish()
        delay = self.backoff.next_delay(rand)  # counts the failure (and gives up after max_attempts)
        if delay is not None and hint is not None:
            delay = come_back_delay(hint, rand)
        if delay is None or self.breaker.state(now) is not BreakerState.OPEN:
            return delay
        # Open: the probe waits out the breaker, then full jitter over one recovery timeout.
        return self.breaker.retry_at(now) - now + rand * self.breaker.config.recovery_timeout

    def opened(self, now: float) -> None:
        self.backoff.opened(now)
        self.breaker.record_success(now)
        self._publish()

    def closed(self, now: float) -> None:
        self.backoff.closed(now)

    def status(self, now: float) -> BreakerStatus:
        state = self.breaker.state(now)
        self._publish()
        return BreakerStatus(
            state=state.value,
            since=self.breaker.since,
            trips=self.breaker.trips,
            retry_at=self.breaker.retry_at(now) if state is BreakerState.OPEN else None,
        )

    def _publish(self) -> None:
        for step in self.breaker.transitions():
            # The trip is the news; each failed probe of a long outage reopening it is routine.
            level = "WARNING" if step.before is BreakerState.CLOSED else "INFO"
            extra = ""
            if step.after is BreakerState.OPEN:
                extra = f"; no connection attempt for {self.breaker.config.recovery_timeout:g}s"
            self._log.bind(breaker=step.after.value).log(
                level,
                "connection breaker {} → {}: {}{}",
                step.before.value,
                step.after.value,
                step.reason,
                extra,
            )
            self._on_transition(step)
