"""jobrelay's wire protocol, sans-I/O: messages, codec, handshake and session state machines.

Nothing here opens sockets, starts threads, reads clocks or draws random numbers: time, nonces and
randomness are arguments. See docs/PROTOCOL.md for the specification. Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.protocol.auth import NonceRegistry, Transcript, parse_authorized_keys, public_key_hex
    from jobrelay.protocol.backoff import full_jitter, full_jitter_delays
    from jobrelay.protocol.codec import Codec, Format, facilitator_codec, worker_codec
    from jobrelay.protocol.config import LinkConfig
    from jobrelay.protocol.driver import SessionDriver
    from jobrelay.protocol.errors import (
        ConfigError,
        ErrorCode,
        JobrelayError,
        LocalProtocolError,
        ProtocolError,
        RemoteProtocolError,
    )
    from jobrelay.protocol.session import (
        FacilitatorSession,
        OutFrame,
        SessionConfig,
        SessionState,
        WorkerSession,
    )
    from jobrelay.protocol.streams import StreamMarks, resolve_resume

__all__ = [
    "Codec",
    "ConfigError",
    "ErrorCode",
    "FacilitatorSession",
    "Format",
    "JobrelayError",
    "LinkConfig",
    "LocalProtocolError",
    "NonceRegistry",
    "OutFrame",
    "ProtocolError",
    "RemoteProtocolError",
    "SessionConfig",
    "SessionDriver",
    "SessionState",
    "StreamMarks",
    "Transcript",
    "WorkerSession",
    "facilitator_codec",
    "full_jitter",
    "full_jitter_delays",
    "parse_authorized_keys",
    "public_key_hex",
    "resolve_resume",
    "worker_codec",
]

_EXPORTS = {
    "Codec": "jobrelay.protocol.codec",
    "ConfigError": "jobrelay.protocol.errors",
    "ErrorCode": "jobrelay.protocol.errors",
    "FacilitatorSession": "jobrelay.protocol.session",
    "Format": "jobrelay.protocol.codec",
    "JobrelayError": "jobrelay.protocol.errors",
    "LinkConfig": "jobrelay.protocol.config",
    "LocalProtocolError": "jobrelay.protocol.errors",
    "NonceRegistry": "jobrelay.protocol.auth",
    "OutFrame": "jobrelay.protocol.session",
    "ProtocolError": "jobrelay.protocol.errors",
    "RemoteProtocolError": "jobrelay.protocol.errors",
    "SessionConfig": "jobrelay.protocol.session",
    "SessionDriver": "jobrelay.protocol.driver",
    "SessionState": "jobrelay.protocol.session",
    "StreamMarks": "jobrelay.protocol.streams",
    "Transcript": "jobrelay.protocol.auth",
    "WorkerSession": "jobrelay.protocol.session",
    "facilitator_codec": "jobrelay.protocol.codec",
    "full_jitter": "jobrelay.protocol.backoff",
    "full_jitter_delays": "jobrelay.protocol.backoff",
    "parse_authorized_keys": "jobrelay.protocol.auth",
    "public_key_hex": "jobrelay.protocol.auth",
    "resolve_resume": "jobrelay.protocol.streams",
    "worker_codec": "jobrelay.protocol.codec",
}
lazy_exports(globals(), _EXPORTS)
