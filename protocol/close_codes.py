# WebSocket close codes for each way a session can end (the contract in docs/PROTOCOL.md,
# "Error codes"). Pure data: both the worker and the facilitator close with these.
from __future__ import annotations

from typing import Final

from jobrelay.protocol.errors import ErrorCode

__all__ = ["AUTH_CODES", "GOING_AWAY", "NORMAL", "TRY_AGAIN_LATER", "close_code_for"]

NORMAL: Final = 1000
GOING_AWAY: Final = 1001  # a peer shutting down (or stopping)
TRY_AGAIN_LATER: Final = 1013  # the facilitator is at capacity (max_workers): reconnect with backoff

AUTH_CODES: Final = frozenset(
    {
        ErrorCode.UNKNOWN_KEY,
        ErrorCode.WRONG_KEY,
        ErrorCode.BAD_SIGNATURE,
        ErrorCode.STALE_TIMESTAMP,
        ErrorCode.REPLAYED_NONCE,
        ErrorCode.NOT_AUTHENTICATED,
    }
)
"""Codes that mean authentication failed (close code 4001)."""

_CLOSE_CODES: Final[dict[ErrorCode, int]] = {
    ErrorCode.HEARTBEAT_TIMEOUT: 4002,
    ErrorCode.HANDSHAKE_TIMEOUT: 4003,
    ErrorCode.UNSUPPORTED_VERSION: 4004,
    ErrorCode.UNSUPPORTED_CODEC: 4004,
    ErrorCode.FRAME_TOO_LARGE: 1009,
    ErrorCode.INTERNAL: 1011,
} | dict.fromkeys(AUTH_CODES, 4001)


def close_code_for(code: ErrorCode | None) -> int:
    """The WebSocket close code for a session that ended with ``code`` (None: a clean close);
    any other protocol error closes with 4000."""
    if code is None:
        return NORMAL
    return _CLOSE_CODES.get(code, 4000)
