# One future for many publishes (OutboxHandle.publish_many): the Outbox takes the batch as one
# mailbox message and commits it together; each message still gets its own seq and its own
# checks (a refused one fails alone), and the caller's future resolves once every one is settled.
# Also how a publish is stored (encode_body) and why one is refused (unsendable, refusal).
# Invariants: the group future resolves exactly once, after the last part; only the Outbox's
# thread settles parts (no lock needed); a part settled twice is a bug and raises.
from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import msgspec

from jobrelay.actors.actor_messages import Publish
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.latch_future import LatchFuture
from jobrelay.protocol.codec import check_sendable, plain_size_limit
from jobrelay.protocol.errors import JobrelayError, LocalProtocolError
from jobrelay.protocol.messages import WorkerBody
from jobrelay.storage import Database, StatusResult, StatusUpdate, TerminalStatusError, UnknownJobError

__all__ = [
    "PublishBatch",
    "PublishGroup",
    "PublishManyError",
    "decode_body",
    "encode_body",
    "refusal",
    "unsendable",
]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(WorkerBody)


class PublishManyError(JobrelayError):
    """Some messages of a ``publish_many`` batch were not stored; the others were.

    Attributes:
        errors: index in the batch → why that message was refused (OutboxFull, StorageError...).
        seqs: index in the batch → seq of each message that was stored.
    """

    def __init__(self, errors: dict[int, BaseException], seqs: dict[int, int]) -> None:
        first = min(errors)
        super().__init__(
            f"{len(errors)} of {len(errors) + len(seqs)} messages not published "
            f"(first: #{first}: {errors[first]})"
        )
        self.errors = errors
        self.seqs = seqs


class PublishGroup:
    """The futures of one batch: ``parts[i]`` stands for message ``i``'s own future."""

    def __init__(self, size: int) -> None:
        self.future: LatchFuture[list[int]] = LatchFuture()
        # Per message: a slot and a countdown (this runs once per message on the Outbox thread).
        self._seqs: list[int | None] = [None] * size
        self._errors: dict[int, BaseException] = {}
        self._left = size
        self.parts = [_Part(self, i) for i in range(size)]
        if size == 0:
            self.future.set([])

    def settled(self, index: int, seq: int | None, error: BaseException | None) -> None:
        if self._seqs[index] is not None or index in self._errors:
            raise RuntimeError(f"message #{index} of a publish_many batch settled twice")
        if error is not None:
            self._errors[index] = error
        else:
            assert seq is not None
            self._seqs[index] = seq
        self._left -= 1
        if self._left:
            return
        if self._errors:
            seqs = {i: seq for i, seq in enumerate(self._seqs) if seq is not None}
            exc = PublishManyError(self._errors, seqs)
            self.future.set_exception(exc_info=(PublishManyError, exc, None))
        else:
            self.future.set(self._seqs)


class _Part:
    """Quacks like the pykka future a single Publish carries (set / set_exception)."""

    __slots__ = ("_group", "_index")

    def __init__(self, group: PublishGroup, index: int) -> None:
        self._group = group
        self._index = index

    def set(self, value: Any = None) -> None:
        self._group.settled(self._index, int(value), None)

    def set_exception(
        self,
        exc_info: tuple[type[BaseException], BaseException, types.TracebackType | None] | None = None,
    ) -> None:
        error = exc_info[1] if exc_info is not None else RuntimeError("publish failed")
        self._group.settled(self._index, None, error)


class PublishBatch(msgspec.Struct, frozen=True):
    """Outbox mailbox message: the Publish items of one ``publish_many`` call, in order."""

    items: Sequence[Any]  # Publish, each with a _Part as its future
    backlog: Any = None  # the handle's PublishBacklog, told when the Outbox takes the message


def unsendable(
    publishes: Sequence[Publish], encoded: Sequence[tuple[str, bytes]], config: WorkerConfig
) -> dict[int, Exception]:
    """index → why that publish can never be sent (a body too large for a frame, or one a
    negotiable format cannot carry); checked before it is stored."""
    refused: dict[int, Exception] = {}
    limits: dict[type, int | None] = {}  # per body type: the size below which it surely fits
    for i, (publish, (_, payload)) in enumerate(zip(publishes, encoded, strict=True)):
        kind = type(publish.body)
        if kind not in limits:
            limits[kind] = plain_size_limit(
                kind, max_frame_bytes=config.max_frame_bytes, formats=config.formats
            )
        limit = limits[kind]
        if limit is not None and len(payload) <= limit:
            continue
        try:
            check_sendable(
                publish.body,
                max_frame_bytes=config.max_frame_bytes,
                formats=config.formats,
                json_body_size=len(payload),
            )
        except LocalProtocolError as exc:
            refused[i] = exc
    return refused


def encode_body(body: WorkerBody) -> tuple[str, bytes]:
    """``(kind, payload)`` as stored: the body's tag and its JSON encoding."""
    return type(body).__struct_config__.tag, _ENCODER.encode(body)  # type: ignore[return-value]


def decode_body(payload: bytes) -> WorkerBody:
    body: WorkerBody = _DECODER.decode(payload)
    return body


def refusal(update: StatusUpdate, result: StatusResult, db: Database) -> Exception:
    """Why the ledger refused a job status update, as the error its publish fails with."""
    if result is StatusResult.UNKNOWN_JOB:
        return UnknownJobError(update.job_id, path=db.path)
    if result is StatusResult.ALREADY_TERMINAL:
        return TerminalStatusError(update.job_id, "terminal", update.status, path=db.path)
    return ValueError(f"invalid status update {update!r}")
