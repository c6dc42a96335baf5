# Bytes ⇄ typed frames. The only place that touches msgspec's decode errors.
# Invariants: the size limit is checked before any parsing; decode() returns a frame of the
# direction's union or raises RemoteProtocolError — never another exception, never a hang.
# Encoders/decoders are built once per (format, direction) and reused.
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Generic, Literal, TypeVar, cast

import msgspec

from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.messages import MAX_SEQ, Data, DataBatch, FacilitatorFrame, WorkerFrame
from jobrelay.protocol.values import MAX_INT, MIN_INT, free_form_fields, int_fields, value_problem

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FORMATS",
    "Codec",
    "Format",
    "check_sendable",
    "check_values",
    "facilitator_codec",
    "plain_size_limit",
    "worker_codec",
]

Format = Literal["json", "msgpack"]
FORMATS: tuple[Format, ...] = ("json", "msgpack")
DEFAULT_MAX_FRAME_BYTES = 1_048_576

F = TypeVar("F", WorkerFrame, FacilitatorFrame)

_JSON_ENCODER = msgspec.json.Encoder()
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()
# Keyed by the union's id: hashing a typing Union walks its members, and a facilitator builds
# two codecs per connection.
_DECODERS: dict[tuple[Format, int], msgspec.json.Decoder[object] | msgspec.msgpack.Decoder[object]] = {
    ("json", id(WorkerFrame)): msgspec.json.Decoder(WorkerFrame),
    ("json", id(FacilitatorFrame)): msgspec.json.Decoder(FacilitatorFrame),
    ("msgpack", id(WorkerFrame)): msgspec.msgpack.Decoder(WorkerFrame),
    ("msgpack", id(FacilitatorFrame)): msgspec.msgpack.Decoder(FacilitatorFrame),
}


# Bytes a Data envelope adds around its JSON-encoded body, at the largest seq.
_DATA_ENVELOPE = len(_JSON_ENCODER.encode(Data(seq=MAX_SEQ, body=None))) - len(b"null")


# Message type → its free-form fields, filled on first sight of each type (a dict lookup on the
# hot path: most frames, status updates included, have none).
_FREE_FORM: dict[type, tuple[str, ...]] = {}


def values_problem(frame: msgspec.Struct) -> str | None:
    """Why a decoded frame or body holds a free-form value the other end could not store or read
    back (see values.py), or None."""
    kind = type(frame)
    if kind is Data:
        return _fields_problem(frame.body, "$.body")  # type: ignore[attr-defined]
    if kind is DataBatch:
        for index, item in enumerate(frame.items):  # type: ignore[attr-defined]
            if _free_form(type(item.body)):
                problem = _fields_problem(item.body, f"$.items[{index}].body")
                if problem is not None:
                    return problem
        return None
    return _fields_problem(frame, "$")


def _free_form(kind: type) -> tuple[str, ...]:
    names = _FREE_FORM.get(kind)
    if names is None:
        names = _FREE_FORM[kind] = free_form_fields(kind) if issubclass(kind, msgspec.Struct) else ()
    return names


def _fields_problem(struct: object, root: str) -> str | None:
    for name in _free_form(type(struct)):
        problem = value_problem(getattr(struct, name), f"{root}.{name}")
        if problem is not None:
            return problem
    return None


def check_values(frame: msgspec.Struct) -> None:
    """Refuse, before it is stored or sent, a frame or body whose free-form values the peer would
    refuse (NaN, bytes, msgpack extension types, non-string keys, too deep, integers beyond 64 bits).

    Raises:
        LocalProtocolError: INVALID_FIELD, naming the path of the first bad value.
    """
    problem = values_problem(frame)
    if problem is not None:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"the message cannot be sent: {problem}")


def check_sendable(
    body: msgspec.Struct,
    *,
    max_frame_bytes: int,
    formats: Sequence[str],
    json_body_size: int | None = None,
) -> None:
    """Refuse a data body that could not be sent in one frame in every offered format.

    Senders check this before storing a message: stored, a message that can never be sent
    blocks its stream forever (every session fails on it). JSON is the larger encoding; msgpack
    is checked because it cannot encode some values JSON can (integers beyond 64 bits).

    Args:
        json_body_size: the body's JSON size when the caller already encoded it (saves a pass).

    Raises:
        LocalProtocolError: FRAME_TOO_LARGE, or INVALID_FIELD when a format cannot encode it or
            the peer would refuse one of its values (``check_values``).
    """
    check_values(body)
    for fmt in formats:
        try:
            if fmt == "json" and json_body_size is not None:
                size = json_body_size + _DATA_ENVELOPE
            elif (
                fmt == "msgpack"
                and json_body_size is not None
                and _msgpack_vouched(body, json_body_size, max_frame_bytes)
            ):
                continue
            else:
                encode = _MSGPACK_ENCODER.encode if fmt == "msgpack" else _JSON_ENCODER.encode
                size = len(encode(Data(seq=MAX_SEQ, body=body)))
        except (OverflowError, TypeError, ValueError, msgspec.EncodeError) as exc:
            raise LocalProtocolError(
                ErrorCode.INVALID_FIELD, f"the message cannot be sent as {fmt}: {exc}"
            ) from None
        if size > max_frame_bytes:
            raise LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"the message encodes to {size} bytes as {fmt}, "
                f"more than max_frame_bytes ({max_frame_bytes})",
            )


# A message type → its typed int fields, or None when only a trial encode vouches for msgpack.
_INT_FIELDS: dict[type, tuple[str, ...] | None] = {}


def plain_size_limit(kind: type, *, max_frame_bytes: int, formats: Sequence[str]) -> int | None:
    """The largest JSON body size at which ``check_sendable`` passes every body of type ``kind``
    without looking at its values, or None when its values decide (free-form fields, typed
    ints, nested containers). A publish burst checks each message against it: one comparison
    instead of a walk over the fields."""
    if _free_form(kind) or _int_fields(kind) != ():
        return None
    limit = max_frame_bytes - _DATA_ENVELOPE  # JSON: the body and its envelope in one frame
    if "msgpack" in formats:  # _msgpack_vouched's bound
        limit = min(limit, max_frame_bytes // 3 - _DATA_ENVELOPE)
    return limit


def _int_fields(kind: type) -> tuple[str, ...] | None:
    if kind not in _INT_FIELDS:
        _INT_FIELDS[kind] = int_fields(kind)
    return _INT_FIELDS[kind]


def _msgpack_vouched(body: msgspec.Struct, json_body_size: int, max_frame_bytes: int) -> bool:
    """True when ``body`` surely encodes as msgpack within the frame limit, without encoding it:
    msgpack takes at most 3 bytes per JSON byte (its worst case, a float: 9 bytes for JSON's
    "0.0,"), and refuses only integers beyond 64 bits (free-form ones are check_values')."""
    names = _int_fields(type(body))
    if names is None:
        return False
    for name in names:
        value = getattr(body, name)
        if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            return False
    return 3 * (json_body_size + _DATA_ENVELOPE) <= max_frame_bytes


def _classify(exc: msgspec.ValidationError) -> ErrorCode:
    text = str(exc)
    # msgspec reports an unknown tag value as "Invalid value 'x' - at `$.type`" (or `$.body.type`).
    if text.startswith("Invalid value") and text.endswith(".type`"):
        return ErrorCode.UNKNOWN_TYPE
    if "missing required field `type`" in text:
        return ErrorCode.UNKNOWN_TYPE
    return ErrorCode.INVALID_FIELD


class Codec(Generic[F]):
    """Encodes outgoing frames and decodes incoming ones for one direction and format.

    Args:
        incoming: the union of frames this side receives (``WorkerFrame`` on a facilitator,
            ``FacilitatorFrame`` on a worker).
        fmt: ``"json"`` (text frames) or ``"msgpack"`` (binary frames).
        max_frame_bytes: frames larger than this are refused before parsing.
    """

    __slots__ = ("_decoder", "_encode", "binary", "fmt", "max_frame_bytes")

    def __init__(
        self, incoming: object, fmt: Format = "json", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.fmt: Format = fmt
        self.binary = fmt == "msgpack"
        self.max_frame_bytes = max_frame_bytes
        self._decoder = _DECODERS[(fmt, id(incoming))]
        self._encode = _MSGPACK_ENCODER.encode if self.binary else _JSON_ENCODER.encode

    def encode(self, frame: msgspec.Struct) -> bytes:
        """Serialise one frame (any direction: the encoder is not restricted).

        Raises:
            LocalProtocolError: INVALID_FIELD when this format cannot encode a value (for
                example msgpack and an integer beyond 64 bits).
        """
        try:
            return self._encode(frame)
        except (OverflowError, TypeError, ValueError, msgspec.EncodeError) as exc:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"cannot encode as {self.fmt}: {exc}") from None

    def decode(self, data: bytes | str, binary: bool | None = None) -> F:
        """Parse one received frame.

        Args:
            data: the WebSocket message: a text message as ``str`` (decoded with
                ``surrogateescape`` by the transport, so invalid UTF-8 reaches this check), a
                binary one as ``bytes``.
            binary: whether the message was binary; None when the caller cannot tell (a
                sans-I/O harness handing over bytes): then only a ``str`` counts as text.

        Raises:
            RemoteProtocolError: FRAME_TOO_LARGE, MALFORMED_FRAME (not this session's message
                type, invalid UTF-8, not JSON/msgpack, trailing bytes), UNKNOWN_TYPE or
                INVALID_FIELD (schema, or a free-form value values.py refuses).
        """
        size = len(data)
        if isinstance(data, str) and size * 4 > self.max_frame_bytes:
            # A str of n characters is n..4n UTF-8 bytes: encode only when it matters.
            size = len(data.encode("utf-8", "surrogateescape"))
        if size > self.max_frame_bytes:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"{size} bytes > limit {self.max_frame_bytes}"
            )
        if binary is None:  # bytes of an unknown message type count as the session's own
            binary = self.binary and not isinstance(data, str)
        if binary != self.binary:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, f"{'binary' if binary else 'text'} frame on a {self.fmt} session"
            )
        try:
            frame = self._decoder.decode(data)  # type: ignore[arg-type]  # str is fine for json
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(_classify(exc), str(exc)) from None
        except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, str(exc)[:200]) from None
        problem = values_problem(frame)  # type: ignore[arg-type]
        if problem is not None:
            raise RemoteProtocolError(ErrorCode.INVALID_FIELD, problem)
        return cast(F, frame)


@functools.lru_cache(maxsize=64)
def worker_codec(
    fmt: Format = "json", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Codec[FacilitatorFrame]:
    """The codec a worker uses: decodes frames sent by a facilitator (codecs hold no state: one
    per format and limit is shared)."""
    return Codec(FacilitatorFrame, fmt, max_frame_bytes)


@functools.lru_cache(maxsize=64)
def facilitator_codec(
    fmt: Format = "json", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Codec[WorkerFrame]:
    """The codec a facilitator uses: decodes frames sent by a worker (shared, like worker_codec)."""
    return Codec(WorkerFrame, fmt, max_frame_bytes)
