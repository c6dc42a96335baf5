"""Tools for testing your own handlers and peers without a network.

- :class:`MemoryNetwork` / :func:`memory_pair`: an in-memory transport a worker can use in place
  of WebSocket (``start_worker(config, handlers, transport_factory=network)``).
- :class:`TcpProxy`: a loopback TCP proxy that can cut, stall and block a real connection, for
  trying a worker against a flaky network (the demo uses it).

Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.testing.memory import MemoryEnd, MemoryNetwork, memory_pair
    from jobrelay.testing.proxy import TcpProxy

__all__ = [
    "MemoryEnd",
    "MemoryNetwork",
    "TcpProxy",
    "memory_pair",
]

_EXPORTS = {
    "MemoryEnd": "jobrelay.testing.memory",
    "MemoryNetwork": "jobrelay.testing.memory",
    "TcpProxy": "jobrelay.testing.proxy",
    "memory_pair": "jobrelay.testing.memory",
}
lazy_exports(globals(), _EXPORTS)
