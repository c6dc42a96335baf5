"""Session behaviour beyond the handshake: the transition table, acks, heartbeats, requests."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.backoff import full_jitter, full_jitter_delays
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError
from jobrelay.protocol.session import ACCEPTS, SessionConfig, SessionState

from . import strategies as s
from .protocol_harness import T0, Pair

VALID_STATES = set(SessionState)


def open_pair(**config: Any) -> Pair:
    pair = Pair(SessionConfig(**config))
    pair.connect()
    pair.pump()
    assert pair.open
    return pair


def steer(pair: Pair, steps: int) -> None:
    """Advance the handshake a given number of frames (0..4) so every state is reachable."""
    for direction in ["w2f", "f2w", "w2f"][:steps]:
        pair.deliver(direction, 1)


@given(steps=st.integers(0, 3), frame=s.worker_frames)
def test_every_state_and_worker_frame_moves_to_a_valid_state(steps: int, frame: Any) -> None:
    """h2-style: any frame in any state moves to a valid state or closes with a typed error."""
    pair = Pair()
    pair.connect()
    steer(pair, steps)
    session = pair.facilitator.session
    if session is None:
        return
    before = session.state
    session.receive_data(msgspec.json.encode(frame), T0)
    assert session.state in VALID_STATES
    for event in session.events_received():
        if isinstance(event, ev.Closed) and not event.by_peer:
            assert isinstance(event.code, ErrorCode)
    if not isinstance(frame, m.Error) and not isinstance(frame, ACCEPTS[before]):
        assert session.state is SessionState.CLOSED


@given(steps=st.integers(0, 4), frame=s.facilitator_frames)
def test_every_state_and_facilitator_frame_moves_to_a_valid_state(steps: int, frame: Any) -> None:
    pair = Pair()
    pair.connect()
    steer(pair, steps)
    session = pair.worker.session
    if session is None:
        return
    before = session.state
    session.receive_data(msgspec.json.encode(frame), T0)
    assert session.state in VALID_STATES
    if not isinstance(frame, m.Error) and not isinstance(frame, ACCEPTS[before]):
        assert session.state is SessionState.CLOSED


def test_closed_session_ignores_input() -> None:
    pair = open_pair()
    session = pair.facilitator.session
    assert session is not None
    session.close()
    session.receive_data(b"garbage", T0)
    session.tick(T0 + 1e6)
    session.close(ErrorCode.INTERNAL)
    assert [type(e) for e in session.events_received()] == [ev.Closed]


def test_ack_beyond_sent_closes_with_ack_out_of_range() -> None:
    pair = open_pair()
    w = pair.worker.session
    assert w is not None
    w.receive_data(msgspec.json.encode(m.Ack(upto=5)), T0)
    assert w.close_code is ErrorCode.ACK_OUT_OF_RANGE


def test_window_is_enforced_by_the_receiver() -> None:
    pair = open_pair(max_inflight=2)
    f = pair.facilitator.session
    assert f is not None
    batch = m.DataBatch(items=[m.Data(seq=i, body=m.WorkerEvent(event="e", at=0.0)) for i in (1, 2, 3)])
    f.receive_data(msgspec.json.encode(batch), T0)
    assert f.close_code is ErrorCode.WINDOW_EXCEEDED


def test_gap_closes_with_seq_gap() -> None:
    pair = open_pair()
    f = pair.facilitator.session
    assert f is not None
    f.receive_data(msgspec.json.encode(m.Data(seq=2, body=m.WorkerEvent(event="e", at=0.0))), T0)
    assert f.close_code is ErrorCode.SEQ_GAP


def test_acknowledge_only_what_was_received() -> None:
    pair = open_pair()
    f = pair.facilitator.session
    assert f is not None
    with pytest.raises(LocalProtocolError):
        f.acknowledge(1)


def test_backlog_goes_out_in_batches_within_frame_limit() -> None:
    pair = open_pair(max_inflight=1000, max_batch=100, max_frame_bytes=4096)
    pair.publish(pair.worker, [m.WorkerEvent(event="e", at=float(i), detail="x" * 50) for i in range(250)])
    assert all(len(f.data) <= 4096 for f in pair.w2f)
    assert 3 <= len(pair.w2f) < 250  # batched, and split to respect the frame limit
    pair.pump()
    assert len(pair.facilitator.store.delivered) == 250
    assert not pair.worker.store.out


def test_single_message_over_frame_limit_is_a_local_error() -> None:
    pair = open_pair(max_frame_bytes=1024)
    w = pair.worker.session
    assert w is not None
    with pytest.raises(LocalProtocolError) as info:
        w.send_data([(1, m.WorkerEvent(event="e", at=0.0, detail="x" * 2000))])
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert w.sender.sent == 0  # nothing was reserved


def test_heartbeats_and_silence() -> None:
    pair = open_pair(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    w, f = pair.worker.session, pair.facilitator.session
    assert w is not None and f is not None
    assert not w.heartbeat_due(T0 + 0.5) and w.heartbeat_due(T0 + 1.0)
    w.send_heartbeat(T0 + 1.0, draining=True)
    pair.collect()
    pair.now = T0 + 1.0
    pair.pump()
    assert f.peer_draining
    f.tick(T0 + 3.5)
    assert f.is_open  # heard from the worker at T0 + 1
    w.tick(T0 + 3.5)
    assert w.close_code is ErrorCode.HEARTBEAT_TIMEOUT


def test_requests_responses_and_timeouts() -> None:
    pair = open_pair()
    w, f = pair.worker.session, pair.facilitator.session
    assert w is not None and f is not None
    w.send_request(m.Request(id="r1", method="ping", timeout_ms=1000), T0)
    w.send_request(m.Request(id="r2", method="slow", timeout_ms=1000), T0)
    for frame in w.data_to_send():
        f.receive_data(frame.data, T0)
    got = [e.request.method for e in f.events_received() if isinstance(e, ev.RequestReceived)]
    assert got == ["ping", "slow"]
    f.send_response(m.Response(id="r1", result="pong"))
    f.send_response(m.Response(id="nobody-asked"))
    f.send_warning(ErrorCode.JOB_NOT_YOURS, "job j")
    for frame in f.data_to_send():
        w.receive_data(frame.data.decode(), T0)
    events = w.events_received()
    assert ev.ResponseReceived(response=m.Response(id="r1", result="pong")) in events
    assert ev.PeerWarning(code="job_not_yours", detail="job j") in events
    assert w.is_open  # a warning does not close
    w.tick(T0 + 2.0)
    assert w.events_received() == [ev.RequestTimedOut(id="r2")]


def test_fatal_error_from_peer_closes_with_its_code() -> None:
    pair = open_pair()
    w = pair.worker.session
    assert w is not None
    w.receive_data(msgspec.json.encode(m.Error(code="job_not_yours", detail="x")), T0)
    assert w.close_code is ErrorCode.JOB_NOT_YOURS
    pair = open_pair()
    w = pair.worker.session
    assert w is not None
    w.receive_data(msgspec.json.encode(m.Error(code="from-the-future")), T0)
    assert w.close_code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    "bad",
    [
        {"max_inflight": 0},
        {"heartbeat_interval": 5.0, "heartbeat_timeout": 5.0},
        {"formats": ()},
        {"formats": ("xml",)},
    ],
)
def test_session_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SessionConfig"):
        SessionConfig(**bad)


@given(attempt=st.integers(0, 200), rand=st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_under_its_ceiling(attempt: int, rand: float) -> None:
    delay = full_jitter(attempt, base=0.5, cap=30.0, rand=rand)
    assert 0 <= delay <= min(30.0, 0.5 * 2.0 ** min(attempt, 64)) * rand + 1e-9


def test_full_jitter_delays_end_after_max_attempts() -> None:
    delays = list(full_jitter_delays(base=1.0, cap=8.0, random=lambda: 0.999, max_attempts=6))
    assert [round(d) for d in delays] == [1, 2, 4, 8, 8, 8]
