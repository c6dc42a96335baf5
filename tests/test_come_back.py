"""The facilitator's Retry-After schedule for connections refused in a reconnect storm
(protocol/come_back.py): distinct slots at the rate workers are admitted, whole seconds within
[1, cap], a rate that follows admissions upwards, and the worker's side of it."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol.come_back import (
    MOST_RETRY_AFTER,
    ComeBackSchedule,
    come_back_delay,
    parse_retry_after,
)


def test_a_burst_of_refusals_is_spread_at_the_floor_rate() -> None:
    schedule = ComeBackSchedule(floor=100.0, cap=120.0)
    hints = [schedule.hint(1000.0) for _ in range(1000)]
    assert hints == sorted(hints) and hints[0] == 1 and hints[-1] == 10
    per_second = Counter(hints)
    assert max(per_second.values()) <= 101  # about floor workers asked back per second


def test_the_rate_follows_admissions_with_headroom() -> None:
    schedule = ComeBackSchedule(floor=10.0, window=5.0)
    assert schedule.rate(100.0) == 10.0
    for i in range(2000):  # 400 admitted per second over the window
        schedule.admitted(95.0 + i / 400)
    assert schedule.rate(100.0) == pytest.approx(1.25 * 400, rel=0.01)
    assert schedule.rate(200.0) == 10.0  # admissions long past no longer count


def test_hints_stop_at_the_cap_and_pick_up_from_now_after_a_quiet_spell() -> None:
    schedule = ComeBackSchedule(floor=1.0, cap=30.0)
    hints = [schedule.hint(0.0) for _ in range(100)]
    assert max(hints) == 30 and hints.count(30) > 60
    assert schedule.hint(1000.0) == 1  # the old queue has drained


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 0.5)), max_size=300))
def test_every_hint_is_a_whole_second_within_bounds_and_never_earlier_than_the_last(
    steps: list[tuple[bool, float]],
) -> None:
    schedule = ComeBackSchedule(floor=5.0, cap=60.0)
    now, last_due = 0.0, 0.0
    for admit, gap in steps:
        now += gap
        if admit:
            schedule.admitted(now)
            continue
        hint = schedule.hint(now)
        assert isinstance(hint, int) and 1 <= hint <= 60
        assert now + hint >= last_due - 1  # slots move forward (whole seconds round up)
        last_due = now + hint


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 12 ", 12.0), ("0", 0.0), (None, None), ("", None), ("-1", None), ("1.5", None),
     ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("²", None), ("9" * 20, None)],
)  # fmt: skip
def test_retry_after_is_read_as_whole_seconds_only(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_the_worker_spreads_its_return_over_the_second_and_caps_it() -> None:
    assert come_back_delay(3.0, 0.0) == 3.0 and come_back_delay(3.0, 0.99) == pytest.approx(3.99)
    assert come_back_delay(1e9, 0.5) == MOST_RETRY_AFTER + 0.5
    assert come_back_delay(-5.0, 0.5) == 0.5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        ComeBackSchedule(floor=0.0)
