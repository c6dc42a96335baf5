# The facilitator's workers' port asks a ConnectionGate (jobrelay.common.admission) about every
# TCP connection the moment it is accepted: a `websockets` ServerConnection that is reset at once
# when refused (no handshake task, no HTTP parsing) and tells the gate when its peer proved a worker
# key and when it is gone. Runs on the facilitator's loop thread.
from __future__ import annotations

import asyncio
from typing import ClassVar, cast

from websockets.asyncio.connection import Connection

from jobrelay.common.admission import ConnectionGate
from jobrelay.facilitator.ws_connection import FrameConnection

__all__ = ["GatedConnection", "gated_connection"]


class GatedConnection(FrameConnection):
    """A `websockets` server connection that asks the gate first (``create_connection=``)."""

    gate: ClassVar[ConnectionGate]
    address = "?"
    admitted = False
    authenticated = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.gate.admit(address):
            # What connection_lost needs, without the handshake task ServerConnection starts.
            Connection.connection_made(self, transport)
            cast(asyncio.Transport, transport).abort()
            return
        self.address, self.admitted = address, True
        super().connection_made(transport)

    def mark_authenticated(self) -> None:
        """The peer proved its worker key (called once, by its WorkerConnection)."""
        if self.admitted and not self.authenticated:
            self.authenticated = True
            self.gate.authenticated(self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.closed(self.address, self.authenticated)
        super().connection_lost(exc)


def gated_connection(gate: ConnectionGate) -> type[GatedConnection]:
    """A GatedConnection class bound to ``gate`` (one per facilitator: tests run several)."""
    return type("GatedConnection", (GatedConnection,), {"gate": gate})
