"""Mutual authentication (protocol v2): the worker talks only to the facilitator key it pinned, a
relay cannot open a session as a worker, a v1 peer is refused by version, and the test vectors of
docs/PROTOCOL.md §4.3 match the code."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol import events as ev
from jobrelay.protocol import messages as m
from jobrelay.protocol.auth import (
    NonceRegistry,
    Transcript,
    facilitator_signature,
    public_key_hex,
    worker_signature,
)
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.session import FacilitatorSession, SessionState, WorkerSession
from jobrelay.protocol.streams import StreamMarks

from .protocol_harness import AUTHORIZED, FACILITATOR_KEY, FACILITATOR_PUBLIC, KEY, T0, WORKER_ID

PROTOCOL_MD = Path(__file__).parent.parent / "docs" / "PROTOCOL.md"
RELAY_KEY = Ed25519PrivateKey.generate()  # the relay's own key, which its victim pinned


def worker(pinned: str = FACILITATOR_PUBLIC, nonce: str = "cd" * 32) -> WorkerSession:
    return WorkerSession(
        worker_id=WORKER_ID,
        key=KEY,
        facilitator_key=pinned,
        nonce=nonce,
        marks=StreamMarks("w-epoch"),
        now=T0,
    )


def facilitator(key: Ed25519PrivateKey = FACILITATOR_KEY, nonce: str = "ab" * 32) -> FacilitatorSession:
    return FacilitatorSession(
        nonce=nonce, session_id="s1", key=key, authorized=AUTHORIZED, nonces=NonceRegistry(), now=T0
    )


def sent(session: WorkerSession | FacilitatorSession) -> list[dict[str, object]]:
    return [msgspec.json.decode(f.data) for f in session.data_to_send()]


def closed_with(session: WorkerSession | FacilitatorSession) -> ev.Closed:
    closed = [e for e in session.events_received() if isinstance(e, ev.Closed)]
    assert session.state is SessionState.CLOSED and len(closed) == 1
    return closed[0]


def test_worker_refuses_a_challenge_signed_by_another_key_than_the_pinned_one() -> None:
    """Wrong pinned key (or a facilitator whose key changed): refused before the worker signs."""
    w = worker()
    hello = w.data_to_send()[0]
    other = facilitator(key=Ed25519PrivateKey.generate())
    other.receive_data(hello.data, T0)
    w.receive_data(other.data_to_send()[0].data, T0)
    frames = sent(w)
    assert [f["type"] for f in frames] == ["error"]  # no auth: nothing signed for that key
    closed = closed_with(w)
    assert closed.code is ErrorCode.WRONG_KEY and not closed.by_peer
    assert FACILITATOR_PUBLIC[:16] in closed.detail  # the log line names the pinned key


def test_worker_refuses_a_challenge_made_for_another_hello() -> None:
    """A recorded challenge (signed for another worker nonce) replayed to a worker."""
    recorded = facilitator()
    recorded.receive_data(worker(nonce="ee" * 32).data_to_send()[0].data, T0)
    w = worker(nonce="cd" * 32)
    w.data_to_send()
    w.receive_data(recorded.data_to_send()[0].data, T0)
    assert [f["type"] for f in sent(w)] == ["error"]
    assert closed_with(w).code is ErrorCode.BAD_SIGNATURE


class Relay:
    """M: the endpoint a worker dials (the worker pinned M's key); it opens its own connection to
    the real facilitator F as that worker and passes the handshake along."""

    def __init__(self, resign: bool) -> None:
        self.resign = resign
        self.worker = worker(pinned=public_key_hex(RELAY_KEY))
        self.real = facilitator()

    def run(self) -> None:
        hello = self.worker.data_to_send()[0]
        self.real.receive_data(hello.data, T0)
        challenge = msgspec.json.decode(self.real.data_to_send()[0].data, type=m.Challenge)
        if self.resign:  # M signs F's nonce with its own key: the worker's pin accepts it
            hello_nonce = msgspec.json.decode(hello.data, type=m.Hello).nonce
            transcript = Transcript(
                m.PROTOCOL_VERSION,
                hello_nonce,
                challenge.nonce,
                public_key_hex(RELAY_KEY),
                challenge.codec,
                WORKER_ID,
            )
            challenge = msgspec.structs.replace(
                challenge,
                public_key=transcript.facilitator_key,
                signature=facilitator_signature(RELAY_KEY, transcript),
            )
        self.worker.receive_data(msgspec.json.encode(challenge), T0)
        for frame in self.worker.data_to_send():
            self.real.receive_data(frame.data, T0)


@pytest.mark.parametrize("resign", [False, True], ids=["forwards-challenge", "re-signs-challenge"])
def test_a_relay_cannot_open_a_session_as_the_worker(resign: bool) -> None:
    relay = Relay(resign)
    relay.run()
    events = relay.real.events_received()
    assert not any(isinstance(e, ev.AuthVerified | ev.Opened) for e in events)
    assert relay.real.state is SessionState.CLOSED
    refused = next(e for e in events if isinstance(e, ev.Closed))
    if resign:  # the worker signed for M's key; F rebuilds the payload with its own: no match
        assert refused.code is ErrorCode.BAD_SIGNATURE
    else:  # the worker refused F's key (not the pinned one) and told "F" so, signing nothing
        assert refused.code is ErrorCode.WRONG_KEY and refused.by_peer
        assert closed_with(relay.worker).code is ErrorCode.WRONG_KEY


V1_HELLO = b'{"type":"hello","version":1,"worker_id":"worker-1","codecs":["json"]}'
V1_CHALLENGE = (
    b'{"type":"challenge","version":1,"nonce":"9f1c3a5e7b2d4f609f1c3a5e7b2d4f609f1c3a5e7b2d4f609f1c3a5e7b2d4f60",'
    b'"codec":"json"}'
)


def test_a_v1_worker_is_refused_by_version_not_challenged() -> None:
    f = facilitator()
    f.receive_data(V1_HELLO, T0)
    assert [(x["type"], x["code"]) for x in sent(f)] == [("error", "unsupported_version")]
    assert closed_with(f).code is ErrorCode.UNSUPPORTED_VERSION


def test_a_v1_facilitator_is_refused_by_version_and_gets_no_auth() -> None:
    w = worker()
    w.data_to_send()
    w.receive_data(V1_CHALLENGE, T0)
    assert [(x["type"], x["code"]) for x in sent(w)] == [("error", "unsupported_version")]
    assert closed_with(w).code is ErrorCode.UNSUPPORTED_VERSION


def test_a_hello_without_a_worker_nonce_is_refused() -> None:
    f = facilitator()
    f.receive_data(msgspec.json.encode(m.Hello(version=m.PROTOCOL_VERSION, worker_id=WORKER_ID)), T0)
    assert closed_with(f).code is ErrorCode.INVALID_FIELD


def doc_vectors() -> dict[str, str]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    block = re.search(r"Test vectors \(protocol [23].*?```text\n(.*?)```", text, re.S)
    assert block is not None, "the test vectors block is missing from docs/PROTOCOL.md"
    pairs = (line.split("=", 1) for line in block.group(1).splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def test_the_documented_test_vectors_match_the_code() -> None:
    v = doc_vectors()
    f_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["facilitator_seed"]))
    w_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["worker_seed"]))
    assert public_key_hex(f_key) == v["facilitator_key"] and public_key_hex(w_key) == v["worker_key"]
    assert int(v["version"]) == m.PROTOCOL_VERSION
    transcript = Transcript(
        int(v["version"]),
        v["worker_nonce"],
        v["facilitator_nonce"],
        v["facilitator_key"],
        v["codec"],
        v["worker_id"],
    )
    timestamp_ms = int(v["timestamp_ms"])
    assert transcript.challenge_payload() == v["challenge_payload"].replace("\\x00", "\x00").encode()
    assert (
        transcript.auth_payload(v["worker_key"], timestamp_ms)
        == v["auth_payload"].replace("\\x00", "\x00").encode()
    )
    assert facilitator_signature(f_key, transcript) == v["challenge_signature"]
    assert worker_signature(w_key, transcript, timestamp_ms) == v["auth_signature"]
    # And the sessions produce those very frames: a worker pinning that key accepts the challenge.
    w = WorkerSession(
        worker_id=v["worker_id"],
        key=w_key,
        facilitator_key=v["facilitator_key"],
        nonce=v["worker_nonce"],
        marks=StreamMarks("w-epoch"),
        now=timestamp_ms / 1000,
    )
    f = FacilitatorSession(
        nonce=v["facilitator_nonce"],
        session_id="s1",
        key=f_key,
        authorized={v["worker_id"]: v["worker_key"]},
        nonces=NonceRegistry(),
        now=timestamp_ms / 1000,
    )
    f.receive_data(w.data_to_send()[0].data, timestamp_ms / 1000)
    challenge = msgspec.json.decode(f.data_to_send()[0].data, type=m.Challenge)
    assert challenge.signature == v["challenge_signature"]
    w.receive_data(msgspec.json.encode(challenge), timestamp_ms / 1000)
    auth = msgspec.json.decode(w.data_to_send()[0].data, type=m.Auth)
    assert auth.signature == v["auth_signature"]
