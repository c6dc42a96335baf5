# What the facilitator's connections share with the server that owns them: the Hub interface
# (config, store, keys, counters, attach/detach), named counters and the registry of auth nonces
# already used. Invariant: Counters and LockedNonceRegistry are safe to use from any thread.
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.session import SessionConfig

if TYPE_CHECKING:
    from jobrelay.facilitator.connection import WorkerConnection

__all__ = ["Counters", "Hub", "LockedNonceRegistry"]


class LockedNonceRegistry(NonceRegistry):
    """A NonceRegistry shared by all connection threads."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000) -> None:
        super().__init__(ttl, max_entries)
        self._lock = threading.Lock()

    def use(self, nonce: str, now: float) -> bool:
        with self._lock:
            return super().use(nonce, now)


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Hub(Protocol):
    """What a connection needs from the facilitator that owns it."""

    config: FacilitatorConfig
    session_config: SessionConfig
    store: FacilitatorStore
    authorized: Mapping[str, str]
    nonces: NonceRegistry
    counters: Counters
    stopping: threading.Event

    def attach(self, conn: WorkerConnection) -> None:
        """Register an authenticated connection (replacing an older one of the same worker)."""

    def detach(self, conn: WorkerConnection) -> None:
        """Forget a connection that ended."""

    def worker_ready(self, worker_id: str) -> None:
        """The worker can take jobs now (connected, or stopped draining)."""
