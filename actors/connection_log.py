# The lines the worker's Connection logs about its sessions: why one closed (an ERROR only when
# authentication failed on a side's configuration, with what to check), and a facilitator stream
# that starts anew, a change of state. Plain functions over the actor's bound logger.
from __future__ import annotations

from typing import Any, Final

from jobrelay.actors.actor_messages import ConnectionState
from jobrelay.protocol import events as ev
from jobrelay.protocol.close_codes import AUTH_CODES
from jobrelay.protocol.errors import ErrorCode

__all__ = [
    "GAVE_UP_ATTEMPTS",
    "GAVE_UP_AUTH",
    "auth_refused",
    "log_attempt_failed",
    "log_closed",
    "log_new_epoch",
    "log_state",
]

GAVE_UP_ATTEMPTS: Final = "max_attempts"  # max_attempts connection attempts failed in a row
GAVE_UP_AUTH: Final = "auth_refused"  # an identity was refused (see auth_refused)

# What the worker closes with when the facilitator is not the one it pins.
_NOT_OUR_FACILITATOR: Final = frozenset({ErrorCode.WRONG_KEY, ErrorCode.BAD_SIGNATURE})
# States passed in milliseconds: their lines are DEBUG.
_TRANSIENT: Final = (ConnectionState.CONNECTING, ConnectionState.AUTHENTICATING)
# Refusals that trying again cannot change (a replayed nonce is a fluke: the next try has a new one).
_REFUSED_US: Final = AUTH_CODES - {ErrorCode.REPLAYED_NONCE}


def auth_refused(event: ev.Closed) -> bool:
    """The session ended because an identity was refused: the facilitator did not accept our
    worker id or key (or our clock), or the facilitator is not the one we pin. Reconnecting
    repeats it until someone changes a key file, so the worker stops instead (unless told not to)."""
    if event.by_peer:
        return event.code in _REFUSED_US
    return event.code in _NOT_OUR_FACILITATOR


def _hint(event: ev.Closed) -> str:
    if event.by_peer and event.code in AUTH_CODES:  # the facilitator refused us
        return "check worker_id and key"
    if not event.by_peer and event.code in _NOT_OUR_FACILITATOR:  # we refused its identity
        return "check facilitator_key and url"
    return ""


def log_closed(bound: Any, event: ev.Closed, left_out: str) -> None:
    """One line for a session that ended (``left_out``: the lines counted, not logged)."""
    who = "facilitator" if event.by_peer else "we"
    parts = [str(event.code or ""), event.detail, left_out and f"(not logged: {left_out})"]
    # One space between parts, whatever blanks a peer's close reason brings.
    why = " ".join(" ".join(parts).split())
    hint = _hint(event)
    if hint:
        bound.error("authentication failed ({} ended it): {}; {}", who, why, hint)
    else:  # (a facilitator breaking the handshake's rules is a warning, not a misconfiguration)
        level = "WARNING" if event.code is not None else "INFO"
        bound.log(level, "connection closed ({} ended it): {}", who, why)


def log_new_epoch(bound: Any, event: ev.PeerStreamStarted) -> None:
    """A replaced facilitator stream (a first one is routine: the JobRouter notes it at DEBUG):
    the facilitator's store is new."""
    bound.warning(
        "facilitator stream has a new epoch {} (its store is new; was {}); resuming after {}",
        event.epoch,
        event.previous_epoch,
        event.after,
    )


def log_state(log: Any, state: ConnectionState, detail: str, quiet: bool) -> None:
    """The line of a state change: INFO, but DEBUG for the transient states and when ``quiet``
    (a backoff after a logged close repeats its cause: a worker a facilitator keeps dropping logs
    two lines per session, not four)."""
    level = "DEBUG" if quiet or state in _TRANSIENT else "INFO"
    log.bind(state=state.value).log(level, "connection {}{}", state.value, detail and f": {detail}")


def log_attempt_failed(log: Any, tries: int, url: str, error: str, retry_after: float | None) -> None:
    """A connection attempt failed (numbered 1, 2, 3 since the last session). A busy facilitator
    (503 with a Retry-After) is up and said when to come back: routine in a storm, so INFO."""
    log.log(
        "WARNING" if retry_after is None else "INFO",
        "connection attempt {} to {} failed: {}",
        tries,
        url,
        error,
    )
