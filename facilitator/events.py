# The facilitator's live events (job submitted/routed/status/ended, worker connected/draining/gone)
# and their in-memory fan-out to subscribers (GET /events, `jobrelay events`).
# Invariants:
# - publish() never blocks and never waits for a subscriber: it takes one short lock, appends to
#   each subscriber's bounded buffer and wakes that subscriber's loop at most once per batch.
# - A subscriber whose buffer is full is dropped at once (its last item is a ``stream.dropped``
#   marker saying why): a slow reader loses its stream, never slows the facilitator or the others.
# - Events carry a sequence number from one counter, so a reader sees them in publish order and
#   can tell whether it missed any.
# - Nothing here touches the database: a subscriber costs one deque and one asyncio.Event.
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgspec

__all__ = ["BUFFER", "DROPPED", "TERMINAL", "EventBus", "Subscription", "encoded"]

BUFFER: Final = 1000
"""Events a subscriber may fall behind by before it is dropped."""

DROPPED: Final = "stream.dropped"
"""The type of the marker that ends a dropped subscriber's stream."""

TERMINAL: Final = frozenset({"completed", "failed", "rejected", "cancelled"})

Event = dict[str, Any]

_ENCODER: Final = msgspec.json.Encoder()


def encoded(event: Event) -> bytes:
    """The event as one JSON line (its ``_line``, made once when it was published)."""
    line = event.get("_line")
    return line if isinstance(line, bytes) else _ENCODER.encode(event) + b"\n"


class Subscription:
    """One reader's bounded buffer; read it with ``get`` on the loop it was made on.

    Attributes:
        dropped: The reason it was dropped ("" while live); its stream ends after the marker.
    """

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._bus = bus
        self._loop = loop
        self._limit = limit
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._wake_pending = False
        self._interrupted = False
        self.dropped = ""

    def _offer(self, event: Event) -> bool:
        """Buffer ``event`` (under the bus lock); False when full (the caller drops it)."""
        if len(self._items) >= self._limit:
            self.dropped = f"subscriber too slow: {self._limit} events behind"
            self._items.append(
                {"seq": event["seq"], "at": event["at"], "type": DROPPED, "reason": self.dropped}
            )
            self._wake()
            return False
        self._items.append(event)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._wake_pending:
            return  # one wake-up per batch the reader has not taken yet
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the reader's loop closed: nobody to wake
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self, timeout: float) -> list[Event]:
        """Every buffered event, oldest first; [] when none came within ``timeout`` seconds or
        ``interrupt`` was called."""
        deadline = self._loop.time() + timeout
        while True:
            with self._bus._lock:
                items = list(self._items)
                self._items.clear()
                self._wake_pending = False
                self._ready.clear()
            remaining = deadline - self._loop.time()
            if items or remaining <= 0 or self._interrupted:
                self._interrupted = False
                return items
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._ready.wait()  # a wake-up for items taken already: look again

    def interrupt(self) -> None:
        """Make a waiting ``get`` return now (thread-safe): its reader is told to stop."""
        self._interrupted = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self._bus._remove(self)


class EventBus:
    """Fan-out of facilitator events to any number of subscribers (thread-safe)."""

    def __init__(self, *, limit: int = BUFFER, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._limit = limit
        self._clock = clock
        self._seq = 0
        self.dropped = 0  # subscribers dropped for being slow, since start

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, limit: int | None = None) -> Subscription:
        """A new subscription, read on the running event loop (call it from a coroutine)."""
        sub = Subscription(self, asyncio.get_running_loop(), limit or self._limit)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def publish(self, kind: str, /, **fields: Any) -> None:
        """Send one event of type ``kind`` (e.g. ``job.status``) with ``fields`` to every
        subscriber. Cheap without subscribers: no dict is built."""
        if not self._subs:
            return
        with self._lock:
            self._seq += 1
            event: Event = {"seq": self._seq, "at": round(self._clock(), 6), "type": kind, **fields}
            # Encoded once here, not once per reader: ten readers cost ten writes, one encode.
            event["_line"] = _ENCODER.encode(event) + b"\n"
            slow = [sub for sub in self._subs if not sub._offer(event)]
            for sub in slow:
                self._subs.remove(sub)
            self.dropped += len(slow)

    def job_status(
        self,
        job_id: str,
        worker: str | None,
        status: str,
        detail: str = "",
        progress: float | None = None,
        attempt: int = 1,
    ) -> None:
        """Publish ``job.status`` for a recorded status, and ``job.ended`` after it when the
        status is terminal."""
        if not self._subs:
            return
        self.publish(
            "job.status",
            job_id=job_id,
            worker=worker,
            status=status,
            progress=progress,
            detail=detail,
            attempt=attempt,
        )
        if status in TERMINAL:
            self.publish("job.ended", job_id=job_id, worker=worker, status=status, detail=detail)
