"""The Outbox actor under pressure: size limits, a full outbox, a stop in the middle; and
``outbox.publish_many``: a burst under one future, committed together, delivered in order with the
single publishes around it, a refused message failing alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import JobContext, start_worker
from jobrelay.actors.outbox_actor import PublishBacklog
from jobrelay.actors.publish_batch import PublishManyError
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.errors import ErrorCode, ProtocolError
from jobrelay.protocol.messages import JobRequest, JobStatus, WorkerEvent
from jobrelay.protocol.session import SessionConfig
from jobrelay.storage import OutboxFull
from jobrelay.testing import MemoryFacilitator
from tests.protocol_harness import FACILITATOR_KEY

from .test_actors_worker import KEY, config, terminal


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def facilitator() -> Iterator[MemoryFacilitator]:
    fac = MemoryFacilitator({"w1": public_key_hex(KEY)}, key=FACILITATOR_KEY)
    yield fac
    fac.stop()


def event(detail: str) -> WorkerEvent:
    return WorkerEvent(event="e", at=0.0, detail=detail)


def test_a_message_too_big_for_a_frame_is_refused_and_blocks_nothing(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    with start_worker(config(tmp_path), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        with pytest.raises(ProtocolError) as info:
            worker.outbox.publish(event("x" * 1_100_000)).get(timeout=5)
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        worker.outbox.publish(event("small")).get(timeout=5)
        facilitator.wait_for(lambda: event("small") in facilitator.store.delivered)
        assert len(facilitator.store.delivered) == 1


def test_blocked_publishes_keep_their_order(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    facilitator.network.refuse.set()
    cfg = config(tmp_path, max_outbox_bytes=1000, publish_timeout=30.0)
    with start_worker(cfg, transport_factory=facilitator.network) as worker:
        first = worker.outbox.publish(event("A" * 600))
        assert first.get(timeout=5) == 1
        second = worker.outbox.publish(event("B" * 600))  # no room: waits
        deadline = time.monotonic() + 5
        while not worker.snapshot().counter("outbox_full"):  # B is now waiting for room
            assert time.monotonic() < deadline
            time.sleep(0.01)
        third = worker.outbox.publish(event("C"))  # would fit, but must not overtake B
        facilitator.network.refuse.clear()
        assert second.get(timeout=10) == 2
        assert third.get(timeout=10) == 3
        facilitator.wait_for(lambda: len(facilitator.store.delivered) == 3)
        assert [b.detail[0] for b in facilitator.store.delivered] == ["A", "B", "C"]


def test_a_terminal_status_waits_for_room_past_the_publish_timeout(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    gate = threading.Event()

    def gated(job: JobRequest, ctx: JobContext) -> None:
        gate.wait(30)

    cfg = config(tmp_path, max_outbox_rows=5, publish_timeout=0.3)
    skew = [0.0]  # the worker's clock runs ahead by this much (its beats expire waiting publishes)

    def clock() -> float:
        return time.time() + skew[0]

    with start_worker(cfg, {"gated": gated}, transport_factory=facilitator.network, clock=clock) as worker:
        worker.wait_connected(5)
        facilitator.submit("j", "gated")
        facilitator.wait_for(lambda: JobStatus.RUNNING in [s.status for s in facilitator.statuses("j")])
        facilitator.network.refuse.set()
        facilitator.cut()
        stored = 0
        while True:  # one at a time, until an ordinary publish gives up: the outbox is full
            try:
                worker.outbox.publish(event(str(stored))).get(timeout=5)
                stored += 1
            except OutboxFull:
                break
            assert stored <= cfg.max_outbox_rows
        full = worker.snapshot().counter("outbox_full")
        gate.set()  # the job ends now, with no room for its terminal status
        facilitator.wait_for(lambda: worker.snapshot().counter("outbox_full") > full)  # it waits for room
        skew[0] = 60.0  # 200 publish timeouts later (still within the auth clock-skew limit)...
        beats = worker.heartbeat.beats().get(timeout=5)
        facilitator.wait_for(lambda: worker.heartbeat.beats().get(timeout=5) >= beats + 2)  # 2 beats on
        facilitator.network.refuse.clear()
        facilitator.wait_for(lambda: bool(terminal(facilitator, "j")), timeout=10)
        assert terminal(facilitator, "j") == [JobStatus.COMPLETED]


def test_every_publish_resolves_when_the_worker_stops_under_load(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    facilitator.network.refuse.set()
    worker = start_worker(config(tmp_path), transport_factory=facilitator.network)
    futures: list[pykka.Future[int]] = []
    stop_publishing = threading.Event()

    def publish_forever() -> None:
        while not stop_publishing.is_set():
            try:
                futures.append(worker.outbox.publish(event("x")))
            except pykka.ActorDeadError:
                return

    thread = threading.Thread(target=publish_forever, daemon=True)
    thread.start()
    while len(futures) < 2000:
        time.sleep(0.001)
    worker.stop(timeout=5)
    stop_publishing.set()
    thread.join(5)
    stored = failed = 0
    for f in futures:
        try:
            f.get(timeout=5)  # a hang here is the bug: a publish accepted, then forgotten
            stored += 1
        except (pykka.ActorDeadError, OutboxFull):
            failed += 1
    assert stored >= 2000 and stored + failed == len(futures)


def test_a_message_msgpack_cannot_carry_is_refused_and_blocks_nothing(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    from jobrelay.protocol.messages import MachineSpecs

    with start_worker(config(tmp_path), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        with pytest.raises(ProtocolError) as info:  # msgpack is offered by default
            worker.outbox.publish(MachineSpecs(specs={"n": 2**70}, at=0.0)).get(timeout=5)
        assert info.value.code is ErrorCode.INVALID_FIELD
        worker.outbox.publish(event("after")).get(timeout=5)
        facilitator.wait_for(lambda: event("after") in facilitator.store.delivered)


def test_a_publisher_outrunning_the_outbox_waits_then_gets_outbox_behind() -> None:
    backlog = PublishBacklog(limit=2, timeout=0.05)
    assert backlog.admit() and backlog.admit()
    assert not backlog.admit()  # a third waits its timeout, then fails: the mailbox stays bounded
    assert backlog.admit(always=True)  # a job's terminal status is never refused
    backlog.taken()
    backlog.taken()
    assert backlog.admit()
    released = threading.Event()

    def publish_when_room() -> None:
        if waiting.admit():
            released.set()

    waiting = PublishBacklog(limit=1, timeout=10.0)
    assert waiting.admit()
    thread = threading.Thread(target=publish_when_room, daemon=True)
    thread.start()
    assert not released.wait(0.05)
    waiting.taken()  # the Outbox took one: the waiting publisher goes on at once
    assert released.wait(5)
    thread.join(5)


def test_a_batch_gets_consecutive_seqs_and_arrives_in_order_between_single_publishes(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    with start_worker(config(tmp_path), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        before = worker.outbox.publish(event("before")).get(timeout=5)
        burst = [event(f"m{i}") for i in range(5000)]
        seqs = worker.outbox.publish_many(burst).get(timeout=30)
        after = worker.outbox.publish(event("after")).get(timeout=5)
        assert seqs == list(range(before + 1, before + 5001)) and after == before + 5001
        assert worker.outbox.publish_many([]).get(timeout=5) == []
        facilitator.wait_for(lambda: len(facilitator.store.delivered) == 5002, timeout=30)
        assert facilitator.store.delivered == [event("before"), *burst, event("after")]


def test_a_refused_message_fails_alone_and_the_future_names_it(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    with start_worker(config(tmp_path), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        batch = [event("a"), event("x" * 1_100_000), event("b")]  # the middle one fits no frame
        with pytest.raises(PublishManyError) as info:
            worker.outbox.publish_many(batch).get(timeout=10)
        assert set(info.value.errors) == {1} and sorted(info.value.seqs) == [0, 2]
        error = info.value.errors[1]
        assert isinstance(error, ProtocolError) and error.code is ErrorCode.FRAME_TOO_LARGE
        facilitator.wait_for(lambda: len(facilitator.store.delivered) == 2)
        assert facilitator.store.delivered == [event("a"), event("b")]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_backlog_replayed_from_disk_arrives_whole_in_either_format(
    tmp_path: Path, facilitator: MemoryFacilitator, fmt: str
) -> None:
    """Rows read back from disk go out as stored (JSON bytes, no decode and re-encode); a
    msgpack session still gets every value as it was published."""
    facilitator.config = SessionConfig(
        heartbeat_interval=0.5, heartbeat_timeout=5.0, formats=("json", "msgpack")
    )
    facilitator.network.refuse.set()
    with start_worker(config(tmp_path, formats=(fmt,)), transport_factory=facilitator.network) as worker:
        burst = [WorkerEvent(event="e", at=float(i), detail=f"m{i} ü") for i in range(1200)]
        worker.outbox.publish_many(burst).get(timeout=30)  # stored while no facilitator answers
        facilitator.network.refuse.clear()
        facilitator.wait_for(lambda: len(facilitator.store.delivered) == 1200, timeout=30)
        assert facilitator.store.delivered == burst
        session = facilitator._session
        assert session is not None and session._format == fmt  # the codec this session used
