"""Handshake: every way to fail authentication is refused with its documented error code."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.auth import (
    NonceRegistry,
    Transcript,
    facilitator_signature,
    parse_authorized_keys,
    public_key_hex,
    worker_signature,
)
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError
from jobrelay.protocol.session import FacilitatorSession, SessionConfig, SessionState, WorkerSession
from jobrelay.protocol.streams import StreamMarks

from .protocol_harness import AUTHORIZED, FACILITATOR_KEY, FACILITATOR_PUBLIC, KEY, T0, WORKER_ID, Pair

NONCE = "ab" * 32  # the facilitator's
WNONCE = "ef" * 32  # the worker's


def facilitator(nonces: NonceRegistry | None = None, **config: object) -> FacilitatorSession:
    return FacilitatorSession(
        nonce=NONCE,
        session_id="s1",
        key=FACILITATOR_KEY,
        authorized=AUTHORIZED,
        nonces=nonces or NonceRegistry(),
        now=T0,
        config=SessionConfig(**config),  # type: ignore[arg-type]
    )


def send(session: FacilitatorSession, frame: msgspec.Struct, now: float = T0) -> None:
    session.receive_data(msgspec.json.encode(frame), now)


def auth(key: Ed25519PrivateKey = KEY, **overrides: object) -> m.Auth:
    fields: dict[str, object] = {
        "worker_id": WORKER_ID,
        "public_key": public_key_hex(key),
        "nonce": NONCE,
        "timestamp_ms": int(T0 * 1000),
        "out_epoch": "w-epoch",
    }
    fields.update(overrides)
    transcript = Transcript(
        m.PROTOCOL_VERSION, WNONCE, str(fields["nonce"]), FACILITATOR_PUBLIC, "json", str(fields["worker_id"])
    )
    fields.setdefault("signature", worker_signature(key, transcript, int(fields["timestamp_ms"])))  # type: ignore[call-overload]
    return m.Auth(**fields)  # type: ignore[arg-type]


def refused_with(session: FacilitatorSession) -> ErrorCode | None:
    """The code the session closed with, checking it also told the peer in an error frame."""
    closed = [e for e in session.events_received() if isinstance(e, ev.Closed)]
    assert session.state is SessionState.CLOSED and len(closed) == 1
    frames = [msgspec.json.decode(f.data) for f in session.data_to_send()]
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == closed[0].code
    return closed[0].code


def hello_done(nonces: NonceRegistry | None = None) -> FacilitatorSession:
    session = facilitator(nonces)
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID, nonce=WNONCE))
    assert session.state is SessionState.AWAIT_AUTH
    return session


def test_valid_handshake_opens_both_sides() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    assert pair.open
    assert pair.worker.session is not None and pair.worker.session.session_id == "s1"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (auth(worker_id="stranger", signature="00"), ErrorCode.WRONG_KEY),  # differs from hello
        (auth(key=Ed25519PrivateKey.generate()), ErrorCode.WRONG_KEY),
        (auth(signature="00" * 64), ErrorCode.BAD_SIGNATURE),
        (auth(signature="zz"), ErrorCode.INVALID_FIELD),
        (auth(timestamp_ms=int((T0 - 3600) * 1000)), ErrorCode.STALE_TIMESTAMP),
        (auth(timestamp_ms=int((T0 + 3600) * 1000)), ErrorCode.STALE_TIMESTAMP),
        (auth(nonce="cd" * 32), ErrorCode.REPLAYED_NONCE),
    ],
    ids=["other-worker", "wrong-key", "bad-signature", "not-hex", "stale", "future", "other-nonce"],
)
def test_bad_auth_is_refused(frame: m.Auth, code: ErrorCode) -> None:
    session = hello_done()
    send(session, frame)
    assert refused_with(session) is code


def test_unknown_key_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    session = facilitator()
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id="stranger", nonce=WNONCE))
    send(session, auth(key=stranger, worker_id="stranger"))
    assert refused_with(session) is ErrorCode.UNKNOWN_KEY


def test_replayed_nonce_is_refused_on_another_session() -> None:
    """A captured auth frame replayed on a new connection that (by bad luck) got the same nonce."""
    nonces = NonceRegistry()
    first = hello_done(nonces)
    send(first, auth())
    assert first.state is SessionState.VERIFYING
    second = hello_done(nonces)
    send(second, auth())
    assert refused_with(second) is ErrorCode.REPLAYED_NONCE


def test_nonce_registry_forgets_after_ttl() -> None:
    registry = NonceRegistry(ttl=10)
    assert registry.use("n", 0.0)
    assert not registry.use("n", 5.0)
    assert registry.use("n", 20.0)


@pytest.mark.parametrize(
    "frame",
    [
        m.Data(seq=1, body=m.WorkerEvent(event="e", at=0.0)),
        m.DataBatch(items=[m.Data(seq=1, body=m.WorkerEvent(event="e", at=0.0))]),
    ],
)
@pytest.mark.parametrize("after_hello", [False, True])
def test_data_before_auth_is_refused(frame: msgspec.Struct, after_hello: bool) -> None:
    session = hello_done() if after_hello else facilitator()
    send(session, frame)
    assert refused_with(session) is ErrorCode.NOT_AUTHENTICATED


def test_data_while_verifying_is_refused() -> None:
    session = hello_done()
    send(session, auth())
    send(session, m.Data(seq=1, body=m.WorkerEvent(event="e", at=0.0)))
    assert refused_with(session) is ErrorCode.NOT_AUTHENTICATED


def test_version_and_codec_mismatch() -> None:
    session = facilitator()
    send(session, m.Hello(version=99, worker_id=WORKER_ID))
    assert refused_with(session) is ErrorCode.UNSUPPORTED_VERSION
    session = facilitator()
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID, codecs=("xml",), nonce=WNONCE))
    assert refused_with(session) is ErrorCode.UNSUPPORTED_CODEC


def test_handshake_timeout() -> None:
    session = facilitator(handshake_timeout=5.0)
    session.tick(T0 + 4.0)
    assert session.state is SessionState.AWAIT_HELLO
    session.tick(T0 + 6.0)
    assert refused_with(session) is ErrorCode.HANDSHAKE_TIMEOUT


def pinned_worker(pinned: str = FACILITATOR_PUBLIC) -> WorkerSession:
    """A worker that pinned ``pinned``, its hello already taken off the wire."""
    w = WorkerSession(
        worker_id=WORKER_ID,
        key=KEY,
        facilitator_key=pinned,
        nonce=WNONCE,
        marks=StreamMarks("w", 0, 3),
        now=T0,
    )
    w.data_to_send()
    return w


def challenge(
    key: Ed25519PrivateKey = FACILITATOR_KEY, worker_nonce: str = WNONCE, **overrides: object
) -> m.Challenge:
    """A challenge signed by ``key`` for a worker whose hello carried ``worker_nonce``."""
    fields: dict[str, object] = {"version": m.PROTOCOL_VERSION, "nonce": NONCE, "codec": "json"}
    fields.update(overrides)
    transcript = Transcript(
        m.PROTOCOL_VERSION, worker_nonce, NONCE, public_key_hex(key), str(fields["codec"]), WORKER_ID
    )
    fields.setdefault("public_key", public_key_hex(key))
    fields.setdefault("signature", facilitator_signature(key, transcript))
    return m.Challenge(**fields)  # type: ignore[arg-type]


def test_worker_refuses_bad_challenge_and_welcome() -> None:
    w = pinned_worker()
    w.receive_data(msgspec.json.encode(challenge(version=m.PROTOCOL_VERSION + 1)), T0)
    assert w.close_code is ErrorCode.UNSUPPORTED_VERSION
    w = pinned_worker()
    w.receive_data(msgspec.json.encode(challenge(codec="msgpack")), T0)
    assert w.close_code is ErrorCode.UNSUPPORTED_CODEC
    w = pinned_worker()
    w.receive_data(msgspec.json.encode(challenge()), T0)
    # The facilitator claims to have accepted seq 9 of a stream that only reached 3.
    w.receive_data(msgspec.json.encode(m.Welcome(session_id="s", ack=9, out_epoch="f")), T0)
    assert w.close_code is ErrorCode.ACK_OUT_OF_RANGE


def test_msgpack_is_negotiated_and_used_after_welcome() -> None:
    pair = Pair(SessionConfig(formats=("msgpack", "json")))
    pair.connect()
    pair.pump()
    assert pair.open
    pair.publish(pair.worker, [m.WorkerEvent(event="hi", at=1.0)])
    assert pair.w2f and pair.w2f[0].binary
    pair.pump()
    assert pair.facilitator.store.delivered == [m.WorkerEvent(event="hi", at=1.0)]


def test_new_epoch_is_a_new_stream_not_a_duplicate() -> None:
    """A worker whose database was replaced starts at seq 1 again; it must not be dropped."""
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.publish(pair.worker, [m.WorkerEvent(event=f"e{i}", at=0.0) for i in range(3)])
    pair.pump()
    assert len(pair.facilitator.store.delivered) == 3
    pair.disconnect()
    old = pair.worker.store
    pair.worker.store = type(old)(out_epoch="w-epoch-2", in_epoch=old.in_epoch, in_hwm=old.in_hwm)
    pair.connect()
    pair.pump()
    pair.publish(pair.worker, [m.WorkerEvent(event="fresh", at=0.0)])
    pair.pump()
    assert pair.facilitator.store.delivered[-1] == m.WorkerEvent(event="fresh", at=0.0)
    assert pair.facilitator.new_streams == 2  # the first connection was new too
    assert pair.facilitator.duplicates == 0


def test_local_misuse_raises() -> None:
    session = facilitator()
    with pytest.raises(LocalProtocolError):
        session.send_data([(1, m.JobRequest(job_id="j", kind="k"))])
    with pytest.raises(LocalProtocolError):
        session.accept(StreamMarks("f"))
    pair = Pair(SessionConfig(max_inflight=2))
    pair.connect()
    pair.pump()
    w = pair.worker.session
    assert w is not None
    with pytest.raises(LocalProtocolError) as info:
        w.send_data([(5, m.WorkerEvent(event="e", at=0.0))])
    assert info.value.code is ErrorCode.SEQ_GAP
    with pytest.raises(LocalProtocolError) as info:
        w.send_data([(i, m.WorkerEvent(event="e", at=0.0)) for i in (1, 2, 3)])
    assert info.value.code is ErrorCode.WINDOW_EXCEEDED


def test_authorized_keys_file_parsing() -> None:
    key = public_key_hex(KEY)
    assert parse_authorized_keys(f"# workers\n{WORKER_ID} {key}  # laptop\n\n") == {WORKER_ID: key}
    for bad in ("w1", f"w1 {key} extra", "w1 nothex", f"w1 {key}\nw1 {key}"):
        with pytest.raises(ValueError, match="line"):
            parse_authorized_keys(bad)


# ---------------------------------------------------------------- stream decisions as events


def handshake(
    worker_marks: StreamMarks, facilitator_marks: StreamMarks
) -> tuple[list[ev.Event], list[ev.Event], WorkerSession, FacilitatorSession]:
    """Run the handshake between sessions holding these stored marks; every event of each side."""
    worker = WorkerSession(
        worker_id=WORKER_ID,
        key=KEY,
        facilitator_key=FACILITATOR_PUBLIC,
        nonce=WNONCE,
        marks=worker_marks,
        now=T0,
    )
    fac = facilitator()
    w_events: list[ev.Event] = []
    f_events: list[ev.Event] = []
    for _ in range(10):
        moved = False
        for frame in worker.data_to_send():
            fac.receive_data(frame.data, T0)
            moved = True
        for event in fac.events_received():
            f_events.append(event)
            if isinstance(event, ev.AuthVerified):
                fac.accept(facilitator_marks)
                f_events.extend(fac.events_received())
        for frame in fac.data_to_send():
            worker.receive_data(frame.data, T0)
            moved = True
        w_events.extend(worker.events_received())
        if not moved:
            return w_events, f_events, worker, fac
    raise AssertionError("the handshake did not go quiet")


def stream_events(events: list[ev.Event]) -> list[ev.Event]:
    kinds = (ev.PeerStreamStarted, ev.PeerStreamAdvanced, ev.RestartOwnStream)
    return [e for e in events if isinstance(e, kinds)]


def test_first_connection_starts_both_peer_streams_with_no_previous_epoch() -> None:
    w_events, f_events, worker, fac = handshake(StreamMarks("w-epoch"), StreamMarks("f-epoch"))
    assert worker.is_open and fac.is_open
    assert stream_events(f_events) == [ev.PeerStreamStarted(epoch="w-epoch", after=0, previous_epoch="")]
    assert stream_events(w_events) == [ev.PeerStreamStarted(epoch="f-epoch", after=0, previous_epoch="")]
    # Emitted before Opened: the owner records the epoch before anything of the stream arrives.
    assert [type(e) for e in f_events] == [ev.AuthVerified, ev.PeerStreamStarted, ev.Opened]
    assert [type(e) for e in w_events] == [ev.PeerStreamStarted, ev.Opened]


def test_known_epochs_at_their_stored_marks_emit_no_stream_event() -> None:
    w_marks = StreamMarks("w-epoch", out_acked=4, out_last_seq=6, in_epoch="f-epoch", in_hwm=2)
    f_marks = StreamMarks("f-epoch", out_acked=2, out_last_seq=3, in_epoch="w-epoch", in_hwm=4)
    w_events, f_events, worker, fac = handshake(w_marks, f_marks)
    assert worker.is_open and fac.is_open
    assert stream_events(w_events) == stream_events(f_events) == []


def test_a_replaced_worker_store_starts_a_new_stream_naming_the_previous_epoch() -> None:
    """The worker's database was deleted: a new epoch at seq 0, the facilitator held 7 of the old one."""
    f_marks = StreamMarks("f-epoch", in_epoch="w-epoch-1", in_hwm=7)
    w_events, f_events, _, fac = handshake(StreamMarks("w-epoch-2"), f_marks)
    assert fac.is_open
    assert stream_events(f_events) == [
        ev.PeerStreamStarted(epoch="w-epoch-2", after=0, previous_epoch="w-epoch-1")
    ]
    opened = [e for e in w_events if isinstance(e, ev.Opened)]
    assert opened[0].resume_after == 0  # the old seq 7 does not count against the new stream


def test_a_replaced_facilitator_store_starts_a_new_stream_naming_the_previous_epoch() -> None:
    w_marks = StreamMarks("w-epoch", in_epoch="f-epoch-1", in_hwm=5)
    w_events, _, worker, _ = handshake(w_marks, StreamMarks("f-epoch-2", out_acked=0, out_last_seq=2))
    assert worker.is_open
    assert stream_events(w_events) == [
        ev.PeerStreamStarted(epoch="f-epoch-2", after=0, previous_epoch="f-epoch-1")
    ]


def test_a_restored_facilitator_store_advances_the_peer_stream_mark() -> None:
    """Restored from an older copy: it holds up to 3 of the worker's stream, the worker knows 6
    were acknowledged. Same epoch, so the mark is raised, not a new stream."""
    w_marks = StreamMarks("w-epoch", out_acked=6, out_last_seq=8)
    f_marks = StreamMarks("f-epoch", in_epoch="w-epoch", in_hwm=3)
    w_events, f_events, worker, fac = handshake(w_marks, f_marks)
    assert worker.is_open and fac.is_open
    assert stream_events(f_events) == [ev.PeerStreamAdvanced(epoch="w-epoch", hwm=6, stored_hwm=3)]
    assert stream_events(w_events) == [ev.PeerStreamStarted(epoch="f-epoch", after=0, previous_epoch="")]
    assert fac.receiver.seen == 6


def test_a_restored_worker_store_advances_the_peer_stream_mark() -> None:
    w_marks = StreamMarks("w-epoch", in_epoch="f-epoch", in_hwm=1)
    f_marks = StreamMarks("f-epoch", out_acked=4, out_last_seq=5, in_epoch="w-epoch")
    w_events, f_events, worker, _ = handshake(w_marks, f_marks)
    assert worker.is_open
    assert stream_events(w_events) == [ev.PeerStreamAdvanced(epoch="f-epoch", hwm=4, stored_hwm=1)]
    assert stream_events(f_events) == []


def test_a_welcome_acking_beyond_our_stream_restarts_it_then_closes() -> None:
    """The worker's store was restored from an older copy: the facilitator holds seq 9 of a
    stream that only reached 3 here."""
    w_marks = StreamMarks("w-epoch", out_acked=2, out_last_seq=3)
    f_marks = StreamMarks("f-epoch", in_epoch="w-epoch", in_hwm=9)
    w_events, f_events, worker, fac = handshake(w_marks, f_marks)
    restart, closed = w_events[-2:]
    assert isinstance(restart, ev.RestartOwnStream) and "9" in restart.detail
    assert closed == ev.Closed(code=ErrorCode.ACK_OUT_OF_RANGE, detail=restart.detail, by_peer=False)
    assert [type(e) for e in w_events] == [ev.RestartOwnStream, ev.Closed]
    assert worker.state is SessionState.CLOSED
    # The facilitator was told why in an error frame.
    assert fac.state is SessionState.CLOSED
    assert f_events[-1] == ev.Closed(code=ErrorCode.ACK_OUT_OF_RANGE, detail=restart.detail, by_peer=True)


def test_an_accept_acking_beyond_our_stream_restarts_it_then_closes() -> None:
    """The facilitator's store was restored: the worker holds seq 8 of a stream that reached 3."""
    w_marks = StreamMarks("w-epoch", in_epoch="f-epoch", in_hwm=8)
    f_marks = StreamMarks("f-epoch", out_acked=1, out_last_seq=3, in_epoch="w-epoch")
    w_events, f_events, worker, fac = handshake(w_marks, f_marks)
    assert [type(e) for e in f_events] == [ev.AuthVerified, ev.RestartOwnStream, ev.Closed]
    restart, closed = f_events[1:]
    assert isinstance(restart, ev.RestartOwnStream) and "8" in restart.detail
    assert closed == ev.Closed(code=ErrorCode.ACK_OUT_OF_RANGE, detail=restart.detail, by_peer=False)
    assert fac.state is SessionState.CLOSED
    assert w_events == [ev.Closed(code=ErrorCode.ACK_OUT_OF_RANGE, detail=restart.detail, by_peer=True)]
    assert worker.state is SessionState.CLOSED
