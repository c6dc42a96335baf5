# The session state machines, sans-I/O: bytes in (receive_data), frames out (data_to_send),
# events out (events_received). No sockets, threads, clocks or randomness: time, nonces and
# session ids are arguments.
#
# The states and the table of frames each state accepts (ACCEPTS) live in session_states.py; the
# handlers that move between them in session_base.py (shared), worker_session.py and
# facilitator_session.py. This module is what the rest imports. A frame not listed for the
# current state closes the session with UNEXPECTED_FRAME (or NOT_AUTHENTICATED for data before
# the handshake). A remote violation never raises out of receive_data(): it queues a fatal error
# frame, moves to CLOSED and emits Closed. Misuse by the owner raises LocalProtocolError.
from __future__ import annotations

from jobrelay.protocol.facilitator_session import FacilitatorSession
from jobrelay.protocol.session_states import (
    ACCEPT,
    ACCEPTS,
    CLOSE,
    TRANSITIONS,
    OutFrame,
    SessionConfig,
    SessionState,
)
from jobrelay.protocol.worker_session import WorkerSession

__all__ = [
    "ACCEPT",
    "ACCEPTS",
    "CLOSE",
    "TRANSITIONS",
    "FacilitatorSession",
    "OutFrame",
    "SessionConfig",
    "SessionState",
    "WorkerSession",
]
