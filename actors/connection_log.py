# The lines the worker's Connection logs about its sessions: why one closed (an ERROR only when
# authentication failed on a side's configuration, with what to check), and a facilitator stream
# that starts anew. Plain functions over the actor's bound logger.
from __future__ import annotations

from typing import Any, Final

from jobrelay.protocol import events as ev
from jobrelay.protocol.close_codes import AUTH_CODES
from jobrelay.protocol.errors import ErrorCode

__all__ = ["log_closed", "log_new_epoch"]

# What the worker closes with when the facilitator is not the one it pins.
_NOT_OUR_FACILITATOR: Final = frozenset({ErrorCode.WRONG_KEY, ErrorCode.BAD_SIGNATURE})


def log_closed(bound: Any, event: ev.Closed, left_out: str) -> None:
    """One line for a session that ended (``left_out``: the lines counted, not logged)."""
    who = "facilitator" if event.by_peer else "we"
    why = " ".join(filter(None, [event.code, event.detail, left_out and f"(not logged: {left_out})"]))
    hint = ""
    if event.by_peer and event.code in AUTH_CODES:  # the facilitator refused us
        hint = "check worker_id and key"
    elif not event.by_peer and event.code in _NOT_OUR_FACILITATOR:  # we refused its identity
        hint = "check facilitator_key and url"
    if hint:
        bound.error("authentication failed ({} ended it): {}; {}", who, why, hint)
    else:  # (a facilitator breaking the handshake's rules is a warning, not a misconfiguration)
        level = "WARNING" if event.code is not None else "INFO"
        bound.log(level, "connection closed ({} ended it): {}", who, why)


def log_new_epoch(bound: Any, event: ev.PeerStreamStarted) -> None:
    """A replaced facilitator stream (a first one is routine): the facilitator's store is new."""
    bound.warning(
        "facilitator stream has a new epoch {} (its store is new; was {}); resuming after {}",
        event.epoch,
        event.previous_epoch,
        event.after,
    )
