# The project's base exception and the protocol layer's typed errors.
# Invariant: every failure a peer can cause reaches callers as RemoteProtocolError with an
# ErrorCode; every misuse by our own side is LocalProtocolError. Nothing else escapes protocol/.
from __future__ import annotations

import enum

__all__ = [
    "ConfigError",
    "ErrorCode",
    "JobrelayError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class JobrelayError(Exception):
    """Base class of every error jobrelay raises on purpose."""


class ConfigError(JobrelayError):
    """A configuration value is invalid; the message starts with ``<Config>.<field>:`` and says
    what is expected. Raised the same way by the worker's and the facilitator's configs."""


class ErrorCode(enum.StrEnum):
    """Error codes carried in ``error`` frames and ``ProtocolError.code``.

    The values are part of the wire protocol (docs/PROTOCOL.md, "Error codes").
    """

    # Frame-level: the bytes could not become a valid message.
    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    FRAME_TOO_LARGE = "frame_too_large"
    # Handshake.
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_CODEC = "unsupported_codec"
    UNKNOWN_KEY = "unknown_key"
    WRONG_KEY = "wrong_key"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAYED_NONCE = "replayed_nonce"
    NOT_AUTHENTICATED = "not_authenticated"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    # Session.
    UNEXPECTED_FRAME = "unexpected_frame"
    SEQ_GAP = "seq_gap"
    ACK_OUT_OF_RANGE = "ack_out_of_range"
    WINDOW_EXCEEDED = "window_exceeded"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    # Application level, sent by a facilitator.
    JOB_NOT_YOURS = "job_not_yours"
    INTERNAL = "internal"


class ProtocolError(JobrelayError):
    """A protocol rule was broken. ``code`` says which; ``detail`` says how."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
        self.code = code
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """Our own side tried to do something the protocol does not allow (a bug in the caller)."""
