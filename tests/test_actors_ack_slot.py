"""The Outbox acts on the newest ack between the commits of a publish burst, not only when its
mailbox reaches the ack (which waits behind the burst's batches): the send window opens while
the burst is still being committed. The actor is driven in this thread, message by message, so
"the ack is still in the mailbox" is a fact of the test, not a race."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from jobrelay.actors.ack_slot import AckSlot, OutboxDoor
from jobrelay.actors.actor_messages import (
    Count,
    PeerAcked,
    Publish,
    SendData,
    SessionClosed,
    SessionOpened,
)
from jobrelay.actors.outbox_actor import OutboxActor
from jobrelay.protocol.messages import WorkerEvent
from tests.test_actors_worker import config


class Recorder:
    """A Tellable that keeps what it is told."""

    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)

    def handed(self) -> list[int]:
        return [seq for m in self.told if isinstance(m, SendData) for seq, _ in m.items]


class Resolved:
    """The future a Publish carries: the seq it was stored at."""

    def __init__(self) -> None:
        self.seq: int | None = None

    def set(self, value: Any = None) -> None:
        self.seq = int(value)

    def set_exception(self, exc_info: Any = None) -> None:
        raise AssertionError(f"publish failed: {exc_info}")


def acked_counted(metrics: Recorder) -> int:
    counts = [m.n for m in metrics.told if isinstance(m, Count) and m.name == "acked"]
    assert all(n > 0 for n in counts), f"a counter went back: {counts}"  # Prometheus counters
    return sum(counts)


def publish(actor: OutboxActor, count: int) -> None:
    for i in range(count):
        actor.on_receive(Publish(body=WorkerEvent(event="e", at=0.0, detail=str(i)), future=Resolved()))


class Outbox(NamedTuple):
    actor: OutboxActor
    slot: AckSlot
    connection: Recorder
    metrics: Recorder


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """An Outbox in a session whose window lets it hand over seqs 1…4."""
    slot, connection, metrics = AckSlot(), Recorder(), Recorder()
    actor = OutboxActor(config(tmp_path), metrics=metrics, acks=slot)
    actor.on_start()
    actor.on_receive(SessionOpened(session_id="s1", resume_after=0, limit=4, connection=connection))
    try:
        yield Outbox(actor, slot, connection, metrics)
    finally:
        actor.on_stop()


def test_an_ack_still_in_the_mailbox_opens_the_window_at_the_next_commit(
    outbox: Outbox,
) -> None:
    actor, slot, connection, metrics = outbox
    publish(actor, 6)
    assert connection.handed() == [1, 2, 3, 4]  # the window's limit
    door_to_a_busy_mailbox = OutboxDoor(Recorder(), slot)  # type: ignore[arg-type]
    older, newer = PeerAcked("s1", upto=2, limit=6), PeerAcked("s1", upto=4, limit=8)
    door_to_a_busy_mailbox.tell(older)
    door_to_a_busy_mailbox.tell(newer)
    publish(actor, 2)  # a commit while both acks wait in the mailbox
    assert connection.handed() == [1, 2, 3, 4, 5, 6, 7, 8]
    # Their copies arrive later and change nothing: nothing is handed over twice, and the
    # acknowledged count neither goes back nor counts twice.
    for copy in (older, newer):
        actor.on_receive(copy)
        assert (actor.in_flight(), acked_counted(metrics)) == (4, 4)
    publish(actor, 1)
    assert connection.handed() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_an_ack_of_another_session_is_not_read_early(outbox: Outbox) -> None:
    actor, slot, connection, _ = outbox
    slot.put(PeerAcked(session_id="s0", upto=3, limit=100))
    publish(actor, 6)
    assert connection.handed() == [1, 2, 3, 4]


def test_an_ack_of_an_earlier_session_with_the_same_id_is_not_read_early(outbox: Outbox) -> None:
    """A peer that reuses a session id: the old session's ack, left in the slot, must not count
    for the new one (it would hand over past the new window and mark rows acknowledged)."""
    actor, slot, connection, _ = outbox
    slot.put(PeerAcked(session_id="s1", upto=4, limit=100))
    actor.on_receive(SessionClosed(session_id="s1"))
    actor.on_receive(SessionOpened(session_id="s1", resume_after=0, limit=4, connection=connection))
    connection.told.clear()
    publish(actor, 6)
    assert connection.handed() == [1, 2, 3, 4]
    assert actor.in_flight() == 4


def test_without_a_slot_the_window_waits_for_the_mailbox(tmp_path: Path) -> None:
    connection = Recorder()
    actor = OutboxActor(config(tmp_path), metrics=Recorder())
    actor.on_start()
    try:
        actor.on_receive(SessionOpened(session_id="s1", resume_after=0, limit=2, connection=connection))
        publish(actor, 4)
        assert connection.handed() == [1, 2]
        actor.on_receive(PeerAcked(session_id="s1", upto=2, limit=4))
        assert connection.handed() == [1, 2, 3, 4]
    finally:
        actor.on_stop()


def test_the_door_puts_only_acks_in_the_slot_and_tells_the_mailbox_everything() -> None:
    slot, mailbox = AckSlot(), Recorder()
    door = OutboxDoor(mailbox, slot)  # type: ignore[arg-type]
    first, second = PeerAcked("s1", 1, 10), PeerAcked("s1", 5, 14)
    for message in (first, "beat", second):
        door.tell(message)
    assert mailbox.told == [first, "beat", second]
    assert slot.newest() is second
