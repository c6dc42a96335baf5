# The workers' port: the `websockets` asyncio server the facilitator listens with (its connections
# gated at accept time, see admission.py), and what the loop does when accept() itself fails.
from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.server import Server, serve

from jobrelay.facilitator.admission import gated_connection
from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.connection import CLOSE_TIMEOUT
from jobrelay.facilitator.hub import ConnectionHub
from jobrelay.protocol.errors import ConfigError

__all__ = ["listen", "on_loop_error", "shut_down"]


async def listen(config: FacilitatorConfig, hub: ConnectionHub) -> Server:
    """Start serving workers on ``config.host``/``config.port`` (on the running loop).

    Raises:
        ConfigError: The address cannot be bound.
    """
    # websockets logs an open and a close line per connection at INFO: with thousands of
    # workers that drowns the facilitator's own (one line per worker connected/disconnected).
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    try:
        return await serve(
            hub.handle,
            config.host,
            config.port,
            compression=None,
            max_size=config.max_frame_bytes,
            ping_interval=None,
            open_timeout=config.handshake_timeout,
            close_timeout=CLOSE_TIMEOUT,
            ssl=config.tls_context(),
            backlog=config.listen_backlog,
            create_connection=gated_connection(hub.gate, hub.come_back),
        )
    except OSError as exc:
        raise ConfigError(
            f"FacilitatorConfig.port: cannot listen on {config.host}:{config.port} ({exc})"
        ) from exc


def on_loop_error(hub: ConnectionHub, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler. asyncio pauses the listener for a second when accept()
    fails (out of descriptors) and then accepts again: note it so /healthz says so, and log it
    once a minute (the hub does); anything else goes to asyncio's default handler."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        hub.accept_failed(context.get("exception"))
        return
    loop.default_exception_handler(context)


async def shut_down(server: Server | None, hub: ConnectionHub) -> None:
    """Stop accepting, then close every worker's connection (1001) and wait for the server."""
    if server is not None:
        server.close(close_connections=False)  # stop accepting; ours close below, with 1001
    await hub.close_all("facilitator shutting down")
    if server is not None:
        await server.wait_closed()
