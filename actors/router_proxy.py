# The typed handle on the JobRouter actor that the Worker holds (calls return pykka Futures).
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pykka

from jobrelay.actors.handlers import Handler

if TYPE_CHECKING:
    from jobrelay.actors.router import JobRouter

__all__ = ["JobRouterProxy"]


class JobRouterProxy:
    """Typed handle on the JobRouter (calls return pykka Futures)."""

    def __init__(self, ref: pykka.ActorRef[JobRouter]) -> None:
        self.actor_ref = ref
        self._proxy = cast(Any, ref.proxy())

    def register(self, kind: str, handler: Handler) -> pykka.Future[None]:
        return cast("pykka.Future[None]", self._proxy.register(kind, handler))

    def running(self) -> pykka.Future[list[str]]:
        return cast("pykka.Future[list[str]]", self._proxy.running())

    def drain(self, reason: str, *, cancel_running: bool = True) -> pykka.Future[int]:
        return cast("pykka.Future[int]", self._proxy.drain(reason, cancel_running=cancel_running))

    def in_marks(self) -> pykka.Future[tuple[str, int]]:
        return cast("pykka.Future[tuple[str, int]]", self._proxy.in_marks())
