"""The two halves of a sequenced stream: the one send window (with the queue of data handed over
beyond it) and the receiver's dedup and gap checks, alone and inside an open session."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.session import SessionConfig, SessionState, WorkerSession
from jobrelay.protocol.streams import Receiver, Sender, resolve_resume

from .protocol_harness import T0, Pair


def items(first: int, last: int) -> list[tuple[int, Any]]:
    """``(seq, body)`` for seqs ``first..last``; the body names its seq."""
    return [(seq, f"body-{seq}") for seq in range(first, last + 1)]


def send_what_fits(sender: Sender) -> list[tuple[int, Any]]:
    """What a session does after queueing or an ack: take what the window has room for."""
    ready = sender.sendable()
    if ready:
        sender.take(ready[0][0], len(ready))
    return ready


# ---------------------------------------------------------------- Sender


def test_a_new_sender_resumes_after_the_acknowledged_seq() -> None:
    sender = Sender(resume_after=5, last_seq=9, window=3)
    assert (sender.acked, sender.sent, sender.last_seq) == (5, 5, 9)
    assert (sender.in_flight, sender.capacity, sender.handed, sender.queued) == (0, 3, 5, 0)
    assert sender.sendable() == []


def test_take_reserves_contiguous_seqs_within_the_window() -> None:
    sender = Sender(resume_after=0, last_seq=0, window=3)
    sender.take(1, 2)
    assert (sender.sent, sender.in_flight, sender.capacity, sender.last_seq) == (2, 2, 1, 2)
    with pytest.raises(LocalProtocolError) as info:
        sender.take(4, 1)
    assert info.value.code is ErrorCode.SEQ_GAP
    with pytest.raises(LocalProtocolError) as info:
        sender.take(3, 2)
    assert info.value.code is ErrorCode.WINDOW_EXCEEDED
    assert sender.sent == 2  # a refused take reserves nothing


def test_acks_are_cumulative_and_bounded_by_what_was_sent() -> None:
    sender = Sender(resume_after=0, last_seq=0, window=4)
    sender.take(1, 3)
    assert sender.on_ack(2) is True
    assert (sender.acked, sender.in_flight, sender.capacity) == (2, 1, 3)
    assert sender.on_ack(2) is False  # repeated
    assert sender.on_ack(1) is False  # older
    assert sender.acked == 2
    with pytest.raises(RemoteProtocolError) as info:
        sender.on_ack(4)
    assert info.value.code is ErrorCode.ACK_OUT_OF_RANGE
    assert sender.acked == 2


def test_note_appended_only_raises_last_seq() -> None:
    sender = Sender(resume_after=0, last_seq=5, window=4)
    sender.note_appended(3)
    assert sender.last_seq == 5
    sender.note_appended(8)
    assert sender.last_seq == 8


def test_queue_hands_over_beyond_the_window_and_sendable_takes_what_fits() -> None:
    sender = Sender(resume_after=10, last_seq=20, window=3)
    sender.queue(items(11, 15))
    assert (sender.handed, sender.queued) == (15, 5)
    assert send_what_fits(sender) == items(11, 13)
    assert (sender.sent, sender.queued, sender.handed) == (13, 2, 15)
    assert send_what_fits(sender) == []  # the window is full
    sender.on_ack(12)
    assert send_what_fits(sender) == items(14, 15)
    assert (sender.sent, sender.queued, sender.handed, sender.in_flight) == (15, 0, 15, 3)


def test_queue_must_continue_what_was_handed_over() -> None:
    sender = Sender(resume_after=0, last_seq=0, window=2)
    sender.queue(items(1, 4))
    for wrong in (items(4, 5), items(6, 6), items(1, 1)):
        with pytest.raises(LocalProtocolError) as info:
            sender.queue(wrong)
        assert info.value.code is ErrorCode.SEQ_GAP
    assert (sender.handed, sender.queued) == (4, 4)  # a refused hand-over queued nothing
    sender.queue([])  # nothing to hand over is fine
    sender.queue(items(5, 5))
    assert sender.handed == 5


def test_handover_limit_keeps_whole_windows_ready_after_the_ack() -> None:
    sender = Sender(resume_after=7, last_seq=100, window=10)
    assert sender.handover_limit(1) == 17
    assert sender.handover_limit(3) == 37
    sender.take(8, 10)
    sender.on_ack(12)
    assert sender.handover_limit(2) == 32  # moves with the ack, not with what was sent


# A step: ("queue", n) hands over n more messages; ("ack", k) acknowledges k of those in flight.
steps = st.lists(
    st.tuples(st.just("queue"), st.integers(1, 12)) | st.tuples(st.just("ack"), st.integers(0, 12)),
    max_size=40,
)


@given(resume_after=st.integers(0, 50), window=st.integers(1, 8), steps=steps)
def test_any_interleaving_of_queue_and_ack_sends_each_seq_once_in_order_within_the_window(
    resume_after: int, window: int, steps: list[tuple[str, int]]
) -> None:
    sender = Sender(resume_after=resume_after, last_seq=resume_after, window=window)
    sent: list[int] = []
    handed = resume_after
    for op, n in steps:
        if op == "queue":
            sender.queue(items(handed + 1, handed + n))
            handed += n
        else:
            sender.on_ack(sender.acked + min(n, sender.in_flight))
        sent.extend(seq for seq, _ in send_what_fits(sender))
        assert 0 <= sender.in_flight <= window
        assert sender.handed == handed
        assert sender.queued == handed - sender.sent
    while sender.queued or sender.in_flight:  # the peer acknowledges everything in the end
        sender.on_ack(sender.sent)
        sent.extend(seq for seq, _ in send_what_fits(sender))
        assert sender.in_flight <= window
    assert sent == list(range(resume_after + 1, handed + 1))


# ---------------------------------------------------------------- Receiver


def test_receiver_passes_each_seq_once_in_order() -> None:
    receiver = Receiver(hwm=3, window=10)
    assert receiver.classify(2) is False  # at or below the mark: a duplicate
    assert receiver.classify(3) is False
    assert receiver.classify(4) is True
    assert receiver.classify(4) is False
    assert receiver.classify(5) is True
    assert receiver.seen == 5 and receiver.acked == 3


def test_receiver_refuses_a_gap() -> None:
    receiver = Receiver(hwm=0, window=10)
    with pytest.raises(RemoteProtocolError) as info:
        receiver.classify(2)
    assert info.value.code is ErrorCode.SEQ_GAP
    assert receiver.seen == 0


def test_receiver_refuses_data_beyond_the_window_after_its_ack() -> None:
    receiver = Receiver(hwm=0, window=2)
    assert receiver.classify(1) and receiver.classify(2)
    with pytest.raises(RemoteProtocolError) as info:
        receiver.classify(3)
    assert info.value.code is ErrorCode.WINDOW_EXCEEDED
    assert receiver.acknowledge(2) is True
    with pytest.raises(RemoteProtocolError):
        receiver.classify(3)  # durable, but the peer was not told yet: its window has not moved
    assert receiver.ack_sent() == 2
    assert receiver.classify(3) is True


def test_receiver_acknowledges_only_what_it_received_and_only_forward() -> None:
    receiver = Receiver(hwm=5, window=10)
    with pytest.raises(LocalProtocolError) as info:
        receiver.acknowledge(6)
    assert info.value.code is ErrorCode.ACK_OUT_OF_RANGE
    assert receiver.acknowledge(5) is False  # the mark itself: nothing new to tell
    assert receiver.classify(6) and receiver.classify(7)
    assert receiver.acknowledge(6) is True
    assert receiver.acknowledge(6) is False
    assert receiver.acknowledge(4) is False
    assert receiver.acked == 6


@pytest.mark.parametrize(
    ("local", "peer", "want"),
    [
        (("e1", 5), ("e1", 3), (5, False)),  # our mark is ahead of what the peer knows
        (("e1", 2), ("e1", 4), (4, False)),  # our store regressed: never below the peer's ack
        (("", 0), ("e1", 0), (0, True)),  # first contact
        (("e1", 9), ("e2", 1), (1, True)),  # the peer's store is new: its stream starts over
    ],
)
def test_resolve_resume(local: tuple[str, int], peer: tuple[str, int], want: tuple[int, bool]) -> None:
    assert resolve_resume(*local, *peer) == want


# ---------------------------------------------------------------- the window inside a session


def open_worker(window: int) -> tuple[Pair, WorkerSession]:
    pair = Pair(SessionConfig(max_inflight=window))
    pair.connect()
    pair.pump()
    assert pair.open
    worker = pair.worker.session
    assert isinstance(worker, WorkerSession)
    return pair, worker


def sent_seqs(session: WorkerSession) -> list[int]:
    seqs: list[int] = []
    for frame in session.data_to_send():
        decoded = msgspec.json.decode(frame.data)
        if decoded["type"] == "data":
            seqs.append(decoded["seq"])
        elif decoded["type"] == "batch":
            seqs.extend(item["seq"] for item in decoded["items"])
    return seqs


def ack(session: WorkerSession, upto: int) -> None:
    session.receive_data(msgspec.json.encode(m.Ack(upto=upto)), T0)


def test_queue_data_sends_what_fits_and_the_rest_when_acks_arrive() -> None:
    _, worker = open_worker(window=3)
    worker.queue_data(items(1, 7))
    assert sent_seqs(worker) == [1, 2, 3]
    assert worker.sender.queued == 4
    ack(worker, 2)
    assert sent_seqs(worker) == [4, 5]
    assert worker.events_received() == [ev.Acked(upto=2)]
    ack(worker, 5)
    assert sent_seqs(worker) == [6, 7]
    ack(worker, 7)
    assert sent_seqs(worker) == []
    assert worker.sender.in_flight == 0 and worker.sender.queued == 0
    assert worker.is_open


def test_queue_data_needs_an_open_session_and_the_next_seq() -> None:
    pair = Pair()
    pair.connect()
    worker = pair.worker.session
    assert isinstance(worker, WorkerSession)
    with pytest.raises(LocalProtocolError) as info:
        worker.queue_data(items(1, 1))
    assert info.value.code is ErrorCode.NOT_AUTHENTICATED
    _, worker = open_worker(window=3)
    with pytest.raises(LocalProtocolError) as info:
        worker.queue_data(items(2, 3))
    assert info.value.code is ErrorCode.SEQ_GAP
    assert worker.is_open and worker.sender.queued == 0


def test_queue_data_refuses_a_gap_inside_the_hand_over() -> None:
    _, worker = open_worker(window=3)
    with pytest.raises(LocalProtocolError) as info:
        worker.queue_data([(1, "a"), (3, "c")])
    assert info.value.code is ErrorCode.SEQ_GAP
    assert worker.is_open and worker.sender.queued == 0


def test_queued_data_too_large_for_a_frame_closes_the_session() -> None:
    """Our own fault found only when the queue drains: end the session, replay on the next."""
    _, worker = open_worker(window=1)
    worker.queue_data([(1, "small"), (2, "x" * 2_000_000)])
    assert sent_seqs(worker) == [1]
    ack(worker, 1)
    assert worker.state is SessionState.CLOSED
    closed = [e for e in worker.events_received() if isinstance(e, ev.Closed)]
    assert [(c.code, c.by_peer) for c in closed] == [(ErrorCode.INTERNAL, False)]


@given(window=st.integers(1, 6), steps=steps)
def test_a_session_sends_every_queued_seq_once_in_order_within_the_window(
    window: int, steps: list[tuple[str, int]]
) -> None:
    _, worker = open_worker(window)
    sent: list[int] = []
    handed = 0
    for op, n in steps:
        if op == "queue":
            worker.queue_data(items(handed + 1, handed + n))
            handed += n
        else:
            ack(worker, worker.sender.acked + min(n, worker.sender.in_flight))
        sent.extend(sent_seqs(worker))
        assert worker.is_open
        assert worker.sender.in_flight <= window
    while worker.sender.queued or worker.sender.in_flight:
        ack(worker, worker.sender.sent)
        sent.extend(sent_seqs(worker))
        assert worker.sender.in_flight <= window
    assert sent == list(range(1, handed + 1))
