"""Codec: every frame round-trips; any input decodes to a valid frame or raises ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol import messages as m
from jobrelay.protocol.codec import Codec, Format, facilitator_codec, worker_codec
from jobrelay.protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError

from . import strategies as s

FORMATS: list[Format] = ["json", "msgpack"]


@pytest.mark.parametrize("fmt", FORMATS)
@given(frame=s.worker_frames)
def test_worker_frames_round_trip(fmt: Format, frame: Any) -> None:
    codec = facilitator_codec(fmt)
    assert codec.decode(codec.encode(frame)) == frame


@pytest.mark.parametrize("fmt", FORMATS)
@given(frame=s.facilitator_frames)
def test_facilitator_frames_round_trip(fmt: Format, frame: Any) -> None:
    codec = worker_codec(fmt)
    assert codec.decode(codec.encode(frame)) == frame


def _decode_or_protocol_error(codec: Codec[Any], data: bytes | str) -> None:
    try:
        frame = codec.decode(data)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    # Whatever decodes must be a frame this side may receive and must re-encode cleanly.
    assert isinstance(frame, msgspec.Struct)
    assert codec.decode(codec.encode(frame)) == frame


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash(fmt: Format, data: bytes) -> None:
    _decode_or_protocol_error(facilitator_codec(fmt), data)
    _decode_or_protocol_error(worker_codec(fmt), data)


@given(value=s.json_values)
def test_arbitrary_json_never_crashes(value: Any) -> None:
    data = json.dumps(value).encode()
    _decode_or_protocol_error(facilitator_codec(), data)
    _decode_or_protocol_error(worker_codec(), data)


@given(frame=s.worker_frames, key=st.text(max_size=10), value=s.json_values)
def test_mutated_frames_decode_or_raise_typed(frame: Any, key: str, value: Any) -> None:
    """Valid frames with one field replaced by an arbitrary JSON value (wrong types, junk)."""
    doc = json.loads(msgspec.json.encode(frame))
    doc[key if key in doc or not doc else next(iter(doc))] = value
    _decode_or_protocol_error(facilitator_codec(), json.dumps(doc))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", ErrorCode.MALFORMED_FRAME),
        (b"\xff\xfe", ErrorCode.MALFORMED_FRAME),
        (b'{"type": "launch_missiles"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"version": 1}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": "ack", "upto": "7"}', ErrorCode.INVALID_FIELD),
        (b'{"type": "ack"}', ErrorCode.INVALID_FIELD),
        (b'{"type": "ack", "upto": -1}', ErrorCode.INVALID_FIELD),
        (
            b'{"type": "data", "seq": 0, "body": {"type": "worker_event", "event": "x", "at": 1}}',
            ErrorCode.INVALID_FIELD,
        ),
        (
            b'{"type": "data", "seq": 9007199254740992, '
            b'"body": {"type": "worker_event", "event": "x", "at": 1}}',
            ErrorCode.INVALID_FIELD,
        ),
        (
            b'{"type": "data", "seq": 1, "body": {"type": "job_request", "job_id": "j", "kind": "k"}}',
            ErrorCode.UNKNOWN_TYPE,
        ),
        (b'{"type": "challenge", "version": 1, "nonce": "00"}', ErrorCode.UNKNOWN_TYPE),
        (b"[1, 2, 3]", ErrorCode.INVALID_FIELD),
        (
            b'{"type":"data","seq":1,"body":{"type":"machine_specs","at":1,"specs":{"a":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}}",
            ErrorCode.MALFORMED_FRAME,
        ),
    ],
)
def test_bad_frames_get_their_documented_code(data: bytes, code: ErrorCode) -> None:
    """A facilitator decoding worker frames: a job_request body or a challenge is the wrong direction."""
    with pytest.raises(RemoteProtocolError) as info:
        facilitator_codec().decode(data)
    assert info.value.code is code, info.value


def test_oversized_frame_refused_before_parsing() -> None:
    codec = facilitator_codec(max_frame_bytes=1024)
    frame = m.Data(seq=1, body=m.WorkerEvent(event="e", at=0.0, detail="x" * 2000))
    data = codec.encode(frame)
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(data)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(data.decode())  # the same frame as a text message
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    # Multi-byte characters: 300 chars but 1200 bytes.
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode('{"type":"worker_event","detail":"' + "€" * 400 + '"}')
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_text_frame_on_msgpack_session_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        facilitator_codec("msgpack").decode('{"type": "ack", "upto": 1}')
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        Codec(m.WorkerFrame, "xml")  # type: ignore[arg-type]


def test_literal_example_frames_from_protocol_doc() -> None:
    """The examples in docs/PROTOCOL.md decode as documented."""
    codec = facilitator_codec()
    frame = codec.decode(
        b'{"type":"data","seq":42,"body":{"type":"job_status","job_id":"job-7",'
        b'"status":"running","at":1700000000.5,"progress":0.25,"detail":"step 1 of 4"}}'
    )
    assert frame == m.Data(
        seq=42,
        body=m.JobStatusUpdate(
            job_id="job-7", status=m.JobStatus.RUNNING, at=1700000000.5, progress=0.25, detail="step 1 of 4"
        ),
    )
    assert codec.decode(b'{"type":"ack","upto":41}') == m.Ack(upto=41)
    assert m.JobStatus.FAILED.terminal and not m.JobStatus.RUNNING.terminal


def test_check_sendable_refuses_what_a_format_cannot_carry() -> None:
    from jobrelay.protocol.codec import check_sendable
    from jobrelay.protocol.errors import LocalProtocolError

    small = m.MachineSpecs(specs={"n": 1}, at=0.0)
    check_sendable(small, max_frame_bytes=1024, formats=("json", "msgpack"))
    huge_int = m.MachineSpecs(specs={"n": 2**70}, at=0.0)  # JSON text can; msgpack and SQLite cannot
    for formats in (("json",), ("json", "msgpack")):
        with pytest.raises(LocalProtocolError) as info:
            check_sendable(huge_int, max_frame_bytes=1024, formats=formats)
        assert info.value.code is ErrorCode.INVALID_FIELD
    big = m.WorkerEvent(event="e", at=0.0, detail="x" * 2000)
    with pytest.raises(LocalProtocolError) as info:
        check_sendable(big, max_frame_bytes=1024, formats=("json",))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    # The JSON size hint must agree with encoding the frame for real.
    frame_size = len(facilitator_codec().encode(m.Data(seq=m.MAX_SEQ, body=big)))
    body_size = len(msgspec.json.encode(big))
    check_sendable(big, max_frame_bytes=frame_size, formats=("json",), json_body_size=body_size)
    with pytest.raises(LocalProtocolError):
        check_sendable(big, max_frame_bytes=frame_size - 1, formats=("json",), json_body_size=body_size)


def test_encode_failures_are_typed() -> None:
    from jobrelay.protocol.errors import LocalProtocolError

    frame = m.Data(seq=1, body=m.MachineSpecs(specs={"n": 2**70}, at=0.0))
    assert facilitator_codec("json").encode(frame)  # JSON carries big integers
    with pytest.raises(LocalProtocolError) as info:
        facilitator_codec("msgpack").encode(frame)
    assert info.value.code is ErrorCode.INVALID_FIELD


def _verdict(body: Any, limit: int, json_size: int | None) -> ErrorCode | None:
    from jobrelay.protocol.codec import check_sendable

    try:
        check_sendable(body, max_frame_bytes=limit, formats=("json", "msgpack"), json_body_size=json_size)
    except ProtocolError as exc:
        return exc.code
    return None


floats_heavy = st.builds(  # msgpack's worst case: a float is 9 bytes, "0.0," in JSON 4
    m.MachineSpecs, specs=st.fixed_dictionaries({"v": st.lists(st.just(0.0), max_size=300)}), at=s.times
)
big_attempts = st.builds(
    m.JobStatusUpdate,
    job_id=s.ids,
    status=st.sampled_from(m.JobStatus),
    at=s.times,
    attempt=st.integers(min_value=1, max_value=2**70),
)


@given(
    body=st.one_of(s.worker_bodies, floats_heavy, big_attempts),
    limit=st.integers(min_value=64, max_value=8_000),
)
def test_the_msgpack_shortcut_never_changes_check_sendables_verdict(body: Any, limit: int) -> None:
    """With the JSON size given, check_sendable skips the msgpack trial encode when msgpack surely
    fits (at most 3 bytes per JSON byte, ints within 64 bits): its verdict must be the one the
    trial encode gives, for any body and limit."""
    json_size = len(msgspec.json.encode(body))
    assert _verdict(body, limit, json_size) == _verdict(body, limit, None)


def test_a_typed_integer_beyond_64_bits_is_still_refused_for_msgpack() -> None:
    body = m.JobStatusUpdate(job_id="j", status=m.JobStatus.RUNNING, at=0.0, attempt=2**64)
    size = len(msgspec.json.encode(body))
    assert _verdict(body, 1 << 20, size) is ErrorCode.INVALID_FIELD


def test_a_body_larger_as_msgpack_than_as_json_is_measured_not_assumed() -> None:
    body = m.MachineSpecs(specs={"v": [0.0] * 300}, at=0.0)  # 4 JSON bytes a float, 9 msgpack
    json_size = len(msgspec.json.encode(body))
    packed = len(msgspec.msgpack.encode(m.Data(seq=m.MAX_SEQ, body=body)))
    for limit in range(json_size + 64, packed + 64, 97):
        expected = ErrorCode.FRAME_TOO_LARGE if limit < packed else None
        assert _verdict(body, limit, json_size) == _verdict(body, limit, None) == expected


def test_a_typed_container_of_ints_gets_the_trial_encode() -> None:
    """Found in review: only exactly Any / dict[str, Any] fields are walked by check_values; a
    dict[str, int] field must not skip the msgpack trial, which refuses 2**70."""

    class Counts(msgspec.Struct, tag="counts"):
        counts: dict[str, int]

    body = Counts(counts={"a": 2**70})
    size = len(msgspec.json.encode(body))
    assert _verdict(body, 1 << 20, size) is ErrorCode.INVALID_FIELD
