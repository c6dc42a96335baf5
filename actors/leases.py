# The worker's resource leases (docs/PROTOCOL.md §6.5): acquired, renewed and released through the
# built-in ``lease.*`` calls; the facilitator grants and expires them. Thread-safe; blocking calls
# in the caller's thread.
# Invariants:
# - The worker's own view of a lease's end is conservative: while its session is open the lease
#   holds; otherwise it ends ``ttl`` after the later of its last grant or renewal and the last
#   frame from the facilitator (the facilitator expires it ``ttl`` after the holder's last frame
#   it received, which is no earlier). So in local mode a granted lease is used until then,
#   never longer.
# - A clean stop releases every lease still held, while the session is open.
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from jobrelay.protocol.calls import CallError, Lease, LeaseReleased

if TYPE_CHECKING:
    from jobrelay.actors.caller import Caller

__all__ = ["HeldLease", "LeaseKeeper"]


class HeldLease(msgspec.Struct, frozen=True):
    lease: Lease
    granted_at: float  # worker clock: when the grant or last renewal arrived


class LeaseKeeper:
    """The leases this worker holds.

    Args:
        caller: makes the ``lease.*`` calls.
        connection: the Connection proxy (its ``last_contact`` and ``connected_event``).
    """

    def __init__(self, caller: Caller, connection: Any, clock: Callable[[], float] = time.time) -> None:
        self._caller = caller
        self._connection = connection
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, HeldLease] = {}

    def acquire(self, resource: str, count: int = 1, ttl: float = 30.0, timeout: float = 10.0) -> Lease:
        """Ask the facilitator for ``count`` of ``resource`` for ``ttl`` seconds.

        Raises:
            CallRejected: ``lease_unavailable`` (not enough free), ``invalid_params``…
            CallError: CallTimeout, ConnectionLost, CircuitOpen, CallThrottled.
        """
        params = {"resource": resource, "count": count, "ttl": ttl}
        lease: Lease = self._caller.call("lease.acquire", params, timeout).result(timeout + 1)
        self._keep(lease)
        return lease

    def renew(self, lease_id: str, timeout: float = 10.0) -> Lease:
        """Extend a lease by its ttl from now.

        Raises:
            CallRejected: ``lease_unknown`` when it expired or was released (it is dropped here).
            CallError: as for ``acquire``.
        """
        try:
            lease: Lease = self._caller.call("lease.renew", {"lease_id": lease_id}, timeout).result(
                timeout + 1
            )
        except CallError as exc:
            if getattr(exc, "code", "") == "lease_unknown":
                with self._lock:
                    self._held.pop(lease_id, None)
            raise
        self._keep(lease)
        return lease

    def release(self, lease_id: str, timeout: float = 10.0) -> bool:
        """Give a lease back; True if the facilitator still had it.

        Raises:
            CallError: as for ``acquire`` (the lease is forgotten here either way).
        """
        with self._lock:
            self._held.pop(lease_id, None)
        answer: LeaseReleased = self._caller.call("lease.release", {"lease_id": lease_id}, timeout).result(
            timeout + 1
        )
        return answer.released

    def valid_until(self, lease_id: str) -> float | None:
        """When this worker stops counting on the lease (worker clock); None if not held."""
        with self._lock:
            held = self._held.get(lease_id)
        if held is None:
            return None
        if self._connection.connected_event().get(timeout=5.0).is_set():
            contact = self._clock()  # the facilitator keeps it while the session is open
        else:
            contact = float(self._connection.last_contact().get(timeout=5.0))
        return max(held.granted_at, contact) + held.lease.ttl

    def held(self) -> list[Lease]:
        """The leases still valid by this worker's view (expired ones are dropped)."""
        now = self._clock()
        with self._lock:
            ids = list(self._held)
        out = []
        for lease_id in ids:
            until = self.valid_until(lease_id)
            if until is None:
                continue
            if until <= now:
                with self._lock:
                    self._held.pop(lease_id, None)
                continue
            with self._lock:
                held = self._held.get(lease_id)
            if held is not None:
                out.append(held.lease)
        return out

    def release_all(self, timeout: float = 2.0) -> int:
        """Release every lease (a clean stop); skipped when not connected (they expire there)."""
        with self._lock:
            ids = list(self._held)
        if not ids:
            return 0
        try:
            connected = self._connection.connected_event().get(timeout=timeout).is_set()
        except Exception:  # the Connection is gone: nothing to tell the facilitator with
            connected = False
        released = 0
        for lease_id in ids:
            if not connected:
                break
            try:
                released += self.release(lease_id, timeout)
            except CallError as exc:
                logger.warning("lease {} not released at stop: {}", lease_id, exc)
        return released

    def _keep(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.lease_id] = HeldLease(lease, self._clock())
