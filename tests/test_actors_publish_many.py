"""``outbox.publish_many``: a burst under one future, committed together, delivered in order with
the single publishes around it; a refused message fails alone and the future says which."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import start_worker
from jobrelay.actors.publish_batch import PublishManyError
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.errors import ErrorCode, ProtocolError
from jobrelay.protocol.messages import WorkerEvent
from jobrelay.protocol.session import SessionConfig
from jobrelay.testing import MemoryFacilitator
from tests.protocol_harness import FACILITATOR_KEY

from .test_actors_worker import KEY, config

pytestmark = pytest.mark.timeout(60)


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
