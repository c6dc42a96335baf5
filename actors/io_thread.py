# The I/O thread of one connection attempt: read the stream marks, connect, then block in recv()
# and `tell` the Connection actor each frame. Invariant: it only tells (never touches the session),
# and it ends when the connection ends or the actor is gone.
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from jobrelay.actors.actor_messages import IoClosed, IoConnected, IoFailed, IoReceived, IoTooLarge, send
from jobrelay.common.transport import FrameTooLarge, ServerBusy, Transport, TransportError
from jobrelay.protocol.close_codes import GOING_AWAY
from jobrelay.protocol.streams import StreamMarks

__all__ = ["read_connection"]


def read_connection(
    ref: pykka.ActorRef[Any],
    attempt: int,
    transport: Transport,
    url: str,
    timeout: float,
    marks: Callable[[], StreamMarks],
) -> None:
    """One connection attempt: read marks, connect, then read until the connection ends."""
    try:
        stream_marks = marks()
        transport.connect(url, timeout)
    except ServerBusy as exc:
        send(ref, IoFailed(attempt, str(exc), exc.retry_after))
        return
    except Exception as exc:
        send(ref, IoFailed(attempt, str(exc)))
        return
    if not send(ref, IoConnected(attempt, stream_marks)):  # the worker stopped meanwhile
        transport.close(GOING_AWAY, "worker stopped")
        return
    while True:
        try:
            data = transport.recv()
        except FrameTooLarge as exc:
            # Refused unread: the stream is mid-message now, so reading ends here; the actor
            # sends the error frame and closes.
            send(ref, IoTooLarge(attempt, str(exc)))
            return
        except TransportError as exc:
            send(ref, IoClosed(attempt, str(exc)))
            return
        if not send(ref, IoReceived(attempt, data)):
            transport.close(GOING_AWAY, "worker stopped")
            return
