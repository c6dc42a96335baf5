# Heartbeat actor: a timer thread that beats every `period` seconds. Each beat tells the
# Connection to send a heartbeat when one is due and to drop a peer silent past the deadline,
# and tells the Outbox to expire publishes that waited too long for room.
# Invariant: the timer thread only `tell`s; it stops when the actor stops.
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from jobrelay.actors.actor_messages import Beat, send

__all__ = ["HeartbeatActor", "HeartbeatProxy", "heartbeat_proxy"]


class HeartbeatActor(pykka.ThreadingActor):
    def __init__(
        self,
        targets: list[pykka.ActorRef[Any]],
        *,
        period: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._targets = targets
        self._period = period
        self._clock = clock
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobrelay-heartbeat", daemon=True)
        self._count = 0

    def on_start(self) -> None:
        self._thread.start()

    def on_stop(self) -> None:
        self._halt.set()

    def on_failure(self, *args: object) -> None:
        self._halt.set()

    def beats(self) -> int:
        """Beats sent since start (a liveness check of the timer itself)."""
        return self._count

    def _run(self) -> None:
        while not self._halt.wait(self._period):
            beat = Beat(self._clock())
            if not all([send(ref, beat) for ref in self._targets]):
                return
            self._count += 1


class HeartbeatProxy(ActorMemberMixin, pykka.ActorProxy[HeartbeatActor]):
    beats = proxy_method(HeartbeatActor.beats)


def heartbeat_proxy(ref: pykka.ActorRef[HeartbeatActor]) -> HeartbeatProxy:
    return cast(HeartbeatProxy, ref.proxy())
