# The facilitator's workers' port asks a ConnectionGate (jobrelay.common.admission) about every
# TCP connection the moment it is accepted: a `websockets` ServerConnection refused at once (no
# handshake task, no HTTP parsing) and that tells the gate when its peer proved a worker key and
# when it is gone. Runs on the facilitator's loop thread.
# A refusal over max_unauthenticated (a reconnect storm: too many handshakes at once) is answered
# "503 Service Unavailable" with a Retry-After from the ComeBackSchedule, written before the
# request is read; its request is read and dropped (closing with unread data would reset the
# connection and could destroy the answer in flight) and the socket closed once the request's
# headers ended, or the worker closed, or after BUSY_LINGER (a reset).
# Such sockets count against the gate's socket cap (may_answer): beyond it, and for the other
# refusals (the socket cap, per address: anonymous floods), a reset.
from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Final, cast

from websockets.asyncio.connection import Connection

from jobrelay.common.admission import ConnectionGate
from jobrelay.facilitator.ws_connection import FrameConnection
from jobrelay.protocol.come_back import ComeBackSchedule

__all__ = ["BUSY_LINGER", "GatedConnection", "busy_response", "gated_connection"]

BUSY_LINGER: Final = 1.0
"""Seconds a refused connection's 503 waits for the end of the worker's request, then reset."""
_MOST_REFUSED_REQUEST: Final = 16_384  # bytes of a refused request read before giving up on it


def busy_response(retry_after: int) -> bytes:
    """The whole answer to a connection refused in a storm (no body: the status says it)."""
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Content-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


class GatedConnection(FrameConnection):
    """A `websockets` server connection that asks the gate first (``create_connection=``)."""

    gate: ClassVar[ConnectionGate]
    come_back: ClassVar[ComeBackSchedule]
    address = "?"
    admitted = False
    authenticated = False
    _busy: asyncio.TimerHandle | None = None  # refused with a 503: the reset if it lingers
    _refused_tail = b""  # the last bytes a refused connection sent (its headers' end may straddle)
    _refused_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.gate.admit(address):
            # What connection_lost needs, without the handshake task ServerConnection starts.
            Connection.connection_made(self, transport)
            tcp = cast(asyncio.Transport, transport)
            if self.gate.last_refusal != "unauthenticated" or not self.gate.may_answer():
                tcp.abort()
                return
            tcp.write(busy_response(self.come_back.hint(time.monotonic())))
            self._busy = asyncio.get_running_loop().call_later(BUSY_LINGER, tcp.abort)
            return
        self.address, self.admitted = address, True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._busy is None:
            super().data_received(data)
            return
        # The refused request, read only so that closing does not reset the answer: once its
        # headers ended, close (the 503 goes first, then FIN); a huge one is not waited for.
        seen, self._refused_bytes = self._refused_tail + data, self._refused_bytes + len(data)
        if b"\r\n\r\n" in seen:
            self.transport.close()
        elif self._refused_bytes > _MOST_REFUSED_REQUEST:
            self.transport.abort()
        self._refused_tail = seen[-3:]

    def eof_received(self) -> None:
        if self._busy is not None:
            return None  # the worker read the 503 and closed: asyncio closes our side
        return super().eof_received()

    def mark_authenticated(self) -> None:
        """The peer proved its worker key (called once, by its WorkerConnection)."""
        if self.admitted and not self.authenticated:
            self.authenticated = True
            self.gate.authenticated(self.address)
            self.come_back.admitted(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy is not None:
            self._busy.cancel()
            self.gate.answered()
        if self.admitted:
            self.admitted = False
            self.gate.closed(self.address, self.authenticated)
        super().connection_lost(exc)


def gated_connection(gate: ConnectionGate, come_back: ComeBackSchedule) -> type[GatedConnection]:
    """A GatedConnection class bound to ``gate`` and the hints of ``come_back`` (one per
    facilitator: tests run several)."""
    return type("GatedConnection", (GatedConnection,), {"gate": gate, "come_back": come_back})
