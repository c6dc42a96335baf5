"""Frame generators for the fuzzers: seeded, built from the real msgspec Structs of
jobrelay.protocol.messages, encoded as the peer expects (JSON text, JSON in binary, msgpack binary).

Two kinds of frames (the split lets a fuzz connection carry many frames before it is closed):
- *soft*: frames an OPEN session must take without closing: valid shapes with mutated fields
  (unknown fields, reordered keys, ints for floats, odd Unicode, edge values), heartbeats, acks
  that rewind, duplicate data (seq rewinds), requests, responses to nothing, non-fatal errors,
  moderately nested values, a rare frame padded to just under the frame limit, a little new data;
- *hard*: frames the session must refuse (and then close, with one log line at most): random
  bytes, wrong shapes, unknown or wrong-direction types, seq jumps, acks for unsent seqs, frames
  just over the limit, nesting past MAX_DEPTH (1,000-10,000 deep), non-UTF-8 text, handshake
  frames again, fatal errors.
Invariant: everything random comes from the one ``random.Random`` given (a seed replays a run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from jobrelay.protocol.messages import (
    MAX_SEQ,
    Ack,
    Auth,
    Challenge,
    Data,
    DataBatch,
    Error,
    Heartbeat,
    Hello,
    JobCancel,
    JobRequest,
    JobStatus,
    JobStatusUpdate,
    MachineSpecs,
    Request,
    Response,
    Welcome,
    WorkerEvent,
)
from jobrelay.protocol.values import MAX_DEPTH

__all__ = ["HARD", "SOFT", "Frame", "FrameGen", "Side", "Stream"]

Side = Literal["worker", "facilitator"]  # who the fuzzer pretends to be
Frame = tuple[bytes, bool]  # (payload, text opcode)

SOFT = (
    "heartbeat",
    "ack_rewind",
    "dup_data",
    "new_data",
    "request",
    "response",
    "warning",
    "nested",
    "padded",
)
HARD = (
    "random_bytes", "random_text", "non_utf8_text", "wrong_shape", "unknown_type", "wrong_direction",
    "seq_jump", "ack_unsent", "oversized", "nested_deep", "handshake_again", "fatal_error",
)  # fmt: skip
_SOFT_WEIGHTS = (30, 15, 15, 3, 10, 10, 2, 3, 0.05)
_POOL = 256  # encoded variants per stateless soft class and format
_ODD_TEXT = ("", "é", "日本語", "🦀" * 3, "\u0000", '\\n"', "\u202e", "x" * 200, "\ud7ff", "\ufeff")


@dataclass
class Stream:
    """What the fuzzer knows of its own stream in this connection.

    ``hwm``: what the peer has accepted (seqs ≤ hwm are duplicates); ``next_seq``: the next new
    seq; ``new_left``: new data allowed (stays inside the peer's window); ``acked_ok``: the highest
    ack the peer takes without closing (what it has sent in this session)."""

    hwm: int = 0
    next_seq: int = 1
    new_left: int = 0
    acked_ok: int = 0


class FrameGen:
    """Frames a fuzzer playing ``side`` sends, in one codec (``json`` or ``msgpack``)."""

    def __init__(self, rng: random.Random, side: Side, fmt: str, max_frame_bytes: int) -> None:
        self.rng = rng
        self.side = side
        self.fmt = fmt
        self.max_frame_bytes = max_frame_bytes
        self._pools: dict[str, list[Frame]] = {
            name: [self._encode(getattr(self, f"_{name}")()) for _ in range(_POOL)]
            for name in ("heartbeat", "request", "response", "warning")
        }
        self._pools["nested"] = [self._nested() for _ in range(_POOL)]
        self._bodies = [self._body() for _ in range(_POOL)]

    # ------------------------------------------------------------ public

    def soft(self, stream: Stream) -> tuple[str, Frame]:
        """One frame the open session must accept without closing, and its class."""
        rng = self.rng
        name = rng.choices(SOFT, _SOFT_WEIGHTS)[0]
        pool = self._pools.get(name)
        if pool is not None:
            return name, rng.choice(pool)
        if name == "ack_rewind":
            return name, self._encode(self._mutate(Ack(upto=rng.randint(0, stream.acked_ok))))
        if name == "dup_data" and stream.hwm >= 1:
            last = rng.randint(1, stream.hwm)
            first = max(1, last - rng.choice((0, 0, 0, 3, 50)))
            return name, self._encode(self._data(first, last - first + 1))
        if name == "new_data" and stream.new_left > 0:
            count = min(stream.new_left, rng.choice((1, 1, 2, 10)))
            frame = self._data(stream.next_seq, count)
            stream.next_seq += count
            stream.new_left -= count
            return name, self._encode(frame)
        if name == "padded":
            return name, self._padded(self.max_frame_bytes - rng.randint(200, 400))
        return "heartbeat", rng.choice(self._pools["heartbeat"])

    def quiet(self, stream: Stream) -> tuple[str, Frame]:
        """A soft frame that gets no reply (for floods that never read): a heartbeat, an ack that
        rewinds or a duplicate."""
        name = self.rng.choice(("heartbeat", "heartbeat", "ack_rewind", "dup_data"))
        if name == "heartbeat" or (name == "dup_data" and stream.hwm < 1):
            return "heartbeat", self.rng.choice(self._pools["heartbeat"])
        if name == "ack_rewind":
            return name, self._encode(Ack(upto=self.rng.randint(0, stream.acked_ok)))
        seq = self.rng.randint(1, stream.hwm)
        return name, self._encode(Data(seq=seq, body=self.rng.choice(self._bodies)))

    def hard(self, stream: Stream, name: str | None = None) -> tuple[str, Frame]:
        """One frame the session must refuse (it then closes), and its class."""
        rng = self.rng
        name = name or rng.choice(HARD)
        match name:
            case "random_bytes":
                return name, (rng.randbytes(rng.choice((1, 7, 100, 4000))), False)
            case "random_text":
                text = "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(rng.randint(1, 300)))
                return name, (text.encode(), True)
            case "non_utf8_text":
                # In a field the decoder reads: msgspec skips an unknown field's bytes unchecked.
                bad = rng.randbytes(4) + b"\xff\xfe"
                return name, (b'{"type":"request","id":"' + bad + b'","method":"m"}', True)
            case "wrong_shape":
                return name, self._encode(self._break(self._valid_any(stream)))
            case "unknown_type":
                doc = msgspec.to_builtins(self._plain_heartbeat())
                doc["type"] = rng.choice(("", "hearbeat", "HELLO", "data ", "x" * 300, 7, None))
                return name, self._encode(doc)
            case "wrong_direction":
                return name, self._encode(Data(seq=stream.hwm + 1, body=self._body(wrong=True)))
            case "seq_jump":
                seq = stream.hwm + rng.choice((2, 3, 1000, MAX_SEQ - stream.hwm))
                return name, self._encode(Data(seq=seq, body=self._body()))
            case "ack_unsent":
                return name, self._encode(
                    Ack(upto=stream.acked_ok + rng.choice((1, 2, 10**6, MAX_SEQ - stream.acked_ok)))
                )
            case "oversized":
                return name, self._padded(self.max_frame_bytes + rng.randint(1, 300))
            case "nested_deep":
                return name, self._encode_raw(self._nested_doc(rng.randint(1_000, 10_000)))
            case "handshake_again":
                return name, self._encode(self._handshake_frame())
            case "fatal_error":
                return name, self._encode(
                    Error(code=rng.choice(("internal", "seq_gap", "nonsense")), detail="fuzz")
                )
        raise ValueError(f"unknown hard frame class {name!r}")

    # ------------------------------------------------------------ encoding

    def _encode(self, frame: msgspec.Struct | dict[str, Any]) -> Frame:
        if self.fmt == "msgpack":
            return msgspec.msgpack.encode(frame), False
        data = msgspec.json.encode(frame)
        return data, self.rng.random() >= 0.05  # JSON in a binary message now and then

    def _encode_raw(self, json_text: bytes) -> Frame:
        return json_text, self.fmt == "json"

    # ------------------------------------------------------------ valid frames, mutated

    def _mutate(self, frame: msgspec.Struct) -> dict[str, Any]:
        """A valid variant: unknown fields, the type key moved, optional fields omitted."""
        rng = self.rng
        doc: dict[str, Any] = msgspec.to_builtins(frame)
        if rng.random() < 0.3:
            doc[rng.choice(("zz", "_x", "type2", "ext", "😀"))] = self._any_value(rng.randint(0, 3))
        if rng.random() < 0.3:
            doc["type"] = doc.pop("type")  # "the type key may appear anywhere"
        return doc

    def _any_value(self, depth: int) -> Any:
        rng = self.rng
        kind = rng.randint(0, 6 if depth > 0 else 4)
        values: list[Any] = [
            None,
            rng.random() * 1e300,
            rng.randint(-(2**63), 2**63 - 1),
            rng.choice(_ODD_TEXT),
            True,
        ]
        if kind <= 4:
            return values[kind]
        if kind == 5:
            return [self._any_value(depth - 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(_ODD_TEXT) or "k": self._any_value(depth - 1) for _ in range(rng.randint(0, 4))}

    def _text(self, low: int = 1) -> str:
        text = self.rng.choice(_ODD_TEXT)
        return text if len(text) >= low else "id-" + str(self.rng.randint(0, 10**9))

    def _heartbeat(self) -> dict[str, Any]:
        return self._mutate(self._plain_heartbeat())

    def _plain_heartbeat(self) -> Heartbeat:
        rng = self.rng
        # Draining now and then: each flip changes where jobs may go (and once was a line each).
        return Heartbeat(
            at=rng.choice((0.0, rng.random() * 2e9, 9_007_199_254_740_991.0, 5.0)),
            draining=rng.random() < 0.1,
        )

    def _request(self) -> dict[str, Any]:
        rng = self.rng
        return self._mutate(
            Request(
                id=self._text(),
                method=self._text(),
                params=self._any_value(3),
                timeout_ms=rng.randint(0, 10**7),
            )
        )

    def _response(self) -> dict[str, Any]:
        return self._mutate(Response(id=self._text(), ok=self.rng.random() < 0.5, result=self._any_value(2)))

    def _warning(self) -> dict[str, Any]:
        return self._mutate(
            Error(
                code=self.rng.choice(("job_not_yours", "internal", "zzz")), detail=self._text(0), fatal=False
            )
        )

    def _nested(self) -> Frame:
        doc = self._nested_doc(self.rng.randint(10, MAX_DEPTH - 1))  # params sit one level down
        if self.fmt == "msgpack":
            return msgspec.msgpack.encode(msgspec.json.decode(doc)), False
        return self._encode_raw(doc)

    def _nested_doc(self, depth: int) -> bytes:
        inner = (
            b"[" * depth + b"1" + b"]" * depth
            if self.rng.random() < 0.5
            else b'{"a":' * depth + b"1" + b"}" * depth
        )
        return b'{"type":"request","id":"n","method":"nest","params":' + inner + b"}"

    def _padded(self, size: int) -> Frame:
        """A valid heartbeat with an unknown field that brings it to ``size`` bytes exactly."""
        pad = size - len(self._encode({"type": "heartbeat", "at": 1.0, "pad": ""})[0])
        for _ in range(2):  # a longer string may take a longer length prefix (msgpack): adjust once
            data, text = self._encode({"type": "heartbeat", "at": 1.0, "pad": "p" * max(0, pad)})
            pad -= len(data) - size
        return data, text

    def _body(self, wrong: bool = False) -> Any:  # either direction's body, on purpose
        rng = self.rng
        mine = (self.side == "worker") != wrong
        if mine:
            return rng.choice(
                (
                    JobStatusUpdate(
                        job_id=self._text(),
                        status=rng.choice((JobStatus.ACCEPTED, JobStatus.FAILED)),
                        at=1.0,
                        progress=None,
                    ),
                    MachineSpecs(
                        specs={"cpus": rng.randint(1, 64), "fuzz": self._any_value(2)}, at=rng.random()
                    ),
                    WorkerEvent(event="fuzz", at=0, detail=self._text(0)),
                )
            )
        job_id = f"fuzz-{rng.getrandbits(64):x}"
        return rng.choice(
            (
                JobRequest(
                    job_id=job_id, kind=rng.choice(("echo", "no-such-kind")), payload=self._any_value(2)
                ),
                JobCancel(job_id=job_id, reason=self._text(0)),
            )
        )

    def _data(self, first: int, count: int) -> msgspec.Struct:
        pick = self.rng.choice
        if count == 1:
            return Data(seq=first, body=pick(self._bodies))
        return DataBatch(items=[Data(seq=first + i, body=pick(self._bodies)) for i in range(count)])

    def _valid_any(self, stream: Stream) -> dict[str, Any]:
        frame = self.rng.choice(
            (self._plain_heartbeat(), Ack(upto=0), Data(seq=max(1, stream.hwm), body=self._body()))
        )
        return self._mutate(frame)

    def _break(self, doc: dict[str, Any]) -> Any:
        """An invalid variant of a valid frame: a required field missing or of a wrong type or
        out of range, or not an object at all."""
        rng = self.rng
        fields = [k for k in doc if k in ("at", "upto", "seq", "body")]
        how = rng.randint(0, 3)
        if how == 0 and fields:
            del doc[rng.choice(fields)]
        elif how == 1 and fields:
            doc[rng.choice(fields)] = rng.choice((-1, "1", 1.5, [], {}, None, MAX_SEQ + 1, True))
        elif how == 2:
            return rng.choice(([doc], "heartbeat", 42, None, [], {}))
        else:
            # Another type's name on this shape: its required fields are missing.
            doc["type"] = rng.choice([t for t in ("data", "batch", "ack") if t != doc.get("type")])
        return doc

    def _handshake_frame(self) -> msgspec.Struct:
        rng = self.rng
        if self.side == "worker":
            return rng.choice(
                (
                    Hello(version=1, worker_id="again"),
                    Auth(
                        worker_id="a",
                        public_key="00",
                        nonce="00",
                        timestamp_ms=0,
                        signature="00",
                        out_epoch="e",
                    ),
                )
            )
        return rng.choice(
            (Challenge(version=1, nonce="00"), Welcome(session_id="again", ack=0, out_epoch="e"))
        )
