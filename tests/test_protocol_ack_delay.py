"""Delayed acks (``SessionConfig.ack_delay``): an ack soon after the last one waits to cover the
commits after it, and goes out at its deadline, when a quarter of the window waits, or before a
close. Sans-I/O with virtual time, then the reference facilitator with a real worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrelay.actors.worker import start_worker
from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.protocol import messages as m
from jobrelay.protocol.errors import ConfigError, ErrorCode
from jobrelay.protocol.session import FacilitatorSession, SessionConfig

from .facilitator_client import make_facilitator, wait_until, worker_config
from .protocol_harness import Pair


def open_pair(**config: Any) -> Pair:
    pair = Pair(SessionConfig(**config), persist_immediately=False)
    pair.connect()
    pair.pump()
    assert pair.open
    return pair


def facilitator(pair: Pair) -> FacilitatorSession:
    session = pair.facilitator.session
    assert isinstance(session, FacilitatorSession)
    return session


def deliver_one(pair: Pair, n: int) -> None:
    """The worker publishes message ``n``; the facilitator receives it and makes it durable."""
    pair.publish(pair.worker, [m.WorkerEvent(event=f"e{n}", at=float(n))])
    pair.deliver("w2f", len(pair.w2f))
    pair.persist(pair.facilitator)


def acks_on_the_wire(pair: Pair) -> list[int]:
    frames = [msgspec.json.decode(frame.data) for frame in pair.f2w]
    return [frame["upto"] for frame in frames if frame.get("type") == "ack"]


def test_an_ack_soon_after_the_last_waits_and_covers_the_later_commits() -> None:
    pair = open_pair(ack_delay=0.01)
    session = facilitator(pair)
    deliver_one(pair, 1)
    assert acks_on_the_wire(pair) == [1]  # the first goes at once
    pair.deliver("f2w", len(pair.f2w))
    deliver_one(pair, 2)
    deliver_one(pair, 3)
    assert acks_on_the_wire(pair) == []  # held: the last ack went 0 s ago
    assert session.receiver.due_at == pytest.approx(pair.now + 0.01)
    assert session.next_deadline() == pytest.approx(pair.now + 0.01)
    pair.tick(0.005)
    assert acks_on_the_wire(pair) == []
    pair.tick(0.005)
    assert acks_on_the_wire(pair) == [3]  # one ack, cumulative
    assert session.receiver.due_at is None
    pair.pump()
    assert not pair.worker.store.out  # the worker deleted all three


def test_an_ack_goes_at_once_when_a_quarter_of_the_window_would_wait() -> None:
    pair = open_pair(ack_delay=1.0, max_inflight=8)
    deliver_one(pair, 1)
    assert acks_on_the_wire(pair) == [1]
    pair.deliver("f2w", len(pair.f2w))
    deliver_one(pair, 2)
    assert acks_on_the_wire(pair) == []
    deliver_one(pair, 3)  # two of a window of 8 unacknowledged: the peer must not stall
    assert acks_on_the_wire(pair) == [3]


def test_a_close_sends_the_held_ack_before_the_error() -> None:
    pair = open_pair(ack_delay=1.0)
    deliver_one(pair, 1)
    pair.deliver("f2w", len(pair.f2w))
    deliver_one(pair, 2)
    facilitator(pair).close(ErrorCode.INTERNAL, "going away")
    pair.collect()
    types = [msgspec.json.decode(frame.data)["type"] for frame in pair.f2w]
    assert types == ["ack", "error"]
    assert acks_on_the_wire(pair) == [2]  # durable here: the worker need not send it again


def test_without_a_delay_or_a_clock_every_ack_goes_at_once() -> None:
    pair = open_pair()  # ack_delay 0
    for n in (1, 2, 3):
        deliver_one(pair, n)
    assert acks_on_the_wire(pair) == [1, 2, 3]
    held = open_pair(ack_delay=1.0)
    session = facilitator(held)
    for n in (1, 2):
        held.publish(held.worker, [m.WorkerEvent(event=f"e{n}", at=0.0)])
        held.deliver("w2f", len(held.w2f))
        held.process(held.facilitator)
        session.acknowledge(n)  # no ``now``: an owner that keeps no clock
        held.collect()
    assert acks_on_the_wire(held) == [1, 2]


@pytest.mark.parametrize("delay", [-0.001, 5.0, float("nan"), float("inf")])
def test_session_config_refuses_an_ack_delay_outside_0_to_the_heartbeat_interval(delay: float) -> None:
    with pytest.raises(ValueError, match="ack_delay"):
        SessionConfig(ack_delay=delay, heartbeat_interval=5.0)


@pytest.mark.parametrize("delay", [-1, 5.0, True, "0.004", float("nan")])
def test_facilitator_config_names_a_bad_ack_delay(delay: object) -> None:
    with pytest.raises(ConfigError, match="ack_delay"):
        FacilitatorConfig(db_path=":memory:", ack_delay=delay, key="00" * 32)  # type: ignore[arg-type]


def test_a_trickle_is_acknowledged_with_fewer_ack_frames_than_data_frames(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, ack_delay=0.05)
    try:
        with start_worker(worker_config(fac, tmp_path, "w1")) as worker:
            worker.wait_connected(10)
            wait_until(lambda: worker.outbox.stats().get(timeout=5).depth_rows == 0, 10)
            before = fac.stats()
            for n in range(30):  # one at a time: each its own commit and frame
                worker.outbox.publish(m.WorkerEvent(event=f"e{n}", at=time.time())).get(timeout=10)
            wait_until(lambda: worker.outbox.stats().get(timeout=5).depth_rows == 0, 10)
            after = fac.stats()
            frames_in, frames_out = after.frames_in - before.frames_in, after.frames_out - before.frames_out
            assert after.data_accepted - before.data_accepted == 30  # nothing lost
            assert frames_out < frames_in / 2, (frames_in, frames_out)
    finally:
        fac.stop()
