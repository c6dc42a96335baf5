# The session's states, its one transition table and its settings (sans-I/O; see session.py).
# Invariant: TRANSITIONS is the only place that says which frame or owner action moves a state
# where; the handlers in session_base.py, worker_session.py and facilitator_session.py consult it.
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple

from jobrelay.protocol.codec import FORMATS, Format
from jobrelay.protocol.messages import (
    Ack,
    Auth,
    Challenge,
    Data,
    DataBatch,
    Heartbeat,
    Hello,
    Request,
    Response,
    Welcome,
)

__all__ = [
    "ACCEPT",
    "ACCEPTS",
    "CLOSE",
    "TRANSITIONS",
    "OutFrame",
    "SessionConfig",
    "SessionState",
    "Trigger",
]


class SessionState(enum.Enum):
    AWAIT_HELLO = "await_hello"  # facilitator: connection open, nothing received
    AWAIT_CHALLENGE = "await_challenge"  # worker: hello sent
    AWAIT_AUTH = "await_auth"  # facilitator: challenge sent
    VERIFYING = "verifying"  # facilitator: auth verified, owner must accept() with stored marks
    AWAIT_WELCOME = "await_welcome"  # worker: auth sent
    OPEN = "open"
    CLOSED = "closed"


ACCEPT: Final = "accept"
"""The owner's trigger that opens a verified facilitator session (``FacilitatorSession.accept``)."""
CLOSE: Final = "close"
"""The trigger of every ending: an error frame, a violation, a timeout, ``close()``, a lost link."""

Trigger = type | str
_OPEN_FRAMES = (Ack, Heartbeat, Request, Response, Data, DataBatch)
TRANSITIONS: Final[dict[SessionState, dict[Trigger, SessionState]]] = {
    SessionState.AWAIT_HELLO: {Hello: SessionState.AWAIT_AUTH, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_CHALLENGE: {Challenge: SessionState.AWAIT_WELCOME, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_AUTH: {Auth: SessionState.VERIFYING, CLOSE: SessionState.CLOSED},
    SessionState.VERIFYING: {ACCEPT: SessionState.OPEN, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_WELCOME: {Welcome: SessionState.OPEN, CLOSE: SessionState.CLOSED},
    SessionState.OPEN: {**{frame: SessionState.OPEN for frame in _OPEN_FRAMES}, CLOSE: SessionState.CLOSED},
    SessionState.CLOSED: {},
}
"""The one transition table: state → {trigger → next state}. A trigger is a frame type received
(``error`` frames aside: every state but CLOSED accepts them and a fatal one means CLOSE) or an
owner action (ACCEPT, CLOSE). A frame type not listed for the current state closes the session with
UNEXPECTED_FRAME (NOT_AUTHENTICATED for data before the handshake)."""

ACCEPTS: Final[dict[SessionState, tuple[type, ...]]] = {
    state: tuple(t for t in row if isinstance(t, type)) for state, row in TRANSITIONS.items()
}
"""Frame types each state accepts, read from TRANSITIONS."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Limits and timers of one session; a facilitator's values are sent to the worker in welcome."""

    max_inflight: int = 2_000
    max_frame_bytes: int = 1_048_576
    max_batch: int = 1_000
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    handshake_timeout: float = 10.0
    max_clock_skew: float = 120.0
    formats: tuple[Format, ...] = ("json",)
    # A facilitator's welcome says it takes back released jobs only if its owner queues them
    # again (the reference facilitator does); otherwise a draining worker keeps them.
    takes_releases: bool = False
    # Seconds an ack may wait for more commits to cover (0: every ack goes out at once). A
    # trickle of one message a frame otherwise costs the peer a frame to read and an Outbox
    # wake-up per message, on the cores its publishes need.
    ack_delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_frame_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SessionConfig.{name} must be ≥ 1")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("SessionConfig needs 0 < heartbeat_interval < heartbeat_timeout")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ValueError(f"SessionConfig.formats must be a non-empty subset of {FORMATS}")
        if not 0 <= self.ack_delay < self.heartbeat_interval:
            raise ValueError("SessionConfig needs 0 <= ack_delay < heartbeat_interval")


class OutFrame(NamedTuple):
    """One WebSocket message to send: text when ``binary`` is False."""

    data: bytes
    binary: bool
