"""Tools for testing your own handlers and peers without a network (see docs/TESTING.md).

- :class:`MemoryFacilitator`: a facilitator in your test's process that speaks the real protocol
  over an in-memory transport: submit jobs, cancel them, wait for and read their statuses
  (``start_worker(config, handlers, transport_factory=facilitator.transport_factory)``).
- :class:`MemoryStore`: the plain-Python, in-memory stream state it (and the protocol tests) keep.
- :class:`MemoryNetwork` / :func:`memory_pair`: the in-memory transport itself, for driving the
  other end of a worker's connection by hand.
- :class:`TcpProxy`: a loopback TCP proxy that can cut, stall and block a real connection, for
  trying a worker against a flaky network (the demo uses it).

Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.testing.facilitator import MemoryFacilitator
    from jobrelay.testing.memory import MemoryEnd, MemoryNetwork, memory_pair
    from jobrelay.testing.proxy import TcpProxy
    from jobrelay.testing.store import MemoryStore

__all__ = [
    "MemoryEnd",
    "MemoryFacilitator",
    "MemoryNetwork",
    "MemoryStore",
    "TcpProxy",
    "memory_pair",
]

_EXPORTS = {
    "MemoryEnd": "jobrelay.testing.memory",
    "MemoryFacilitator": "jobrelay.testing.facilitator",
    "MemoryNetwork": "jobrelay.testing.memory",
    "MemoryStore": "jobrelay.testing.store",
    "TcpProxy": "jobrelay.testing.proxy",
    "memory_pair": "jobrelay.testing.memory",
}
lazy_exports(globals(), _EXPORTS)
