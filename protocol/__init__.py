"""jobrelay's wire protocol, sans-I/O: messages, codec, handshake and session state machines.

Nothing here opens sockets, starts threads, reads clocks or draws random numbers: time, nonces and
randomness are arguments. See docs/PROTOCOL.md for the specification.
"""

from jobrelay.protocol.auth import NonceRegistry, parse_authorized_keys, public_key_hex, sign_challenge
from jobrelay.protocol.backoff import full_jitter, full_jitter_delays
from jobrelay.protocol.codec import Codec, Format, facilitator_codec, worker_codec
from jobrelay.protocol.errors import (
    ErrorCode,
    JobrelayError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from jobrelay.protocol.session import FacilitatorSession, OutFrame, SessionConfig, SessionState, WorkerSession
from jobrelay.protocol.streams import StreamMarks, resolve_resume

__all__ = [
    "Codec",
    "ErrorCode",
    "FacilitatorSession",
    "Format",
    "JobrelayError",
    "LocalProtocolError",
    "NonceRegistry",
    "OutFrame",
    "ProtocolError",
    "RemoteProtocolError",
    "SessionConfig",
    "SessionState",
    "StreamMarks",
    "WorkerSession",
    "facilitator_codec",
    "full_jitter",
    "full_jitter_delays",
    "parse_authorized_keys",
    "public_key_hex",
    "resolve_resume",
    "sign_challenge",
    "worker_codec",
]
