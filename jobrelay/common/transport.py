# What a connection's byte pipe looks like to its owner, and the writer thread that keeps the owner
# from ever waiting on a socket. Shared by the worker (websocket-client) and the facilitator.
# Invariant: every failure surfaces as TransportError/TransportClosed, never a library exception.
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

from jobrelay.protocol.errors import JobrelayError

__all__ = [
    "BackgroundSender",
    "FrameTooLarge",
    "ServerBusy",
    "Transport",
    "TransportClosed",
    "TransportError",
]


class TransportError(JobrelayError):
    """Connecting or sending failed."""


class TransportClosed(TransportError):
    """The connection is gone (closed by either side or broken)."""


class ServerBusy(TransportError):
    """The server answered "503 Service Unavailable" with a Retry-After: it is up, but taking
    other connections first (a reconnect storm); come back in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FrameTooLarge(TransportError):
    """A message larger than the transport's limit was refused from its frame headers, before its
    payload was read. The connection can still send (the error frame and the close); it cannot
    be read any more."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a message of at least {size} bytes > limit {limit}")
        self.size = size
        self.limit = limit


class Transport(Protocol):
    def connect(self, url: str, timeout: float) -> None: ...
    def send(self, data: bytes, binary: bool) -> None: ...
    def recv(self) -> bytes | str:
        """Block until a message arrives: a text message as ``str`` (invalid UTF-8 kept as
        surrogate escapes, for the codec to refuse), a binary one as ``bytes``. Raises
        TransportClosed when the connection ends, FrameTooLarge for a message over the limit."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class BackgroundSender:
    """Writes a transport's frames from its own thread, so its owner never waits on a socket
    (a stalled peer fills the TCP window and would block ``send``). Frames go out in order;
    ``finish`` closes the transport after what was queued, or at once after ``grace`` seconds
    if the writer is stuck."""

    def __init__(
        self, transport: Transport, on_error: Callable[[str], object], name: str = "jobrelay-writer"
    ) -> None:
        self._transport = transport
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[bytes, bool] | tuple[int, str]] = queue.SimpleQueue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, data: bytes, binary: bool) -> None:
        self._queue.put((data, binary))

    def finish(self, code: int, reason: str, grace: float = 1.0) -> None:
        self._queue.put((code, reason))
        if not self._done.wait(0):
            timer = threading.Timer(grace, self._force_close, (code, reason))
            timer.daemon = True
            timer.start()

    def _force_close(self, code: int, reason: str) -> None:
        if not self._done.is_set():
            self._transport.close(code, reason)

    def _run(self) -> None:
        try:
            while True:
                first, second = self._queue.get()
                if isinstance(first, int):
                    self._transport.close(first, str(second))
                    return
                try:
                    self._transport.send(first, bool(second))
                except TransportError as exc:
                    self._on_error(str(exc))
                    return
        finally:
            self._done.set()
