"""The session driver over a real worker/facilitator session pair joined by lists of frames (like
tests/protocol_harness.py): frames before the events that follow them, data of a burst as one
batch, events in order, and a pump that is never re-entered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.driver import SessionDriver
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.session import FacilitatorSession, OutFrame, SessionConfig, SessionState, WorkerSession
from jobrelay.protocol.streams import StreamMarks

from .protocol_harness import AUTHORIZED, FACILITATOR_KEY, FACILITATOR_PUBLIC, KEY, T0, WORKER_ID

Entry = tuple[str, Any]  # ("frame", decoded frame) | ("data", items) | ("event", event)


class Side:
    """One end: a driver, the frames it wrote and one log of what reached writer and handler."""

    def __init__(self, session: WorkerSession | FacilitatorSession, marks: StreamMarks) -> None:
        self.marks = marks
        self.wire: list[OutFrame] = []
        self.log: list[Entry] = []
        self.depth = 0  # handler calls in progress (a re-entered pump would nest them)
        self.max_depth = 0
        self.reactions: list[Callable[[Side, Entry], None]] = []
        self.driver: SessionDriver[Any] = SessionDriver(session, self._write, self)

    def _write(self, frame: OutFrame) -> None:
        self.wire.append(frame)
        self.log.append(("frame", msgspec.json.decode(frame.data)))

    def on_data(self, items: list[tuple[int, Any]]) -> None:
        self._handle(("data", list(items)))

    def on_event(self, event: ev.Event) -> None:
        self._handle(("event", event))

    def _handle(self, entry: Entry) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        try:
            self.log.append(entry)
            for react in self.reactions:
                react(self, entry)
        finally:
            self.depth -= 1

    def events(self) -> list[Any]:
        return [e for kind, e in self.log if kind == "event"]

    def data(self) -> list[list[tuple[int, Any]]]:
        return [items for kind, items in self.log if kind == "data"]

    def frame_types(self) -> list[str]:
        return [f["type"] for kind, f in self.log if kind == "frame"]


def accept_when_verified(side: Side, entry: Entry) -> None:
    kind, event = entry
    if kind == "event" and isinstance(event, ev.AuthVerified):
        session = side.driver.session
        assert isinstance(session, FacilitatorSession)
        session.accept(side.marks)


def acknowledge_data(side: Side, entry: Entry) -> None:
    kind, items = entry
    if kind == "data":
        side.driver.session.acknowledge(items[-1][0])


class Link:
    """A worker driver and a facilitator driver joined by their wires."""

    def __init__(self, config: SessionConfig | None = None) -> None:
        config = config or SessionConfig()
        w_marks, f_marks = StreamMarks("w-epoch"), StreamMarks("f-epoch")
        self.worker = Side(
            WorkerSession(
                worker_id=WORKER_ID,
                key=KEY,
                facilitator_key=FACILITATOR_PUBLIC,
                nonce="cd" * 32,
                marks=w_marks,
                now=T0,
                config=config,
            ),
            w_marks,
        )
        self.facilitator = Side(
            FacilitatorSession(
                nonce="ab" * 32,
                session_id="s1",
                key=FACILITATOR_KEY,
                authorized=AUTHORIZED,
                nonces=NonceRegistry(),
                now=T0,
                config=config,
            ),
            f_marks,
        )
        self.facilitator.reactions += [accept_when_verified, acknowledge_data]
        self.worker.reactions.append(acknowledge_data)
        self.worker.driver.pump()  # the hello

    def deliver(self, source: Side, *, burst: bool = False) -> int:
        """Hand ``source``'s written frames to the other end: one ``receive`` each, or (burst)
        ``feed`` them all and ``pump`` once. Returns how many were delivered."""
        target = self.facilitator if source is self.worker else self.worker
        frames, source.wire[:] = list(source.wire), []
        for frame in frames:
            data = frame.data if frame.binary else frame.data.decode()
            if burst:
                target.driver.feed(data, T0)
            else:
                target.driver.receive(data, T0)
        if burst:
            target.driver.pump()
        return len(frames)

    def run(self) -> None:
        for _ in range(100):
            if not (self.deliver(self.worker) + self.deliver(self.facilitator)):
                return
        raise AssertionError("the wire did not go quiet")

    def open(self) -> Link:
        self.run()
        assert self.worker.driver.session.is_open and self.facilitator.driver.session.is_open
        self.worker.log.clear()
        self.facilitator.log.clear()
        return self


def test_handshake_through_both_drivers_emits_events_in_order() -> None:
    link = Link()
    link.run()
    f_events = link.facilitator.events()
    assert [type(e) for e in f_events] == [ev.AuthVerified, ev.PeerStreamStarted, ev.Opened]
    assert link.facilitator.frame_types() == ["challenge", "welcome"]
    assert [type(e) for e in link.worker.events()] == [ev.PeerStreamStarted, ev.Opened]
    assert link.worker.frame_types() == ["hello", "auth"]
    assert link.worker.driver.frames_out == 2 and link.facilitator.driver.frames_in == 2


def test_the_error_frame_reaches_the_writer_before_closed_is_handled() -> None:
    link = Link()
    written_at_close: list[list[str]] = []

    def on_closed(side: Side, entry: Entry) -> None:
        if entry[0] == "event" and isinstance(entry[1], ev.Closed):
            written_at_close.append(side.frame_types())

    link.facilitator.reactions.append(on_closed)
    data = m.Data(seq=1, body=m.WorkerEvent(event="e", at=0.0))
    link.facilitator.driver.receive(msgspec.json.encode(data), T0)  # data before the handshake
    assert written_at_close == [["error"]]
    (kind, frame), (_, closed) = link.facilitator.log
    assert kind == "frame" and frame["code"] == "not_authenticated" and frame["fatal"] is True
    assert closed == ev.Closed(code=ErrorCode.NOT_AUTHENTICATED, detail=frame["detail"], by_peer=False)


def test_close_with_a_code_writes_the_error_frame_before_closed_is_handled() -> None:
    link = Link().open()
    link.worker.driver.close(ErrorCode.INTERNAL, "bye")
    assert link.worker.log == [
        ("frame", {"type": "error", "code": "internal", "detail": "bye", "fatal": True}),
        ("event", ev.Closed(code=ErrorCode.INTERNAL, detail="bye", by_peer=False)),
    ]
    link.deliver(link.worker)
    assert link.facilitator.events() == [ev.Closed(code=ErrorCode.INTERNAL, detail="bye", by_peer=True)]


def burst_of_single_frames(link: Link, count: int) -> None:
    """The worker sends ``count`` data messages, one frame each."""
    session = link.worker.driver.session
    for seq in range(1, count + 1):
        session.send_data([(seq, m.WorkerEvent(event=f"e{seq}", at=0.0))])
    link.worker.driver.flush()
    assert len(link.worker.wire) == count


def test_data_of_a_burst_fed_then_pumped_arrives_as_one_batch() -> None:
    link = Link().open()
    burst_of_single_frames(link, 5)
    link.deliver(link.worker, burst=True)
    batches = link.facilitator.data()
    assert [[seq for seq, _ in batch] for batch in batches] == [[1, 2, 3, 4, 5]]
    assert batches[0][2][1] == m.WorkerEvent(event="e3", at=0.0)
    # One batch, so one cumulative ack for all five.
    assert [f for kind, f in link.facilitator.log if kind == "frame"] == [{"type": "ack", "upto": 5}]


def test_data_received_one_frame_at_a_time_is_one_batch_per_frame() -> None:
    link = Link().open()
    burst_of_single_frames(link, 3)
    link.deliver(link.worker)
    assert [[seq for seq, _ in batch] for batch in link.facilitator.data()] == [[1], [2], [3]]


def test_other_events_split_data_batches_and_everything_keeps_its_order() -> None:
    link = Link().open()
    session = link.worker.driver.session
    body = m.WorkerEvent(event="e", at=0.0)
    session.send_data([(1, body), (2, body)])  # one batch frame
    session.send_heartbeat(T0 + 1.0)
    session.send_data([(3, body)])
    session.send_request(m.Request(id="r1", method="ping"), T0)
    session.send_data([(4, body)])
    link.worker.driver.flush()
    link.deliver(link.worker, burst=True)
    summary = [
        (kind, [seq for seq, _ in e] if kind == "data" else e["type"] if kind == "frame" else type(e))
        for kind, e in link.facilitator.log
    ]
    # The events already received keep their order; the acks the handler queued meanwhile are
    # written once those are handled (they followed every one of them).
    assert summary == [
        ("data", [1, 2]),
        ("event", ev.HeartbeatReceived),
        ("data", [3]),
        ("event", ev.RequestReceived),
        ("data", [4]),
        ("frame", "ack"),
        ("frame", "ack"),
        ("frame", "ack"),
    ]
    acks = [f["upto"] for kind, f in link.facilitator.log if kind == "frame"]
    assert acks == [2, 3, 4]


def test_pump_is_not_reentered_when_a_handler_closes() -> None:
    link = Link().open()
    link.facilitator.reactions.remove(acknowledge_data)

    def close_on_data(side: Side, entry: Entry) -> None:
        if entry[0] == "data":
            side.driver.close(ErrorCode.INTERNAL, "refused")  # calls pump() from inside pump()
            assert side.log[-1] == entry  # nothing was handled or written meanwhile

    link.facilitator.reactions.append(close_on_data)
    burst_of_single_frames(link, 2)
    link.deliver(link.worker, burst=True)
    assert link.facilitator.max_depth == 1
    assert link.facilitator.log == [
        ("data", [(1, m.WorkerEvent(event="e1", at=0.0)), (2, m.WorkerEvent(event="e2", at=0.0))]),
        ("frame", {"type": "error", "code": "internal", "detail": "refused", "fatal": True}),
        ("event", ev.Closed(code=ErrorCode.INTERNAL, detail="refused", by_peer=False)),
    ]
    assert link.facilitator.driver.session.state is SessionState.CLOSED


def test_events_produced_by_a_handler_are_handled_in_the_same_pump_after_the_current_ones() -> None:
    """accept() in the AuthVerified handler queues the welcome and emits more events: the welcome
    is written before those events are handled, and they are handled before pump() returns."""
    link = Link()
    link.deliver(link.worker)  # hello
    link.deliver(link.facilitator)  # challenge
    link.facilitator.log.clear()
    link.deliver(link.worker)  # auth
    summary = [(kind, e["type"] if kind == "frame" else type(e)) for kind, e in link.facilitator.log]
    assert summary == [
        ("event", ev.AuthVerified),
        ("frame", "welcome"),
        ("event", ev.PeerStreamStarted),
        ("event", ev.Opened),
    ]
    assert link.facilitator.max_depth == 1


def test_tick_sends_a_due_heartbeat_with_the_draining_flag() -> None:
    link = Link(SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)).open()
    driver = link.worker.driver
    driver.tick(T0 + 0.5)
    assert link.worker.log == []
    driver.draining = True
    driver.tick(T0 + 1.0)
    assert link.worker.log == [("frame", {"type": "heartbeat", "at": T0 + 1.0, "draining": True})]
    driver.heartbeat_now(T0 + 1.2)
    assert link.worker.frame_types() == ["heartbeat", "heartbeat"]
    driver.tick(T0 + 4.0)  # the facilitator was silent since T0
    (closed,) = link.worker.events()
    assert isinstance(closed, ev.Closed)
    assert (closed.code, closed.by_peer) == (ErrorCode.HEARTBEAT_TIMEOUT, False)
    assert link.worker.frame_types()[-1] == "error"
    driver.heartbeat_now(T0 + 5.0)  # closed: nothing to send
    assert link.worker.frame_types() == ["heartbeat", "heartbeat", "error"]


def test_lost_connection_is_one_closed_event_by_the_peer() -> None:
    link = Link().open()
    link.worker.driver.lost("reset by peer")
    link.worker.driver.lost("again")
    assert link.worker.log == [("event", ev.Closed(code=None, detail="reset by peer", by_peer=True))]


@pytest.mark.parametrize("burst", [False, True])
def test_received_frames_are_counted(burst: bool) -> None:
    link = Link().open()
    burst_of_single_frames(link, 4)
    link.deliver(link.worker, burst=burst)
    assert link.facilitator.driver.frames_in == 2 + 4  # hello, auth, then the data
    assert link.facilitator.driver.frames_out == 2 + (1 if burst else 4)  # challenge, welcome, acks


def test_the_facilitator_lengthens_a_sessions_heartbeats_and_the_worker_keeps_to_them() -> None:
    # PROTOCOL §6.1: a heartbeat from the facilitator carrying longer values moves both ends to
    # them at once; shorter or inconsistent values are ignored; plain heartbeats carry no values.
    link = Link(SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=4.0)).open()
    fac, worker = link.facilitator.driver.session, link.worker.driver.session
    fac.lengthen_heartbeat(T0 + 0.5, 2.0, 8.0)
    link.facilitator.driver.flush()
    assert link.facilitator.log == [
        (
            "frame",
            {
                "type": "heartbeat",
                "at": T0 + 0.5,
                "heartbeat_interval_ms": 2000,
                "heartbeat_timeout_ms": 8000,
            },
        )
    ]
    assert (fac.heartbeat_interval, fac.heartbeat_timeout) == (2.0, 8.0)
    link.run()
    assert (worker.heartbeat_interval, worker.heartbeat_timeout) == (2.0, 8.0)
    link.worker.driver.tick(T0 + 1.5)  # the old interval would have been due
    assert link.worker.frame_types() == []
    link.worker.driver.tick(T0 + 2.0)
    frames = [f for kind, f in link.worker.log if kind == "frame"]
    assert frames == [{"type": "heartbeat", "at": T0 + 2.0}]  # no values, no defaults
    fac.lengthen_heartbeat(T0 + 3.0, 1.5, 6.0)  # shorter: not sent, not applied
    fac.lengthen_heartbeat(T0 + 3.0, 9.0, 8.5)  # interval not below the timeout
    link.facilitator.driver.flush()
    assert link.facilitator.frame_types() == ["heartbeat"]
    for interval, timeout in ((1500, 6000), (9000, 8500), (3000, None)):  # a peer's bad values
        frame = {"type": "heartbeat", "at": T0, "heartbeat_interval_ms": interval}
        if timeout is not None:
            frame["heartbeat_timeout_ms"] = timeout
        link.worker.driver.receive(msgspec.json.encode(frame).decode(), T0 + 3.0)
        assert (worker.heartbeat_interval, worker.heartbeat_timeout) == (2.0, 8.0)
    assert worker.is_open
