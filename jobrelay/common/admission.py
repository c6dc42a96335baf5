# Which connections a server takes, decided the moment the TCP connection is accepted, before any
# HTTP or WebSocket work is spent on it (the facilitator's workers' port and every HTTP server).
# Invariants:
# - At most ``max_connections`` sockets are held (authenticated or not, and refused ones whose
#   short answer drains), a number below what the open-file limit allows: the listener never
#   runs out of descriptors.
# - At most ``max_unauthenticated`` of them have not yet proved a worker key, and at most
#   ``per_address`` of those come from one remote address: one anonymous client cannot take the
#   room legitimate workers need, and a reconnect storm is admitted at the pace handshakes are
#   finished instead of piling up connections that time out (and retry, and time out again).
# - A connection over a limit is reset at once (no handler task, no HTTP parsing), counted, and
#   logged once per remote address per minute; a worker backs off and tries again.
# - A gate is used from one event loop's thread only.
from __future__ import annotations

import time
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
        self.open = 0
        self.unauthenticated = 0
        self._by_address: dict[str, int] = {}
        self._log = RefusalLog()
        self.last_refusal = ""  # the reason of the latest refusal (for how it is answered)
        self.answering = 0  # refused sockets held while a short answer drains (may_answer)

    def admit(self, address: str) -> bool:
        """Take a new connection from ``address`` (counted as unauthenticated), or refuse it."""
        if self.open + self.answering >= self.max_connections:
            return self._refuse(address, "connections", f"{self.open} open, the most this process holds")
        if self.unauthenticated >= self.max_unauthenticated:
            return self._refuse(
                address,
                "unauthenticated",
                f"{self.unauthenticated} connections not yet authenticated (max_unauthenticated)",
            )
        from_address = self._by_address.get(address, 0)
        if from_address >= self.per_address:
            return self._refuse(
                address,
                "per_address",
                f"{from_address} connections from it ({self.per_address_setting})",
            )
        self.open += 1
        self.unauthenticated += 1
        self._by_address[address] = from_address + 1
        return True

    def may_answer(self) -> bool:
        """Room to hold one more refused socket while its short answer (a 503) drains: such
        sockets count against ``max_connections`` like admitted ones, so a flood that never reads
        gets resets once the sockets held reach it, never more descriptors than that. Pair a True
        with ``answered()``."""
        if self.open + self.answering >= self.max_connections:
            return False
        self.answering += 1
        return True

    def answered(self) -> None:
        """A socket taken by ``may_answer`` is closed."""
        self.answering -= 1

    def authenticated(self, address: str) -> None:
        """A connection from ``address`` proved its worker key: it no longer counts as
        unauthenticated."""
        self.unauthenticated -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def closed(self, address: str, authenticated: bool) -> None:
        """An admitted connection from ``address`` is gone."""
        self.open -= 1
        if not authenticated:
            self.authenticated(address)  # drop it from the unauthenticated counts

    def _refuse(self, address: str, reason: str, detail: str) -> bool:
        self.last_refusal = reason
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
