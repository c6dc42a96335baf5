# Which connections a server takes, decided the moment the TCP connection is accepted, before any
# HTTP or WebSocket work is spent on it (the facilitator's workers' port and every HTTP server).
# Invariants:
# - At most ``max_connections`` sockets are held (authenticated or not), a number below what the
#   open-file limit allows: the listener never runs out of descriptors.
# - At most ``max_unauthenticated`` of them have not yet proved a worker key, and at most
#   ``per_address`` of those come from one remote address: one anonymous client cannot take the
#   room legitimate workers need, and a reconnect storm is admitted at the pace handshakes are
#   finished instead of piling up connections that time out (and retry, and time out again).
# - A connection over a limit is reset at once (no handler task, no HTTP parsing), counted, and
#   logged once per remote address per minute; a worker backs off and tries again.
# - A gate is used from one event loop's thread only.
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

from loguru import logger

__all__ = ["ConnectionGate", "RefusalLog"]

_LOG_EVERY: Final = 60.0  # one refusal line per remote address (and reason) per minute
_LOG_MEMORY: Final = 10_000  # addresses remembered for that; a flood of sources only logs more


class RefusalLog:
    """One log line per (remote address, reason) per minute; the refusals themselves are counted
    by the caller. ``clock`` is injected for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def should_log(self, address: str, reason: str) -> bool:
        now = self._clock()
        key = (address, reason)
        if now - self._last.get(key, -_LOG_EVERY) < _LOG_EVERY:
            return False
        if len(self._last) >= _LOG_MEMORY:
            self._last.clear()
        self._last[key] = now
        return True


class ConnectionGate:
    """Counts the sockets held on the workers' port and admits or refuses new ones (see the
    module invariants)."""

    def __init__(
        self,
        max_connections: int,
        max_unauthenticated: int,
        per_address: int,
        count: Callable[[str], object],
        server: str = "facilitator",
        per_address_setting: str = "max_unauthenticated_per_address",
    ) -> None:
        """``count(name)`` is called with ``refused_<reason>`` for each refusal; ``server``
        starts its log lines, which name ``per_address_setting`` for that refusal."""
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.per_address = per_address
        self.count = count
        self.server = server
        self.per_address_setting = per_address_setting
        # Called when the unauthenticated connections reach their cap, and when there is room
        # again (resume_margin below it): the server stops and restarts taking connections off
        # its listen queue, where they wait at no cost instead of being reset.
        self.on_full: Callable[[], object] | None = None
        self.on_room: Callable[[], object] | None = None
        self.resume_margin = 1
        self.max_waiting = 0  # connections that may wait for room instead of being reset
        self.open = 0
        self.unauthenticated = 0
        self._by_address: dict[str, int] = {}
        self._waiting: deque[tuple[str, Callable[[], object]]] = deque()
        self._log = RefusalLog()

    @property
    def waiting(self) -> int:
        """Connections accepted while there was no room, waiting (unread) for their turn."""
        return len(self._waiting)

    def admit(self, address: str, start: Callable[[], object] | None = None) -> bool:
        """Take a new connection from ``address`` (counted as unauthenticated), or refuse it.
        With ``start``, a connection that finds no room among the unauthenticated waits (in
        order, at most ``max_waiting``); ``start()`` is called when it is taken (at once when
        there is room)."""
        if self.open >= self.max_connections:
            return self._refuse(address, "connections", f"{self.open} open, the most this process holds")
        from_address = self._by_address.get(address, 0)
        if from_address >= self.per_address:
            return self._refuse(
                address,
                "per_address",
                f"{from_address} connections from it ({self.per_address_setting})",
            )
        if self.unauthenticated >= self.max_unauthenticated or self._waiting:
            if start is None or len(self._waiting) >= self.max_waiting:
                return self._refuse(
                    address,
                    "unauthenticated",
                    f"{self.unauthenticated} connections not yet authenticated (max_unauthenticated)",
                )
            self.open += 1  # it holds a descriptor while it waits
            self._waiting.append((address, start))
            return True
        self.open += 1
        self._take(address)
        if start is not None:
            start()
        return True

    def _take(self, address: str) -> None:
        self.unauthenticated += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        if self.unauthenticated >= self.max_unauthenticated and self.on_full is not None:
            self.on_full()

    def _let_waiting_in(self) -> None:
        while self._waiting and self.unauthenticated < self.max_unauthenticated:
            address, start = self._waiting.popleft()
            self._take(address)
            start()

    def authenticated(self, address: str) -> None:
        """A connection from ``address`` proved its worker key: it no longer counts as
        unauthenticated."""
        self.unauthenticated -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]
        self._let_waiting_in()
        if self.on_room is not None and not self._waiting and self.unauthenticated <= self._resume_at():
            self.on_room()

    def closed(self, address: str, authenticated: bool, start: Callable[[], object] | None = None) -> None:
        """An admitted connection from ``address`` is gone (``start``: the one it waited with,
        if it never got its turn)."""
        self.open -= 1
        if start is not None:
            self._waiting.remove((address, start))
        elif not authenticated:
            self.authenticated(address)  # drop it from the unauthenticated counts

    def _resume_at(self) -> int:
        cap = self.max_unauthenticated
        return cap - min(self.resume_margin, max(1, cap // 2))

    def _refuse(self, address: str, reason: str, detail: str) -> bool:
        self.count(f"refused_{reason}")
        if self._log.should_log(address, reason):
            logger.warning(
                "{}: refusing connections from {} ({}); counted in refused_{}, logged once a minute",
                self.server,
                address,
                detail,
                reason,
            )
        return False
