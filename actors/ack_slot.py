# The newest ack for the Outbox, readable before its mailbox reaches it. In a publish burst the
# Outbox's mailbox holds the batches queued before the ack, and the ack opened the send window
# only after all of them were committed: the session sent nothing meanwhile (0.5 s of a burst of
# 100,000 with a window of 1,000). Acks are cumulative, so the Outbox may act on the newest one
# after any commit; the copy in the mailbox still comes in order and then changes nothing.
from __future__ import annotations

import threading
from typing import Any

import pykka

from jobrelay.actors.actor_messages import PeerAcked

__all__ = ["AckSlot", "OutboxDoor"]


class AckSlot:
    """The newest PeerAcked told to the Outbox (one writer, the Connection; one reader, the Outbox)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: PeerAcked | None = None

    def put(self, ack: PeerAcked) -> None:
        with self._lock:
            self._newest = ack

    def newest(self) -> PeerAcked | None:
        with self._lock:
            return self._newest

    def clear(self) -> None:
        """Forget what is kept: called by the Outbox when a session opens or closes. A kept ack
        is then the closed session's, or the opening one's, whose copy in the mailbox still
        comes; and a peer that reuses a session id must not have an old session's ack read as
        the new one's. (A new session's first ack cannot come before the Outbox has handled the
        old one's close: every attempt first asks the Outbox for its marks, behind it.)"""
        with self._lock:
            self._newest = None


class OutboxDoor:
    """What the Connection tells the Outbox through (``tell``, as to the actor): every message
    goes to the mailbox; a PeerAcked is also put in the slot the Outbox reads between commits."""

    def __init__(self, actor: pykka.ActorRef[Any], slot: AckSlot) -> None:
        self._actor = actor
        self._slot = slot

    def tell(self, message: Any) -> None:
        if isinstance(message, PeerAcked):
            self._slot.put(message)
        self._actor.tell(message)
