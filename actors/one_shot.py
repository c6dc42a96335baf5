# A one-shot timer that `tell`s an actor a message: the actors' only way to wait (a mailbox never
# sleeps). Invariant: at most one timer pending per OneShot; arming again replaces it.
from __future__ import annotations

import threading
from typing import Any

import pykka

from jobrelay.actors.actor_messages import send

__all__ = ["OneShot"]


class OneShot:
    """Tells ``ref`` a message after a delay; ``cancel`` (or a new ``arm``) withdraws it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None and self._timer.is_alive()

    def arm(self, delay: float, ref: pykka.ActorRef[Any], message: Any) -> None:
        self.cancel()
        timer = threading.Timer(max(0.0, delay), send, (ref, message))
        timer.name = self._name
        timer.daemon = True
        self._timer = timer
        timer.start()

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
