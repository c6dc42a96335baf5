# An in-memory Transport pair for tests: the worker's Connection gets one end, a test (or an
# in-process facilitator) drives the other. Invariant: same semantics as the WebSocket
# transport — ordered messages, text vs binary kept, close seen by both ends.
from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from jobrelay.common.transport import TransportClosed, TransportError

__all__ = ["MemoryEnd", "MemoryNetwork", "memory_pair"]

_CLOSED = object()


class MemoryEnd:
    """One end of an in-memory connection (implements Transport)."""

    def __init__(
        self, inbox: queue.Queue[object], peer_inbox: queue.Queue[object], closed: threading.Event
    ) -> None:
        self._inbox = inbox
        self._peer_inbox = peer_inbox
        self._closed = closed
        self.close_code: int | None = None

    def connect(self, url: str, timeout: float) -> None:
        if self._closed.is_set():
            raise TransportError(f"cannot connect to {url}: refused")

    def send(self, data: bytes, binary: bool) -> None:
        if self._closed.is_set():
            raise TransportClosed("closed")
        self._peer_inbox.put(data if binary else data.decode())

    def recv(self, timeout: float | None = None) -> bytes | str:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if item is _CLOSED:
            self._inbox.put(_CLOSED)  # stay closed for later readers
            raise TransportClosed(f"closed ({self.close_code})")
        assert isinstance(item, bytes | str)
        return item

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.close_code = code
            self._inbox.put(_CLOSED)
            self._peer_inbox.put(_CLOSED)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def memory_pair() -> tuple[MemoryEnd, MemoryEnd]:
    """Two connected ends: what one sends, the other receives."""
    a: queue.Queue[object] = queue.Queue()
    b: queue.Queue[object] = queue.Queue()
    closed = threading.Event()
    return MemoryEnd(a, b, closed), MemoryEnd(b, a, closed)


class MemoryNetwork:
    """A transport factory for a worker: each connection attempt yields a new pair; the server
    ends appear in ``accepted`` for the test to serve. ``refuse`` makes attempts fail."""

    def __init__(self) -> None:
        self.accepted: queue.Queue[MemoryEnd] = queue.Queue()
        self.refuse = threading.Event()
        self.attempts = 0

    def __call__(self) -> MemoryEnd:
        self.attempts += 1
        client, server = memory_pair()
        if self.refuse.is_set():
            client.close(1011, "refused")
        else:
            self.accepted.put(server)
        return client

    def factory(self) -> Callable[[], MemoryEnd]:
        return self
