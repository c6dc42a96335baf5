# The writer of one facilitator connection: the frames its session queued, written in order by one
# task on the event loop, then the WebSocket closed. Only this task ever waits on the peer's
# socket, so a stalled worker stalls nothing else.
# Invariants: frames leave in the order they were put (one is written at once only when nothing is
# queued or being sent before it); nothing is written after the close; a failed send aborts the TCP
# connection (the reader then sees the end at once).
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from jobrelay.facilitator.counters import Counters
from jobrelay.protocol.session import OutFrame

__all__ = ["FrameWriter"]


class FrameWriter:
    """Writes one connection's frames in order (``run`` is its task).

    Args:
        ws: the connection.
        counters: counts ``frames_out``.
        close_code: gives ``(code, reason)`` for the close, asked when the close is written.
    """

    def __init__(
        self, ws: ServerConnection, counters: Counters, close_code: Callable[[], tuple[int, str]]
    ) -> None:
        self._ws = ws
        self._counters = counters
        self._close_code = close_code
        self._loop = asyncio.get_running_loop()
        self._frames: deque[OutFrame] = deque()
        self._ready = asyncio.Event()
        self._closing = False
        self._send_started: float | None = None  # loop time of the send in progress

    def put(self, frame: OutFrame) -> None:
        """Send ``frame`` now if nothing is queued before it and the socket takes data; else queue
        it for the task (never blocks)."""
        if self._closing:
            return
        ws = self._ws
        idle = not self._frames and self._send_started is None
        if idle and ws.protocol.state is State.OPEN and not ws.paused:
            # Most frames (heartbeats, acks, a job) find the writer idle: writing them here saves
            # waking its task, which is much of what a frame costs with ten thousand connections.
            if frame.binary:
                ws.protocol.send_binary(frame.data)
            else:
                ws.protocol.send_text(frame.data)
            ws.send_data()
            self._counters.add("frames_out")
            return
        self._frames.append(frame)
        self._ready.set()

    def finish(self) -> None:
        """Close the WebSocket after what is queued (idempotent)."""
        self._closing = True
        self._ready.set()

    @property
    def sending(self) -> bool:
        return self._send_started is not None

    def stuck_for(self) -> float:
        """Seconds the send in progress has waited (0 when none)."""
        started = self._send_started
        return 0.0 if started is None else self._loop.time() - started

    async def run(self) -> None:
        ws = self._ws
        while True:
            while not self._frames and not self._closing:
                self._ready.clear()
                await self._ready.wait()
            if not self._frames:  # closing, and everything before the close was written
                code, reason = self._close_code()
                self._send_started = self._loop.time()
                with contextlib.suppress(Exception):  # the socket may already be gone
                    await ws.close(code, reason[:120])
                return
            frame = self._frames.popleft()
            self._send_started = self._loop.time()
            try:
                await ws.send(frame.data, text=not frame.binary)
            except (ConnectionClosed, OSError) as exc:
                logger.debug("facilitator: send failed: {}", exc)
                ws.transport.abort()
                return
            finally:
                self._send_started = None
            self._counters.add("frames_out")
