"""protocol/values.py through the codec: a free-form value is accepted exactly when it survives
both codecs, SQLite's JSON and standard ``json.loads`` unchanged; everything else is refused
with ``invalid_field`` at decode time (before the receiver stores or acknowledges it), and by
``check_sendable`` on the sending side."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol import messages as m
from jobrelay.protocol.codec import check_sendable, facilitator_codec, worker_codec
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.values import MAX_DEPTH, value_problem

# Hostile leaves: everything a msgpack or JSON peer can put in a free-form field.
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=4)
    | st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.binary(max_size=4))
)
_hostile: st.SearchStrategy[Any] = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), children, max_size=3)
    ),
    max_leaves=10,
)


def _sqlite_json(text: str) -> Any:
    with sqlite3.connect(":memory:") as db:
        (stored,) = db.execute("select json(?)", (text,)).fetchone()
    return json.loads(stored)


def _survives(value: Any) -> bool:
    """The value comes back equal (same types too) from every path a stored value takes."""
    try:
        text = msgspec.json.encode(value).decode()
        paths = [
            msgspec.msgpack.decode(msgspec.msgpack.encode(value)),
            msgspec.json.decode(text),
            json.loads(text),
            _sqlite_json(text),
        ]
    except (msgspec.EncodeError, msgspec.DecodeError, TypeError, ValueError, OverflowError, sqlite3.Error):
        return False
    return all(_same(value, back) for back in paths)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return False
    return bool(a == b)


@given(_hostile)
def test_accepted_exactly_when_the_value_survives_every_path(value: Any) -> None:
    # Within the depth limit, accepted ⇔ round-trips. (Integers in 2^63..2^64 round-trip here but
    # are refused: SQLite's JSON functions turn them into floats.)
    accepted = value_problem(value) is None
    assert accepted == _survives(value) or (not accepted and "64-bit" in str(value_problem(value)))


@given(_hostile)
def test_both_codecs_refuse_what_values_refuses_and_the_sender_refuses_it_first(value: Any) -> None:
    body = m.JobRequest(job_id="j", kind="k", payload=value)
    problem = value_problem(value, "$.body.payload")
    for fmt in ("json", "msgpack"):
        try:
            raw = msgspec.msgpack.encode(m.Data(seq=1, body=body)) if fmt == "msgpack" else None
            if fmt == "json":
                raw = msgspec.json.encode(m.Data(seq=1, body=body))
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            continue  # this codec cannot even carry it
        assert raw is not None
        if problem is None or fmt == "json":
            # JSON text turns some refused values into others (bytes → base64): decode decides.
            try:
                worker_codec(fmt).decode(raw)  # type: ignore[arg-type]
            except RemoteProtocolError as exc:
                assert problem is not None and exc.code is ErrorCode.INVALID_FIELD
            continue
        with pytest.raises(RemoteProtocolError) as info:
            worker_codec(fmt).decode(raw)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_FIELD
        assert info.value.detail == problem
    if problem is not None:
        with pytest.raises(LocalProtocolError) as sent:
            check_sendable(body, max_frame_bytes=1 << 20, formats=("json", "msgpack"))
        assert sent.value.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "nan is not a JSON number"),
        (float("inf"), "inf is not a JSON number"),
        (b"\x00", "binary data"),
        (msgspec.msgpack.Ext(5, b"x"), "msgpack extension type 5"),
        ({1: "a"}, "object key 1 is not a string"),
        (2**64 - 1, "outside the 64-bit signed range"),
    ],
)
def test_msgpack_specs_with_a_hostile_value_are_invalid_field_naming_the_path(value: Any, words: str) -> None:
    raw = msgspec.msgpack.encode(
        {"type": "data", "seq": 1, "body": {"type": "machine_specs", "at": 1.0, "specs": {"gpu": [value]}}}
    )
    with pytest.raises(RemoteProtocolError) as info:
        facilitator_codec("msgpack").decode(raw, binary=True)
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.detail.startswith("$.body.specs.gpu[0]: ") and words in info.value.detail


def test_depth_is_limited_the_same_in_both_codecs_and_in_a_batch() -> None:
    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    for fmt, encode in (("json", msgspec.json.encode), ("msgpack", msgspec.msgpack.encode)):
        ok = m.DataBatch(
            items=[m.Data(seq=1, body=m.JobRequest(job_id="j", kind="k", payload=nested(MAX_DEPTH)))]
        )
        assert worker_codec(fmt).decode(encode(ok)) == ok  # type: ignore[arg-type]
        deep = m.DataBatch(
            items=[
                m.Data(seq=1, body=m.JobCancel(job_id="j")),
                m.Data(seq=2, body=m.JobRequest(job_id="j", kind="k", payload=nested(MAX_DEPTH + 1))),
            ]
        )
        with pytest.raises(RemoteProtocolError) as info:
            worker_codec(fmt).decode(encode(deep))  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_FIELD
        assert info.value.detail.startswith("$.items[1].body.payload")


def test_request_params_response_result_and_timestamps_are_checked_too() -> None:
    codec = facilitator_codec("msgpack")
    for frame in (
        {"type": "request", "id": "r", "method": "x", "params": {"a": float("nan")}},
        {"type": "response", "id": "r", "result": [b"raw"]},
        {"type": "heartbeat", "at": float("inf")},
    ):
        with pytest.raises(RemoteProtocolError) as info:
            codec.decode(msgspec.msgpack.encode(frame), binary=True)
        assert info.value.code is ErrorCode.INVALID_FIELD


def test_a_frame_of_the_wrong_websocket_message_type_is_malformed() -> None:
    status = msgspec.json.encode(m.Ack(upto=1))
    with pytest.raises(RemoteProtocolError) as info:
        facilitator_codec("msgpack").decode(status.decode())  # text on a msgpack session
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    with pytest.raises(RemoteProtocolError) as info:
        facilitator_codec("json").decode(status, binary=True)  # binary JSON on a JSON session
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    with pytest.raises(RemoteProtocolError) as info:  # invalid UTF-8, as the transports hand it over
        facilitator_codec("json").decode(
            b'{"type":"ack","upto":1,"x":"\xff"}'.decode("utf-8", "surrogateescape")
        )
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    with pytest.raises(RemoteProtocolError) as info:  # trailing bytes after the msgpack map
        facilitator_codec("msgpack").decode(msgspec.msgpack.encode(m.Ack(upto=1)) + b"\x00", binary=True)
    assert info.value.code is ErrorCode.MALFORMED_FRAME
