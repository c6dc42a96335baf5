# The facilitator's workers' port asks a ConnectionGate (jobrelay.common.admission) about every
# TCP connection the moment it is accepted: a `websockets` ServerConnection that is reset at once
# when refused (no handshake task, no HTTP parsing) and tells the gate when its peer proved a worker
# key and when it is gone. Runs on the facilitator's loop thread.
from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

from websockets.asyncio.connection import Connection

from jobrelay.common.admission import ConnectionGate
from jobrelay.facilitator.ws_connection import FrameConnection

__all__ = ["AcceptPacer", "GatedConnection", "gated_connection"]


class GatedConnection(FrameConnection):
    """A `websockets` server connection that asks the gate first (``create_connection=``)."""

    gate: ClassVar[ConnectionGate]
    address = "?"
    admitted = False
    authenticated = False
    waiting = False  # accepted, not yet read: its turn among the unauthenticated has not come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.address = address
        # What connection_lost needs; the handshake task ServerConnection would start here waits
        # for the gate (at once, or when there is room: _start).
        Connection.connection_made(self, transport)
        self.waiting = True
        cast(asyncio.Transport, transport).pause_reading()  # nothing is read before its turn
        if not self.gate.admit(address, self._start):
            self.waiting = False
            cast(asyncio.Transport, transport).abort()
            return
        self.admitted = True  # _start was called, or will be when its turn comes

    def _start(self) -> None:
        if not self.waiting:
            return
        self.waiting = False
        self.transport.resume_reading()
        # What ServerConnection.connection_made does after Connection's part.
        handler_task = self.loop.create_task(self.server.handler(self))
        self.server.handler_tasks.add(handler_task)

    def mark_authenticated(self) -> None:
        """The peer proved its worker key (called once, by its WorkerConnection)."""
        if self.admitted and not self.authenticated:
            self.authenticated = True
            self.gate.authenticated(self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.closed(self.address, self.authenticated, self._start if self.waiting else None)
        super().connection_lost(exc)


def gated_connection(gate: ConnectionGate) -> type[GatedConnection]:
    """A GatedConnection class bound to ``gate`` (one per facilitator: tests run several)."""
    return type("GatedConnection", (GatedConnection,), {"gate": gate})


class AcceptPacer:
    """Takes connections off the listen queue only while the gate has room for unauthenticated
    ones: paused when they reach ``max_unauthenticated``, resumed when some authenticated or
    left. Waiting in the kernel's queue costs neither side anything, where a reset connection
    costs both a connection attempt (and the worker a backoff). Also makes asyncio accept at most
    ``batch`` connections per wake-up (it takes up to the listen backlog at once), so a pause
    takes effect within one batch.

    It drives asyncio's Server through private attributes (CPython 3.11-3.13); where they are
    missing it does nothing and over-limit connections are reset as before.
    """

    def __init__(self, server: asyncio.AbstractServer, *, batch: int, backlog: int) -> None:
        self._server = server
        self._batch = batch
        self._backlog = backlog
        self.paused = False
        self.works = all(
            hasattr(server, name) for name in ("_sockets", "_serving", "_backlog", "_start_serving")
        )

    def start(self) -> None:
        """Accept in batches of ``batch`` from now on."""
        if self.works:
            server: Any = self._server
            server._backlog = self._batch  # the accept loop's batch size (and listen()'s argument)
            self._stop_accepting()
            self._start_accepting()

    def pause(self) -> None:
        if self.works and not self.paused:
            self.paused = True
            self._stop_accepting()

    def resume(self) -> None:
        if self.works and self.paused:
            self.paused = False
            self._start_accepting()

    def _stop_accepting(self) -> None:
        server: Any = self._server
        if server._sockets is None:
            return  # closed
        loop = asyncio.get_running_loop()
        for sock in server._sockets:
            loop.remove_reader(sock.fileno())
        server._serving = False

    def _start_accepting(self) -> None:
        server: Any = self._server
        if server._sockets is None:
            return  # closed
        server._start_serving()  # re-adds the accept reader; listen() gets the batch size...
        for sock in server._sockets:
            sock.listen(self._backlog)  # ...so give the kernel's queue its real size back
