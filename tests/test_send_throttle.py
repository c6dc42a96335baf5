"""Throttled sending: the SendThrottle's rules, then a worker whose data goes out at send_rate,
in order, with a cut in the middle (what the throttle held is replayed, nothing is lost)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import start_worker
from jobrelay.actors.send_throttle import SendThrottle
from jobrelay.protocol.errors import ConfigError
from jobrelay.protocol.messages import MachineSpecs
from jobrelay.testing import MemoryFacilitator
from tests.test_actors_worker import config, facilitator  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def items(first: int, n: int) -> list[tuple[int, object]]:
    return [(seq, f"body {seq}") for seq in range(first, first + n)]


def test_unlimited_throttle_passes_everything_at_once() -> None:
    throttle = SendThrottle(None, 1, now=0.0)
    assert throttle.offer(items(1, 500), 0.0) == items(1, 500)
    assert throttle.next_release(0.0) is None and throttle.throttled == 0


def test_throttle_lets_a_burst_through_then_the_rate_in_order() -> None:
    throttle = SendThrottle(10.0, 5, now=0.0)
    assert throttle.offer(items(1, 8), 0.0) == items(1, 5)
    assert throttle.held == 3 and throttle.throttled == 3
    assert throttle.next_release(0.0) == pytest.approx(0.1)
    assert throttle.release(0.05) == []
    assert throttle.release(0.2) == items(6, 2)
    throttle.clear()  # the session ended: the Outbox replays from the next resume point
    assert throttle.held == 0 and throttle.next_release(1.0) is None


def test_bad_send_rate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="send_rate"):
        config(tmp_path, send_rate=0.0).check()
    with pytest.raises(ConfigError, match="send_burst"):
        config(tmp_path, send_burst=0).check()


def test_worker_sends_at_send_rate_in_order_across_a_cut(
    tmp_path: Path,
    facilitator: MemoryFacilitator,  # noqa: F811
) -> None:
    rate, burst, n = 100.0, 10, 150
    with start_worker(
        config(tmp_path, send_rate=rate, send_burst=burst), transport_factory=facilitator.network
    ) as worker:
        worker.wait_connected(5)
        start = time.monotonic()
        futures = [worker.outbox.publish(MachineSpecs(specs={"i": i}, at=0.0)) for i in range(n)]
        for f in futures:
            f.get(timeout=10)  # durable at once: the publisher never waits for the throttle
        published = time.monotonic() - start
        facilitator.wait_for(lambda: len(facilitator.store.delivered) >= n // 2, timeout=20)
        facilitator.cut()
        facilitator.wait_for(lambda: len(facilitator.store.delivered) >= n, timeout=20)
        elapsed = time.monotonic() - start
        assert [b.specs["i"] for b in facilitator.store.delivered] == list(range(n))
        # At most burst + rate·t can have gone out by t (the replay after the cut is throttled too).
        assert elapsed >= (n - burst) / rate * 0.9, elapsed
        assert published < elapsed / 2
        wait_metric = time.monotonic() + 5
        while worker.snapshot().counter("data_throttled") == 0 and time.monotonic() < wait_metric:
            time.sleep(0.05)  # counts reach Metrics on the next beat
        assert worker.snapshot().counter("data_throttled") > 0
