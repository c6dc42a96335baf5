# What a session tells its owner. Events are plain immutable values; the owner (an actor or a
# test) acts on them: persist, apply acks to storage, hand data to the application, close sockets.
from __future__ import annotations

from typing import Any

import msgspec

from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.messages import Request, Response

__all__ = [
    "Acked",
    "AuthVerified",
    "Closed",
    "DataReceived",
    "DuplicateDropped",
    "Event",
    "HeartbeatReceived",
    "Opened",
    "PeerStreamAdvanced",
    "PeerStreamStarted",
    "PeerWarning",
    "RequestReceived",
    "RequestTimedOut",
    "ResponseReceived",
    "RestartOwnStream",
]


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    pass


class AuthVerified(_Event, frozen=True):
    """Facilitator only: the worker proved its identity; call ``accept(marks)`` to open the session."""

    worker_id: str
    out_epoch: str
    out_acked: int
    in_epoch: str
    in_hwm: int


class Opened(_Event, frozen=True):
    """The handshake completed; data may flow.

    Attributes:
        resume_after: our stream resumes after this seq (send ``pending(after=resume_after)``).
        in_epoch / in_hwm: where the peer's stream resumes; persist them when ``new_in_stream``.
        new_in_stream: the peer presented an epoch we did not know (its store is new).
        new_out_stream: the peer did not know our epoch (its store is new).
        takes_releases: (worker side) the facilitator takes back jobs we release when draining.
    """

    session_id: str
    peer_id: str
    resume_after: int
    in_epoch: str
    in_hwm: int
    new_in_stream: bool
    new_out_stream: bool
    takes_releases: bool = False


class PeerStreamStarted(_Event, frozen=True):
    """The peer's stream has an epoch our store did not hold: record it (``Inbox.start_epoch``)
    before anything of it is accepted; it resumes after ``after``.

    Attributes:
        previous_epoch: the epoch we held before ("" on a first connection, which is routine;
            otherwise the peer's store was deleted or replaced).
    """

    epoch: str
    after: int
    previous_epoch: str


class PeerStreamAdvanced(_Event, frozen=True):
    """Same epoch, but the peer knows we acknowledged up to ``hwm``, beyond our stored mark (our
    store was restored from an older copy): raise the mark (``Inbox.raise_hwm``)."""

    epoch: str
    hwm: int
    stored_hwm: int


class RestartOwnStream(_Event, frozen=True):
    """The peer holds more of our stream than our store does (our store was restored from an
    older copy). The session closes next; give our stream a new epoch before reconnecting, so
    what we still hold is sent again as a new stream."""

    detail: str


class DataReceived(_Event, frozen=True):
    """A new in-order data message; make it durable, then call ``acknowledge(seq)``."""

    seq: int
    body: Any


class DuplicateDropped(_Event, frozen=True):
    """A data message at or below the high-water mark arrived again and was dropped."""

    seq: int


class Acked(_Event, frozen=True):
    """The peer made our stream durable up to ``upto``; delete those rows."""

    upto: int


class HeartbeatReceived(_Event, frozen=True):
    at: float
    draining: bool


class RequestReceived(_Event, frozen=True):
    request: Request


class ResponseReceived(_Event, frozen=True):
    response: Response


class RequestTimedOut(_Event, frozen=True):
    id: str


class PeerWarning(_Event, frozen=True):
    """The peer refused something without closing the session (a non-fatal error frame)."""

    code: str
    detail: str


class Closed(_Event, frozen=True):
    """The session ended. ``code`` is None for a clean close; ``by_peer`` says who ended it."""

    code: ErrorCode | None
    detail: str
    by_peer: bool


Event = (
    AuthVerified
    | Opened
    | DataReceived
    | DuplicateDropped
    | Acked
    | HeartbeatReceived
    | RequestReceived
    | ResponseReceived
    | RequestTimedOut
    | PeerWarning
    | PeerStreamStarted
    | PeerStreamAdvanced
    | RestartOwnStream
    | Closed
)
