# One worker's WebSocket on the facilitator (a websockets sync ServerConnection) behind the shared
# Transport interface, so the shared writer thread (jobrelay.common.transport.BackgroundSender)
# can write it. Invariant: a stuck send never blocks a close: the close aborts the socket instead.
from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from typing import Final

from loguru import logger
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from jobrelay.common.transport import TransportClosed, TransportError
from jobrelay.facilitator.hub import Counters

__all__ = ["CLOSE_TIMEOUT", "Lost", "ServerTransport", "read_frames"]

CLOSE_TIMEOUT: Final = 1.0
"""The websockets closing-handshake timeout (``serve(close_timeout=...)``)."""


class ServerTransport:
    """A websockets ``ServerConnection`` behind the worker's ``Transport`` interface, so the
    worker's ``BackgroundSender`` can write it. Only ``send`` and ``close`` are used.

    ``close`` is graceful (closing handshake, bounded by the connection's close_timeout) unless a
    send is stuck or a close already started: then it aborts (shuts the TCP socket down, which
    makes a blocked send fail at once).
    """

    def __init__(self, ws: ServerConnection, counters: Counters) -> None:
        self._ws = ws
        self._counters = counters
        self._lock = threading.Lock()
        self._send_started: float | None = None
        self._closing = False
        self.closed = threading.Event()

    def connect(self, url: str, timeout: float) -> None:
        raise TransportError("a server connection is connected by its client")

    def recv(self) -> bytes | str:
        raise TransportError("a server connection is read by its WorkerConnection")

    def send(self, data: bytes, binary: bool) -> None:
        with self._lock:
            self._send_started = time.monotonic()
        try:
            self._ws.send(data, text=not binary)
        except (ConnectionClosed, OSError) as exc:
            raise TransportClosed(f"send failed: {exc}") from exc
        finally:
            with self._lock:
                self._send_started = None
        self._counters.add("frames_out")

    def stuck_for(self, now: float) -> float:
        """How long the send in progress has been waiting (0 when none), ``now`` monotonic."""
        started = self._send_started
        return 0.0 if started is None else now - started

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._lock:
            graceful = not self._closing and self._send_started is None
            self._closing = True
        if not graceful:
            self.abort()
            return
        try:
            self._ws.close(code, reason[:120])
        except Exception as exc:  # the socket may already be gone
            logger.debug("facilitator: close failed: {}", exc)
        finally:
            self.closed.set()

    def abort(self) -> None:
        """Drop the TCP connection now (no closing handshake)."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._ws.socket, socket.SHUT_RDWR)
        self.closed.set()


class Lost:
    """The reader's last item: the connection ended."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def read_frames(
    ws: ServerConnection, inbox: queue.Queue[bytes | Lost | None], released: threading.Event
) -> None:
    """The reader thread: move received frames into ``inbox`` (bounded: a slow handler stops the
    reading, TCP pushes back on the worker), ending with a Lost item; stops once ``released``."""
    while True:
        item: bytes | Lost
        try:
            item = ws.recv(decode=False)
        except ConnectionClosed as exc:
            item = Lost(f"connection closed ({exc})")
        except Exception as exc:  # pragma: no cover - websockets raises ConnectionClosed
            item = Lost(f"connection failed ({exc})")
        while not released.is_set():
            try:
                inbox.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        if isinstance(item, Lost) or released.is_set():
            return
