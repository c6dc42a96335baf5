# The one session driver both ends use: it feeds a session the bytes and time its owner got, hands
# every frame the session queued to the owner's writer, and every event to the owner's handler,
# consecutive data grouped into one batch (so the owner persists a batch in one commit).
# Sans-I/O like the session: no sockets, threads or clocks; "writer" is any callable (a writer
# thread's queue, an asyncio transport, a test list).
# Invariants:
# - Frames reach the writer in the order the session queued them, and before the events that
#   followed them are handled (an error frame goes out before the Closed event shuts the socket).
# - Events reach the handler in the order the session emitted them; events produced while the
#   handler acts (acknowledge(), accept(), close()) are handled in the same pump, after the
#   current ones. pump() is not re-entered: a handler that drives the session only queues.
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.events import DataReceived, Event
from jobrelay.protocol.session import FacilitatorSession, OutFrame, WorkerSession

__all__ = ["SessionDriver", "SessionHandler"]

S = TypeVar("S", WorkerSession, FacilitatorSession)


class SessionHandler(Protocol):
    """What differs between the two ends: what to do with received data and with each event."""

    def on_data(self, items: list[tuple[int, Any]]) -> None:
        """New in-order data ``(seq, body)``: make it durable, then ``session.acknowledge``."""

    def on_event(self, event: Event) -> None:
        """Any other event, in order (Opened, Acked, Closed…)."""


class SessionDriver(Generic[S]):
    """Drives one session over one connection.

    Args:
        session: the session of this connection (a worker's or a facilitator's).
        write: called with each frame to send, in order; must not block.
        handler: the side's reaction to data and events.

    Attributes:
        draining: sent in every heartbeat (the worker sets it while it drains).
        frames_in / frames_out: frames received and handed to ``write`` (for metrics).
    """

    def __init__(self, session: S, write: Callable[[OutFrame], object], handler: SessionHandler) -> None:
        self.session: S = session
        self.draining = False
        self.frames_in = 0
        self.frames_out = 0
        self._write = write
        self._handler = handler
        self._pumping = False

    # ------------------------------------------------------------ inputs

    def receive(self, data: bytes | str, now: float, binary: bool | None = None) -> None:
        """One WebSocket message arrived at ``now`` (``binary``: see ``Codec.decode``)."""
        self.feed(data, now, binary)
        self.pump()

    def feed(self, data: bytes | str, now: float, binary: bool | None = None) -> None:
        """Like ``receive`` but without acting yet: feed a burst of messages, then ``pump()`` once,
        so their data reaches ``on_data`` as one batch (one commit)."""
        self.frames_in += 1
        self.session.receive_data(data, now, binary)

    def tick(self, now: float) -> None:
        """Time passed: run deadlines and send a heartbeat when one is due."""
        session = self.session
        session.tick(now)
        if session.heartbeat_due(now):
            session.send_heartbeat(now, draining=self.draining)
        self.pump()

    def heartbeat_now(self, now: float) -> None:
        """Send a heartbeat at once (e.g. to announce draining), if the session is open."""
        if self.session.is_open:
            self.session.send_heartbeat(now, draining=self.draining)
            self.pump()

    def lost(self, detail: str) -> None:
        """The transport went away without a close handshake."""
        self.session.connection_lost(detail)
        self.pump()

    def close(self, code: ErrorCode | None = None, detail: str = "") -> None:
        """End the session (telling the peer why when ``code`` is given)."""
        self.session.close(code, detail)
        self.pump()

    # ------------------------------------------------------------ outputs

    def pump(self) -> None:
        """Flush frames and hand events to the handler until the session has nothing more."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                self.flush()
                events = self.session.events_received()
                if not events:
                    return
                self._dispatch(events)
        finally:
            self._pumping = False

    def flush(self) -> None:
        """Hand every queued frame to the writer."""
        frames = self.session.data_to_send()
        for frame in frames:
            self._write(frame)
        self.frames_out += len(frames)

    def _dispatch(self, events: list[Event]) -> None:
        batch: list[tuple[int, Any]] = []
        for event in events:
            if isinstance(event, DataReceived):
                batch.append((event.seq, event.body))
                continue
            if batch:
                self._handler.on_data(batch)
                batch = []
            self._handler.on_event(event)
        if batch:
            self._handler.on_data(batch)
