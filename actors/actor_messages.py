# Typed messages the actors exchange (never on the wire). Actors `tell` these to each other;
# a `session_id` on stream messages lets receivers drop what belongs to a session that ended.
from __future__ import annotations

import enum
from typing import Any, Protocol

import msgspec
import pykka

__all__ = [
    "Beat",
    "BreakerChanged",
    "ConnectionState",
    "Count",
    "DropSession",
    "Gauge",
    "Incoming",
    "IoClosed",
    "IoConnected",
    "IoFailed",
    "IoReceived",
    "IoTooLarge",
    "JobDone",
    "Observe",
    "PeerAcked",
    "Persisted",
    "Publish",
    "Reconnect",
    "ReleaseData",
    "SendData",
    "SessionClosed",
    "SessionOpened",
    "StateChanged",
    "send",
]


class ConnectionState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    CLOSED = "closed"


class _Msg(msgspec.Struct, frozen=True, gc=False):
    pass


# --- I/O thread → Connection
class IoConnected(_Msg, frozen=True):
    attempt: int
    marks: Any  # protocol.streams.StreamMarks read by the I/O thread before connecting


class IoFailed(_Msg, frozen=True):
    attempt: int
    error: str
    retry_after: float | None = None  # the facilitator said when to come back (503 Retry-After)


class IoReceived(_Msg, frozen=True):
    attempt: int
    data: bytes | str


class IoTooLarge(_Msg, frozen=True):
    """The transport refused a message from its headers (larger than the frame limit)."""

    attempt: int
    detail: str


class IoClosed(_Msg, frozen=True):
    attempt: int
    detail: str


# --- Connection ↔ Outbox
class SessionOpened(_Msg, frozen=True):
    """Send the stream after ``resume_after``, handing over seqs up to ``limit`` (the session's
    send window decides it: ``Sender.handover_limit``) to ``connection``."""

    session_id: str
    resume_after: int
    limit: int
    connection: Any  # pykka.ActorRef of the Connection that opened the session
    as_stored: bool = False  # JSON frames: hand bodies over as their stored bytes (msgspec.Raw)


class SessionClosed(_Msg, frozen=True):
    session_id: str


class PeerAcked(_Msg, frozen=True):
    """The facilitator holds our stream up to ``upto``; hand over seqs up to ``limit`` now."""

    session_id: str
    upto: int
    limit: int


class SendData(_Msg, frozen=True):
    session_id: str
    items: list[tuple[int, Any]]


class Publish(_Msg, frozen=True):
    body: Any
    future: Any  # pykka.Future[int], resolved with the seq once durable
    backlog: Any = None  # the handle's PublishBacklog, told when the Outbox takes the message
    # (job_id, task_id, stream position) of a relayed external event: the position is committed
    # in the same transaction as the status, so a restart relays nothing twice.
    mark: tuple[str, str, str] | None = None
    # (job_id, attempt, backend, task_id): the job goes to an external backend; its dispatch row is
    # committed with this status (storage.Dispatches.record).
    dispatch: tuple[str, int, str, str] | None = None


# --- Connection ↔ JobRouter (the protocol's PeerStreamStarted/PeerStreamAdvanced events are told
# to the JobRouter as they are)
class Incoming(_Msg, frozen=True):
    """New in-order data of ``session_id``; reply Persisted (or DropSession) to ``connection``."""

    session_id: str
    items: list[tuple[int, Any]]
    connection: Any  # pykka.ActorRef of the Connection that received it


class Persisted(_Msg, frozen=True):
    session_id: str
    upto: int


class DropSession(_Msg, frozen=True):
    session_id: str
    reason: str


class JobDone(_Msg, frozen=True):
    job_id: str
    attempt: int = 1  # a retry of the job may already run here: only that attempt's end counts
    kind: str = ""  # every run ends once: its kind's concurrency count goes down whatever the attempt


# --- timers
class Beat(_Msg, frozen=True):
    at: float


class Reconnect(_Msg, frozen=True):
    attempt: int


class ReleaseData(_Msg, frozen=True):
    """Tokens have come for data the send throttle holds for ``session_id``."""

    session_id: str


# --- anyone → subscribers / Metrics
class StateChanged(_Msg, frozen=True):
    state: ConnectionState
    at: float
    detail: str = ""


class BreakerChanged(_Msg, frozen=True):
    """The connection's circuit breaker moved from ``before`` to ``after`` (BreakerState values)."""

    before: str
    after: str
    at: float
    reason: str = ""


class Count(_Msg, frozen=True):
    name: str
    n: int = 1


class Gauge(_Msg, frozen=True):
    name: str
    value: float


class Observe(_Msg, frozen=True):
    name: str
    value: float


class Tellable(Protocol):
    """What takes a message with ``tell``: an actor's ref, or the MetricsSink that counts in place."""

    def tell(self, message: Any) -> None: ...


def send(ref: Tellable | None, message: Any) -> bool:
    """``tell`` that tolerates a stopped target (actors stop in sequence; late messages to an
    already stopped actor are expected then, and everything they carry is durable or
    recomputed on restart). Returns False when the target is gone."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
