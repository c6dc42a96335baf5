"""Handshake: every way to fail authentication is refused with its documented error code."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.auth import NonceRegistry, parse_authorized_keys, public_key_hex, sign_challenge
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError
from jobrelay.protocol.session import FacilitatorSession, SessionConfig, SessionState, WorkerSession
from jobrelay.protocol.streams import StreamMarks

from .protocol_harness import AUTHORIZED, KEY, T0, WORKER_ID, Pair

NONCE = "ab" * 32


def facilitator(nonces: NonceRegistry | None = None, **config: object) -> FacilitatorSession:
    return FacilitatorSession(
        nonce=NONCE,
        session_id="s1",
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
    fields.setdefault(
        "signature",
        sign_challenge(key, str(fields["nonce"]), str(fields["worker_id"]), int(fields["timestamp_ms"])),  # type: ignore[call-overload]
    )
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
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID))
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
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id="stranger"))
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
    send(session, m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID, codecs=("xml",)))
    assert refused_with(session) is ErrorCode.UNSUPPORTED_CODEC


def test_handshake_timeout() -> None:
    session = facilitator(handshake_timeout=5.0)
    session.tick(T0 + 4.0)
    assert session.state is SessionState.AWAIT_HELLO
    session.tick(T0 + 6.0)
    assert refused_with(session) is ErrorCode.HANDSHAKE_TIMEOUT


def test_worker_refuses_bad_challenge_and_welcome() -> None:
    def worker() -> WorkerSession:
        w = WorkerSession(worker_id=WORKER_ID, key=KEY, marks=StreamMarks("w", 0, 3), now=T0)
        w.data_to_send()
        return w

    w = worker()
    w.receive_data(msgspec.json.encode(m.Challenge(version=2, nonce=NONCE)), T0)
    assert w.close_code is ErrorCode.UNSUPPORTED_VERSION
    w = worker()
    w.receive_data(msgspec.json.encode(m.Challenge(version=1, nonce=NONCE, codec="msgpack")), T0)
    assert w.close_code is ErrorCode.UNSUPPORTED_CODEC
    w = worker()
    w.receive_data(msgspec.json.encode(m.Challenge(version=1, nonce=NONCE)), T0)
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
