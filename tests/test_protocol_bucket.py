"""The token bucket against a reference model, plus the bound it promises: over any interval of
length T, at most burst + rate·T tokens are granted."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol.bucket import TokenBucket
from jobrelay.protocol.errors import ConfigError

RATES = st.sampled_from([0.5, 1.0, 10.0, 250.0])
BURSTS = st.sampled_from([1.0, 2.0, 5.0, 100.0])
STEPS = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 3.0, -0.5]), st.integers(0, 8), st.booleans()
    ),
    max_size=60,
)


@given(rate=RATES, burst=BURSTS, steps=STEPS)
def test_bucket_matches_model_and_never_grants_beyond_its_bound(
    rate: float, burst: float, steps: list[tuple[float, int, bool]]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    tokens, last, now = burst, 0.0, 0.0
    granted: list[tuple[float, int]] = []  # (the bucket's time: the latest seen, tokens granted)
    for dt, n, partial in steps:
        now += dt  # a negative step is a clock going back: it must add nothing
        if now > last:
            tokens, last = min(burst, tokens + (now - last) * rate), now
        assert bucket.available(now) == pytest.approx(tokens)
        if partial:
            got = bucket.take_up_to(n, now)
            assert got == min(n, int(tokens + 1e-9)) or got == min(n, int(tokens))
            tokens -= got
        else:
            ok = bucket.try_take(n, now)
            assert ok == (n <= tokens + 1e-9) or ok == (n <= tokens)
            got = n if ok else 0
            tokens -= got
        assert tokens >= -1e-9
        granted.append((last, got))
    times = sorted({t for t, _ in granted})
    for i, start in enumerate(times):
        for end in times[i:]:
            total = sum(g for t, g in granted if start <= t <= end)
            assert total <= burst + rate * (end - start) + 1e-6


@given(rate=RATES, burst=BURSTS, drain=st.integers(0, 100), n=st.integers(1, 100))
def test_waiting_wait_time_is_enough(rate: float, burst: float, drain: int, n: int) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    bucket.take_up_to(drain, 0.0)
    wait = bucket.wait_time(n, 0.0)
    if n > burst:
        assert wait == math.inf
    else:
        assert bucket.try_take(n, wait + 1e-9)


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0), (-1, 1), (math.inf, 1), (1, math.nan), (True, 1)])
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError, match="TokenBucket"):
        TokenBucket(rate, burst, now=0.0)
