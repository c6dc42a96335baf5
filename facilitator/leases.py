# Resource leases the facilitator grants to workers (docs/PROTOCOL.md §6.5): a lease holds
# ``count`` units of a resource of fixed capacity for one worker. Plain and thread-safe (the
# ``lease.*`` handlers run in the calls executor); time is the caller's clock.
# Invariants:
# - The units leased of a resource never exceed its capacity.
# - A lease ends when released, or when it expires: ``ttl`` after the later of its grant/last
#   renewal and the holder's last sign of life (``last_seen``: now while its session is open —
#   a session ends on heartbeat loss — else its last frame). So a holder that lost its
#   connection or went silent loses its leases ``ttl`` after that. Expiry is applied before
#   every operation, so an expired lease is never renewed or counted.
# - Only the holder can renew or release its lease.
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import msgspec
from loguru import logger

from jobrelay.protocol.calls import CallCode, CallRejected, Lease

__all__ = ["LeaseTable"]


class _Held(msgspec.Struct):
    worker: str
    lease: Lease
    renewed_at: float


class LeaseTable:
    """Leases of the resources defined with ``define``.

    Args:
        last_seen: when a frame last came from a worker (None: never / unknown).
        grace: seconds added to every expiry, or a function of the holder giving them: the
            facilitator gives the heartbeat interval of the holder's session, so that a worker,
            which counts from the last frame it got from us (at most one interval after our last
            frame from it), never holds a lease longer than we do.
    """

    def __init__(
        self,
        last_seen: Callable[[str], float | None],
        clock: Callable[[], float] = time.time,
        grace: float | Callable[[str], float] = 0.0,
    ) -> None:
        self._last_seen = last_seen
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._capacity: dict[str, int] = {}
        self._held: dict[str, _Held] = {}
        self.expired = 0

    def define(self, resource: str, capacity: int) -> None:
        """Offer ``capacity`` units of ``resource`` (changing it leaves granted leases alone).

        Raises:
            ValueError: capacity is not an integer ≥ 0.
        """
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise ValueError(f"capacity of {resource!r} must be an integer ≥ 0, got {capacity!r}")
        with self._lock:
            self._capacity[resource] = capacity

    def acquire(self, worker: str, resource: str, count: int, ttl: float) -> Lease:
        """Raises:
        CallRejected: ``lease_unavailable`` when the resource is unknown or too few units are free.
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            capacity = self._capacity.get(resource)
            if capacity is None:
                raise CallRejected(CallCode.LEASE_UNAVAILABLE, f"no resource {resource!r}")
            used = sum(h.lease.count for h in self._held.values() if h.lease.resource == resource)
            if used + count > capacity:
                raise CallRejected(
                    CallCode.LEASE_UNAVAILABLE,
                    f"{resource}: {capacity - used} of {capacity} free, {count} asked",
                )
            lease = Lease(
                lease_id=secrets.token_hex(8), resource=resource, count=count, ttl=ttl, expires_at=now + ttl
            )
            self._held[lease.lease_id] = _Held(worker, lease, now)
        logger.info(
            "facilitator: lease {} granted worker={} {}×{} ttl={}s",
            lease.lease_id,
            worker,
            count,
            resource,
            ttl,
        )
        return lease

    def renew(self, worker: str, lease_id: str) -> Lease:
        """Raises:
        CallRejected: ``lease_unknown`` (expired, released, never granted, or another worker's).
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            held = self._held.get(lease_id)
            if held is None or held.worker != worker:
                raise CallRejected(CallCode.LEASE_UNKNOWN, f"no lease {lease_id!r} held by {worker}")
            held.lease = msgspec.structs.replace(held.lease, expires_at=now + held.lease.ttl)
            held.renewed_at = now
            return held.lease

    def release(self, worker: str, lease_id: str) -> bool:
        """True if the worker held it (now released); False if it had already ended."""
        with self._lock:
            self._expire(self._clock())
            held = self._held.get(lease_id)
            if held is None or held.worker != worker:
                return False
            del self._held[lease_id]
        logger.info("facilitator: lease {} released worker={}", lease_id, worker)
        return True

    def leases(self) -> list[tuple[str, Lease]]:
        """(holder, lease) of every lease in force, with its current expiry."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return [(h.worker, self._current(h)) for h in self._held.values()]

    def _current(self, held: _Held) -> Lease:
        return msgspec.structs.replace(held.lease, expires_at=self._expiry(held))

    def _expiry(self, held: _Held) -> float:
        seen = self._last_seen(held.worker) or 0.0
        grace = self._grace(held.worker) if callable(self._grace) else self._grace
        return max(held.renewed_at, seen) + held.lease.ttl + grace

    def _expire(self, now: float) -> None:
        for lease_id, held in list(self._held.items()):
            if self._expiry(held) <= now:
                del self._held[lease_id]
                self.expired += 1
                logger.info(
                    "facilitator: lease {} expired worker={} (no renewal or heartbeat for {}s)",
                    lease_id,
                    held.worker,
                    held.lease.ttl,
                )
