"""Session behaviour beyond the handshake: the transition table, acks, heartbeats, requests."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.auth import NonceRegistry, Transcript, verify_challenge
from jobrelay.protocol.backoff import full_jitter, full_jitter_delays
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.session import (
    ACCEPT,
    ACCEPTS,
    CLOSE,
    TRANSITIONS,
    FacilitatorSession,
    SessionConfig,
    SessionState,
    WorkerSession,
)
from jobrelay.protocol.streams import StreamMarks

from . import strategies as s
from .protocol_harness import AUTHORIZED, FACILITATOR_KEY, FACILITATOR_PUBLIC, KEY, T0, WORKER_ID, Pair

S = TypeVar("S", WorkerSession, FacilitatorSession)

NONCE = "ab" * 32  # the facilitator's
WNONCE = "cd" * 32  # the worker's
FACILITATOR_STATES = [
    SessionState.AWAIT_HELLO,
    SessionState.AWAIT_AUTH,
    SessionState.VERIFYING,
    SessionState.OPEN,
    SessionState.CLOSED,
]
WORKER_STATES = [
    SessionState.AWAIT_CHALLENGE,
    SessionState.AWAIT_WELCOME,
    SessionState.OPEN,
    SessionState.CLOSED,
]


def open_pair(**config: Any) -> Pair:
    pair = Pair(SessionConfig(**config))
    pair.connect()
    pair.pump()
    assert pair.open
    return pair


def sessions() -> tuple[WorkerSession, FacilitatorSession]:
    worker = WorkerSession(
        worker_id=WORKER_ID,
        key=KEY,
        facilitator_key=FACILITATOR_PUBLIC,
        nonce=WNONCE,
        marks=StreamMarks("w-epoch"),
        now=T0,
    )
    fac = FacilitatorSession(
        nonce=NONCE,
        session_id="s1",
        key=FACILITATOR_KEY,
        authorized=AUTHORIZED,
        nonces=NonceRegistry(),
        now=T0,
    )
    return worker, fac


def forward(source: WorkerSession | FacilitatorSession, target: WorkerSession | FacilitatorSession) -> None:
    for frame in source.data_to_send():
        target.receive_data(frame.data, T0)


def settled(session: S, state: SessionState) -> S:
    """The session steered into ``state``, with nothing left to send and no events pending."""
    session.data_to_send()
    session.events_received()
    assert session.state is state, f"steering reached {session.state}, not {state}"
    return session


def exchange(worker: WorkerSession, fac: FacilitatorSession, count: int) -> None:
    """Both open sessions send ``count`` data messages and receive the other's (none acknowledged)."""
    if count:
        worker.send_data([(seq, m.WorkerEvent(event="e", at=0.0)) for seq in range(1, count + 1)])
        fac.send_data([(seq, m.JobRequest(job_id=f"j{seq}", kind="k")) for seq in range(1, count + 1)])
        forward(worker, fac)
        forward(fac, worker)


def facilitator_in(state: SessionState, traffic: int = 0) -> FacilitatorSession:
    """A facilitator session in ``state``, reached by a real handshake (or close()); when OPEN,
    after ``traffic`` data messages each way."""
    worker, fac = sessions()
    if state is SessionState.CLOSED:
        fac.close()
        return settled(fac, state)
    if state is not SessionState.AWAIT_HELLO:
        forward(worker, fac)  # hello
    if state in (SessionState.VERIFYING, SessionState.OPEN):
        forward(fac, worker)  # challenge
        forward(worker, fac)  # auth
    if state is SessionState.OPEN:
        fac.accept(StreamMarks("f-epoch"))
        forward(fac, worker)  # welcome
        exchange(worker, fac, traffic)
    return settled(fac, state)


def worker_in(state: SessionState, traffic: int = 0) -> WorkerSession:
    """A worker session in ``state``, reached by a real handshake (or close()); when OPEN, after
    ``traffic`` data messages each way."""
    worker, fac = sessions()
    if state is SessionState.CLOSED:
        worker.close()
        return settled(worker, state)
    forward(worker, fac)  # hello
    if state is not SessionState.AWAIT_CHALLENGE:
        forward(fac, worker)  # challenge
    if state is SessionState.OPEN:
        forward(worker, fac)  # auth
        fac.accept(StreamMarks("f-epoch"))
        forward(fac, worker)  # welcome
        exchange(worker, fac, traffic)
    return settled(worker, state)


def signed_for_us(frame: m.Challenge) -> bool:
    """Whether the pinned facilitator signed this challenge for the test workers' hello."""
    transcript = Transcript(m.PROTOCOL_VERSION, WNONCE, frame.nonce, frame.public_key, frame.codec, WORKER_ID)
    try:
        verify_challenge(frame, transcript, pinned_key=FACILITATOR_PUBLIC)
    except RemoteProtocolError:
        return False
    return True


def content_valid(session: WorkerSession | FacilitatorSession, frame: Any) -> bool:
    """Whether a frame of a type the state accepts passes the checks of its handler."""
    match frame:
        case m.Hello():
            return (
                frame.version == m.PROTOCOL_VERSION
                and any(f in frame.codecs for f in session.config.formats)
                and len(frame.nonce) == 64
            )
        case m.Challenge():
            return (
                frame.version == m.PROTOCOL_VERSION
                and frame.codec in session.config.formats
                and len(frame.nonce) == 64
                and signed_for_us(frame)
            )
        case m.Auth():
            return False  # random keys and signatures never verify (valid ones: test_protocol_handshake)
        case m.Welcome():
            assert isinstance(session, WorkerSession)
            marks = session.marks
            return marks.out_acked <= frame.ack <= max(marks.out_last_seq, session.sender.last_seq)
        case m.Ack():
            return frame.upto <= session.sender.sent
        case m.Data() | m.DataBatch():
            seen, acked = session.receiver.seen, session.receiver.acked
            for item in frame.items if isinstance(frame, m.DataBatch) else [frame]:
                if item.seq <= seen:
                    continue  # a duplicate is dropped, not an error
                if item.seq != seen + 1 or item.seq - acked > session.receiver.window:
                    return False
                seen = item.seq
            return True
        case _:
            return True  # heartbeat, request, response: nothing to refuse


def predicted_state(session: WorkerSession | FacilitatorSession, frame: Any) -> SessionState:
    """The next state the transition table predicts for ``frame`` in the session's state."""
    state = session.state
    if state is SessionState.CLOSED:
        return state  # a closed session ignores input
    if isinstance(frame, m.Error):
        return state if not frame.fatal and state is SessionState.OPEN else TRANSITIONS[state][CLOSE]
    target = TRANSITIONS[state].get(type(frame))
    if target is None:
        return SessionState.CLOSED  # not accepted in this state
    return target if content_valid(session, frame) else TRANSITIONS[state][CLOSE]


def check_transition(session: WorkerSession | FacilitatorSession, frame: Any) -> None:
    before = session.state
    want = predicted_state(session, frame)
    session.receive_data(msgspec.json.encode(frame), T0)
    assert session.state is want, f"{type(frame).__name__} in {before}: {session.state}, want {want}"
    event(f"{before.value} -> {want.value}")
    closed = [e for e in session.events_received() if isinstance(e, ev.Closed)]
    if want is SessionState.CLOSED and before is not SessionState.CLOSED:
        assert len(closed) == 1
        if not closed[0].by_peer:  # we refused it: the code says why and the peer was told
            assert isinstance(closed[0].code, ErrorCode)
            assert msgspec.json.decode(session.data_to_send()[-1].data)["type"] == "error"
    else:
        assert closed == []


@given(state=st.sampled_from(FACILITATOR_STATES), traffic=st.integers(0, 3), frame=s.worker_frames)
def test_every_state_and_worker_frame_moves_as_the_table_predicts(
    state: SessionState, traffic: int, frame: Any
) -> None:
    """h2-style: any frame in any state moves exactly to the state TRANSITIONS predicts."""
    check_transition(facilitator_in(state, traffic), frame)


@given(state=st.sampled_from(WORKER_STATES), traffic=st.integers(0, 3), frame=s.facilitator_frames)
def test_every_state_and_facilitator_frame_moves_as_the_table_predicts(
    state: SessionState, traffic: int, frame: Any
) -> None:
    check_transition(worker_in(state, traffic), frame)


def valid_frame(session: WorkerSession | FacilitatorSession, trigger: type) -> Any:
    """A frame of type ``trigger`` whose content the session's handler accepts."""
    worker = isinstance(session, WorkerSession)

    def body(seq: int) -> Any:
        return m.JobRequest(job_id=f"j{seq}", kind="k") if worker else m.WorkerEvent(event="e", at=0.0)

    if trigger is m.Auth:  # signed by a worker answering this session's challenge (same nonce)
        signer, challenger = sessions()
        forward(signer, challenger)
        forward(challenger, signer)
        return msgspec.json.decode(signer.data_to_send()[-1].data, type=m.Auth)
    if trigger is m.Challenge:  # signed by the pinned facilitator answering this worker's hello
        hello_from, signer = sessions()
        forward(hello_from, signer)
        return msgspec.json.decode(signer.data_to_send()[-1].data, type=m.Challenge)
    frames: dict[type, Any] = {
        m.Hello: m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID, nonce=WNONCE),
        m.Welcome: m.Welcome(session_id="s1", ack=0, out_epoch="f-epoch"),
        m.Ack: m.Ack(upto=0),
        m.Heartbeat: m.Heartbeat(at=T0),
        m.Request: m.Request(id="r1", method="ping"),
        m.Response: m.Response(id="r1"),
        m.Data: m.Data(seq=1, body=body(1)),
        m.DataBatch: m.DataBatch(items=[m.Data(seq=1, body=body(1)), m.Data(seq=2, body=body(2))]),
    }
    return frames[trigger]


def take(session: WorkerSession | FacilitatorSession, trigger: Any) -> None:
    """Take the transition ``trigger`` out of the session's state, with valid content."""
    if trigger == ACCEPT:
        assert isinstance(session, FacilitatorSession)
        session.accept(StreamMarks("f-epoch"))
    elif trigger == CLOSE:
        session.close()
    else:
        session.receive_data(msgspec.json.encode(valid_frame(session, trigger)), T0)


def transitions(states: list[SessionState]) -> list[Any]:
    return [
        pytest.param(state, trigger, id=f"{state.value}-{getattr(trigger, '__name__', trigger)}")
        for state in states
        for trigger in TRANSITIONS[state]
    ]


@pytest.mark.parametrize(("state", "trigger"), transitions(FACILITATOR_STATES))
def test_every_facilitator_transition_is_taken_by_a_valid_trigger(state: SessionState, trigger: Any) -> None:
    session = facilitator_in(state)
    take(session, trigger)
    assert session.state is TRANSITIONS[state][trigger]
    closed = [e for e in session.events_received() if isinstance(e, ev.Closed)]
    assert len(closed) == (1 if trigger == CLOSE else 0)


@pytest.mark.parametrize(("state", "trigger"), transitions(WORKER_STATES))
def test_every_worker_transition_is_taken_by_a_valid_trigger(state: SessionState, trigger: Any) -> None:
    session = worker_in(state)
    take(session, trigger)
    assert session.state is TRANSITIONS[state][trigger]
    closed = [e for e in session.events_received() if isinstance(e, ev.Closed)]
    assert len(closed) == (1 if trigger == CLOSE else 0)


def test_the_table_covers_every_state_and_accepts_is_read_from_it() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    assert TRANSITIONS[SessionState.CLOSED] == {}
    for state, row in TRANSITIONS.items():
        assert ACCEPTS[state] == tuple(t for t in row if isinstance(t, type))
        if state is not SessionState.CLOSED:
            assert row[CLOSE] is SessionState.CLOSED
    assert set(FACILITATOR_STATES) | set(WORKER_STATES) == set(SessionState)


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


def test_a_frame_carries_at_most_half_the_window() -> None:
    # max_batch as large as the window would leave one frame in flight (stop-and-wait): the
    # peer could not commit one frame while the next arrives.
    pair = open_pair(max_inflight=1000, max_batch=1000)
    pair.publish(pair.worker, [m.WorkerEvent(event="e", at=float(i)) for i in range(1000)])
    sizes = [len(msgspec.json.decode(f.data)["items"]) for f in pair.w2f]
    assert sizes == [500, 500]
    pair.pump()
    assert len(pair.facilitator.store.delivered) == 1000


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


def test_next_deadline_is_when_tick_next_has_work() -> None:
    """Owners sleep until next_deadline() instead of ticking on a period: it must never be later
    than the moment tick() would act."""
    worker, _ = sessions()
    assert worker.next_deadline() == T0 + worker.config.handshake_timeout
    pair = open_pair(heartbeat_interval=2.0, heartbeat_timeout=9.0)
    session = pair.facilitator.session
    assert session is not None
    due = session.next_deadline()
    assert due == min(session.last_sent + 2.0, session.last_received + 9.0)
    session.tick(due - 0.001)
    assert not session.heartbeat_due(due - 0.001) and session.is_open
    assert session.heartbeat_due(due)  # the heartbeat is what comes due first here
    session.send_request(m.Request(id="r1", method="x", timeout_ms=500), now=session.last_sent)
    assert session.next_deadline() == session.last_sent + 0.5  # a request's timeout is sooner
    session.close()
    assert session.next_deadline() == float("inf")
