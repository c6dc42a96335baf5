"""The connection's circuit breaker: the pacing rules with a fake clock, then a real worker over
real sockets through the fault proxy (refused connects open the breaker, no attempt while it is
open, probes paced by the recovery timeout rather than the backoff cap, closed once the
facilitator is back)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from loguru import logger

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.actors.connect_pacer import ConnectPacer
from jobrelay.actors.health import WorkerHealth
from jobrelay.actors.worker import Worker
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.backoff import ReconnectPolicy
from jobrelay.protocol.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from jobrelay.protocol.come_back import MOST_RETRY_AFTER
from jobrelay.testing.proxy import TcpProxy
from tests.facilitator_client import KEYS, wait_until
from tests.protocol_harness import FACILITATOR_PUBLIC


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def pacer(
    threshold: int = 3, recovery: float = 2.0, cap: float = 30.0
) -> tuple[ConnectPacer, list[Transition]]:
    seen: list[Transition] = []
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=threshold, recovery_timeout=recovery))
    return ConnectPacer(ReconnectPolicy(base=0.5, cap=cap), breaker, logger, seen.append), seen


def test_open_breaker_paces_probes_by_its_recovery_timeout_not_the_backoff_cap() -> None:
    p, seen = pacer(threshold=3, recovery=2.0, cap=30.0)
    now = 0.0
    for _ in range(2):
        assert p.wait_before_try(now) == 0.0
        delay = p.retry_delay(now, 0.999, failed_attempt=True)
        assert delay is not None and delay < 2.0  # plain backoff while closed
        now += delay
    assert p.wait_before_try(now) == 0.0
    delay = p.retry_delay(now, 0.999, failed_attempt=True)  # third failure: open
    assert [(t.before, t.after) for t in seen] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert delay is not None and 2.0 <= delay < 4.0
    assert p.wait_before_try(now + 1.0) == pytest.approx(1.0)  # still open: no attempt
    for _ in range(20):  # a long outage: each failed probe reopens it; the backoff cap never shows
        now += delay
        assert p.wait_before_try(now) == 0.0
        delay = p.retry_delay(now, 0.999, failed_attempt=True)
        assert delay is not None and 2.0 <= delay < 4.0
    now += delay
    assert p.wait_before_try(now) == 0.0
    p.opened(now)
    assert p.status(now).state == "closed"
    assert seen[-1].after is BreakerState.CLOSED and p.breaker.trips == 1 and p.breaker.reopened == 20


def test_probe_jitter_spreads_a_fleet_that_failed_together() -> None:
    """Workers whose breakers opened at the same instant probe at different instants."""
    probes = []
    for i in range(100):
        p, _ = pacer(threshold=1, recovery=2.0)
        delay = p.retry_delay(0.0, i / 100, failed_attempt=True)
        assert delay is not None
        probes.append(delay)
    assert min(probes) >= 2.0 and max(probes) < 4.0
    assert len({round(d, 2) for d in probes}) > 90


def test_a_session_that_closes_after_opening_is_not_a_failed_attempt() -> None:
    p, seen = pacer(threshold=1)
    p.opened(0.0)
    p.closed(100.0)
    p.retry_delay(100.0, 0.5, failed_attempt=False)
    assert p.status(100.0).state == "closed" and not seen


def start(proxy: TcpProxy, tmp_path: Path, recovery: float) -> Worker:
    config = WorkerConfig(
        url=proxy.url,
        worker_id="w1",
        key=KEYS["w1"].private_bytes_raw().hex(),
        facilitator_key=FACILITATOR_PUBLIC,
        db_path=str(tmp_path / "w1.db"),
        durability="normal",
        backoff_base=0.05,
        backoff_cap=30.0,
        breaker_failure_threshold=3,
        breaker_recovery_timeout=recovery,
        connect_timeout=2.0,
    )
    return start_worker(config, {})


@pytest.mark.timeout(60)
def test_refused_connects_open_the_breaker_and_recovery_closes_it(fac: Facilitator, tmp_path: Path) -> None:
    recovery = 1.0
    with TcpProxy(("127.0.0.1", fac.port)) as proxy, start(proxy, tmp_path, recovery) as worker:
        worker.wait_connected(10)
        assert worker.connection.breaker().get(timeout=5).state == "closed"
        proxy.refuse(True)
        proxy.cut(rst=True)
        outage = time.monotonic()
        wait_until(lambda: worker.connection.breaker().get(timeout=5).state != "closed", timeout=10)
        opened = time.monotonic()
        health = WorkerHealth(worker).health()
        assert health.body["breaker"]["state"] in ("open", "half_open")
        # An open breaker puts the worker in local mode at once: healthy, but local.
        assert health.healthy and health.body["mode"] == "local", health
        # Keep the facilitator away for several recovery timeouts: probes keep failing.
        wait_until(lambda: time.monotonic() > opened + 4 * recovery, timeout=10)
        proxy.refuse(False)
        back = time.monotonic()
        worker.wait_connected(3 * recovery + 2)
        returned_after = time.monotonic() - back
        status = worker.connection.breaker().get(timeout=5)
        assert status.state == "closed" and status.trips == 1
        snap = worker.snapshot()
        assert snap.counter("breaker_trips") == 1 and snap.breaker == "closed"
        assert snap.counter("breaker_to_half_open") >= 2  # failed probes reopened it
        assert snap.counter("breaker_to_closed") == 1
    attempts = [t for t in proxy.attempts if outage <= t <= back]
    # Once open, attempts come one per probe: never closer than the recovery timeout (no attempt
    # while open), never further apart than two of them (the backoff cap of 30 s never shows).
    probes = [t for t in attempts if t > opened + 0.05]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps, attempts
    assert min(gaps) >= recovery - 0.1, gaps
    assert max(gaps) <= 2 * recovery + 0.5, gaps
    assert returned_after <= 2 * recovery + 0.5


def test_a_busy_facilitator_is_come_back_to_when_it_says_and_does_not_trip_the_breaker() -> None:
    # A 503 with a Retry-After: the hint (plus up to a second of spread) replaces the doubling
    # backoff, and however many there are, the breaker stays closed (the facilitator is up).
    p, seen = pacer(threshold=2, cap=30.0)
    delays = [p.retry_delay(float(i), 0.25, failed_attempt=False, hint=7.0) for i in range(10)]
    assert delays == [7.25] * 10
    assert p.status(10.0).state == "closed" and not seen
    assert p.backoff.failures == 10  # still counted towards max_attempts
    huge = p.retry_delay(11.0, 0.0, failed_attempt=False, hint=1e9)
    assert huge == MOST_RETRY_AFTER  # a peer cannot park a worker for longer
