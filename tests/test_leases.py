"""Resource leases: the facilitator's table with a fake clock (capacity, renewal, expiry after the
holder goes silent, holder-only renew/release), then two real workers over the fault proxy:
granted, refused when the resource is full, renewed, expired when a holder's heartbeats stop past
the ttl (while that worker, in local mode, keeps using it until its own view says it ended), and
released on a clean stop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import start_worker
from jobrelay.facilitator import Facilitator
from jobrelay.facilitator.leases import LeaseTable
from jobrelay.protocol.calls import CallRejected
from jobrelay.testing.proxy import TcpProxy
from tests.facilitator_client import make_facilitator, wait_until
from tests.test_calls import worker_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def test_lease_table_capacity_renewal_and_expiry() -> None:
    now = [100.0]
    seen: dict[str, float] = {}
    table = LeaseTable(seen.get, clock=lambda: now[0])
    table.define("gpu", 2)
    a = table.acquire("w1", "gpu", 2, ttl=10.0)
    assert a.expires_at == 110.0
    with pytest.raises(CallRejected) as caught:
        table.acquire("w2", "gpu", 1, ttl=10.0)
    assert caught.value.code == "lease_unavailable"
    with pytest.raises(CallRejected) as caught:
        table.acquire("w2", "tpu", 1, ttl=10.0)
    assert caught.value.code == "lease_unavailable"
    with pytest.raises(CallRejected) as caught:
        table.renew("w2", a.lease_id)  # not its lease
    assert caught.value.code == "lease_unknown"
    assert not table.release("w2", a.lease_id)
    now[0] = 105.0
    assert table.renew("w1", a.lease_id).expires_at == 115.0
    seen["w1"] = 112.0  # a heartbeat keeps it alive beyond the renewal
    now[0] = 120.0
    assert [w for w, _ in table.leases()] == ["w1"]
    now[0] = 122.0  # ttl after the holder's last heartbeat: expired
    assert table.leases() == [] and table.expired == 1
    with pytest.raises(CallRejected):
        table.renew("w1", a.lease_id)
    b = table.acquire("w2", "gpu", 1, ttl=5.0)
    assert table.release("w2", b.lease_id) and not table.release("w2", b.lease_id)


def test_each_holder_gets_the_grace_of_its_own_session() -> None:
    # A worker with a 10 s heartbeat counts from a frame up to 10 s later than one with 5 s.
    now = [100.0]
    intervals = {"w1": 5.0, "w2": 10.0}
    table = LeaseTable(lambda _: None, clock=lambda: now[0], grace=intervals.__getitem__)
    table.define("gpu", 2)
    table.acquire("w1", "gpu", 1, ttl=10.0)
    table.acquire("w2", "gpu", 1, ttl=10.0)
    assert [(w, lease.expires_at) for w, lease in table.leases()] == [("w1", 115.0), ("w2", 120.0)]
    now[0] = 116.0
    assert [w for w, _ in table.leases()] == ["w2"]


class _Session:
    def __init__(self, is_open: bool, heartbeat_interval: float) -> None:
        self.is_open, self.heartbeat_interval = is_open, heartbeat_interval


class _Conn:
    def __init__(self, worker_id: str, session: _Session, last_contact: float) -> None:
        self.worker_id, self.session, self.last_contact = worker_id, session, last_contact


def test_a_closed_session_not_yet_accounted_for_still_counts_its_last_frame() -> None:
    # Between a session closing and the connection reporting it (its Closed event waits behind a
    # store call), the lease must run from the last frame plus that session's interval, not from
    # its last renewal alone.
    import asyncio

    from jobrelay.facilitator.calls import FacilitatorCalls

    loop = asyncio.new_event_loop()
    calls = FacilitatorCalls(loop, None, heartbeat_interval=5.0)  # type: ignore[arg-type]
    try:
        session = _Session(is_open=True, heartbeat_interval=10.0)
        conn = _Conn("w1", session, last_contact=1_000.0)
        calls.opened(conn)  # type: ignore[arg-type]
        assert calls._interval("w1") == 10.0 and calls._seen("w1") is not None
        session.is_open = False  # closed; calls.closed(conn) has not run yet
        assert (calls._seen("w1"), calls._interval("w1")) == (1_000.0, 10.0)
        calls.closed(conn)  # type: ignore[arg-type]
        assert (calls._seen("w1"), calls._interval("w1")) == (1_000.0, 10.0)
        assert calls._interval("w2") == 5.0  # never connected: the configured interval
    finally:
        calls.close()
        loop.close()


@pytest.fixture
def quick_fac(tmp_path: Path) -> Iterator[Facilitator]:
    """Heartbeats every 0.5 s: a lease outlives its holder's last frame by ttl + 0.5 s there."""
    facilitator = make_facilitator(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=5.0)
    try:
        yield facilitator
    finally:
        facilitator.stop()


def test_leases_over_the_wire(quick_fac: Facilitator, tmp_path: Path) -> None:
    fac = quick_fac
    fac.calls.leases.define("gpu", 2)
    ttl = 1.5
    with TcpProxy(("127.0.0.1", fac.port)) as p1, TcpProxy(("127.0.0.1", fac.port)) as p2:
        c1 = worker_config(tmp_path, p1.url, "w1")
        c2 = worker_config(tmp_path, p2.url, "w2", breaker_failure_threshold=2, breaker_recovery_timeout=10.0)
        with start_worker(c1, {}) as w1, start_worker(c2, {}) as w2:
            w1.wait_connected(10)
            w2.wait_connected(10)
            one = w1.leases.acquire("gpu", 1, ttl=ttl)
            two = w2.leases.acquire("gpu", 1, ttl=ttl)
            with pytest.raises(CallRejected) as caught:
                w1.leases.acquire("gpu", 1, ttl=ttl)
            assert caught.value.code == "lease_unavailable"
            renewed = w1.leases.renew(one.lease_id)
            assert renewed.expires_at > one.expires_at - 0.01

            # w2's facilitator goes away: its heartbeats stop, its lease expires ttl later there.
            p2.refuse(True)
            p2.cut(rst=True)
            wait_until(lambda: w2.connection.local_mode().get(timeout=5).active, timeout=10)
            assert [lease.lease_id for lease in w2.leases.held()] == [two.lease_id]  # still used locally
            until = w2.leases.valid_until(two.lease_id)
            assert until is not None and until <= time.time() + ttl
            wait_until(lambda: not fac.calls.reachable("w2"), timeout=10)
            ends_there = [lease.expires_at for w, lease in fac.calls.leases.leases() if w == "w2"]
            assert ends_there and ends_there[0] >= until  # the worker never counts on it longer
            wait_until(lambda: w2.leases.held() == [], timeout=10)  # its own view ended
            wait_until(lambda: all(w != "w2" for w, _ in fac.calls.leases.leases()), timeout=10)
            third = w1.leases.acquire("gpu", 1, ttl=ttl)  # the expired units are free again
            assert fac.calls.leases.expired == 1

            # A clean stop gives w1's leases back.
            assert {lease.lease_id for lease in w1.leases.held()} == {one.lease_id, third.lease_id}
            w1.stop()
            assert fac.calls.leases.leases() == []
