"""The circuit breaker against a reference model: random outcomes, random clocks.

The model is written the slow, obvious way (a full list of outcomes since the last close, states
derived from timestamps) so that it can be trusted by reading it; the breaker must agree with it
after every step on the state, whether a try is allowed, when a trial may come, and the trips.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from jobrelay.protocol.breaker import BreakerConfig, BreakerState, CircuitBreaker
from jobrelay.protocol.errors import ConfigError

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Model:
    """The breaker's contract, restated plainly."""

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.state = CLOSED
        self.opened_at = 0.0
        self.history: list[tuple[float, bool]] = []  # every (at, failed) recorded in CLOSED
        self.half_successes = 0
        self.in_trial = 0
        self.trips = 0
        self.log: list[tuple[BreakerState, BreakerState]] = []

    def at(self, now: float) -> BreakerState:
        # The sum, not now - opened_at: in floats 1.4 - 0.4 < 1.0, and retry_at() promises trials
        # from opened_at + recovery_timeout on (hypothesis found the difference).
        if self.state is OPEN and now >= self.opened_at + self.cfg.recovery_timeout:
            self.go(HALF)
        return self.state

    def go(self, state: BreakerState) -> None:
        self.log.append((self.state, state))
        self.state = state
        self.half_successes = self.in_trial = 0

    def open(self, now: float) -> None:
        self.go(OPEN)
        self.opened_at = now
        self.history = []

    def allow(self, now: float) -> bool:
        state = self.at(now)
        if state is CLOSED:
            return True
        if state is HALF and self.in_trial < self.cfg.half_open_max:
            self.in_trial += 1
            return True
        return False

    def outcome(self, now: float, failed: bool) -> None:
        state = self.at(now)
        if state is CLOSED:
            self.history.append((now, failed))
            streak = 0
            for _, f in reversed(self.history):
                if not f:
                    break
                streak += 1
            recent = [f for t, f in self.history if t > now - self.cfg.window]
            ratio_hit = (
                self.cfg.failure_ratio is not None
                and failed
                and len(recent) >= self.cfg.min_calls
                and sum(recent) >= self.cfg.failure_ratio * len(recent)
            )
            if streak >= self.cfg.failure_threshold or ratio_hit:
                self.trips += 1
                self.open(now)
        elif state is HALF:
            if failed:
                self.open(now)
            else:
                self.in_trial = max(0, self.in_trial - 1)
                self.half_successes += 1
                if self.half_successes >= self.cfg.success_threshold:
                    self.go(CLOSED)
                    self.history = []


CONFIGS = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 6),
    recovery_timeout=st.sampled_from([0.5, 1.0, 2.5]),
    success_threshold=st.integers(1, 3),
    half_open_max=st.integers(1, 3),
    failure_ratio=st.none() | st.sampled_from([0.25, 0.5, 1.0]),
    window=st.sampled_from([1.0, 5.0]),
    min_calls=st.integers(1, 6),
)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.breaker = CircuitBreaker()
        self.model = Model(BreakerConfig())

    @initialize(cfg=CONFIGS)
    def configure(self, cfg: BreakerConfig) -> None:
        self.breaker = CircuitBreaker(cfg, now=self.now)
        self.model = Model(cfg)

    @rule(dt=st.sampled_from([0.0, 0.1, 0.4, 0.5, 1.0, 2.5, 7.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        assert self.breaker.allow(self.now) == self.model.allow(self.now)

    @rule(failed=st.booleans())
    def outcome(self, failed: bool) -> None:
        if failed:
            self.breaker.record_failure(self.now)
        else:
            self.breaker.record_success(self.now)
        self.model.outcome(self.now, failed)

    @invariant()
    def agrees(self) -> None:
        event(f"state {self.model.state.value}")
        assert self.breaker.state(self.now) is self.model.at(self.now)
        assert self.breaker.trips == self.model.trips
        logged = [(t.before, t.after) for t in self.breaker.transitions()]
        want, self.model.log = self.model.log, []
        assert logged == want
        if self.model.state is OPEN:
            assert self.breaker.retry_at(self.now) == self.model.opened_at + self.model.cfg.recovery_timeout
            assert not self.breaker.allow(self.now)
        else:
            assert self.breaker.retry_at(self.now) == self.now


def test_breaker_matches_model() -> None:
    run_state_machine_as_test(BreakerMachine)


def test_breaker_cycle_is_logged_in_order() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, recovery_timeout=5.0, success_threshold=2))
    breaker.record_failure(1.0)
    assert breaker.state(1.0) is CLOSED
    breaker.record_failure(2.0)
    assert breaker.state(2.0) is OPEN and not breaker.allow(6.9)
    assert breaker.retry_at(3.0) == 7.0
    assert breaker.allow(7.0)  # the one half-open trial
    assert not breaker.allow(7.0)  # no second trial at once
    breaker.record_success(7.5)
    assert breaker.state(7.5) is HALF and breaker.allow(7.5)
    breaker.record_success(8.0)
    assert breaker.state(8.0) is CLOSED
    steps = [(t.before.value, t.after.value, t.at) for t in breaker.transitions()]
    assert steps == [("closed", "open", 2.0), ("open", "half_open", 7.0), ("half_open", "closed", 8.0)]
    assert breaker.trips == 1


def test_failed_trial_reopens_for_a_full_recovery_timeout() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, recovery_timeout=2.0))
    breaker.record_failure(0.0)
    assert breaker.allow(2.0)
    breaker.record_failure(3.0)
    assert breaker.state(3.0) is OPEN and breaker.retry_at(3.0) == 5.0
    assert breaker.trips == 1 and breaker.reopened == 1


def test_failure_ratio_opens_without_a_streak() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=100, failure_ratio=0.5, window=10.0, min_calls=4)
    )
    for i, failed in enumerate([False, True, False, True]):
        (breaker.record_failure if failed else breaker.record_success)(float(i))
    assert breaker.state(4.0) is OPEN
    assert "2 of 4 failed" in breaker.transitions()[0].reason


@given(
    field=st.sampled_from(["failure_threshold", "success_threshold", "half_open_max", "min_calls"]),
    value=st.sampled_from([0, -1, 1.5, True, 10**7]),
)
def test_bad_counts_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CircuitBreaker(BreakerConfig(**{field: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["recovery_timeout", "window"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_bad_durations_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        CircuitBreaker(BreakerConfig(**{field: value}))  # type: ignore[arg-type]
