# Where a job may go: the workers that run its kind and have credit left (the store thread picks
# with ``Placer``; the hub builds ``Candidates`` from the connections' hellos).
# Invariants:
# - A job is routed only to a worker that announced its kind (or announced no kinds: any kind)
#   and whose unfinished jobs (``StoreState.outstanding``) stay within the credit it granted in
#   its hello, and, for a kind with its own credit (hello ``kind_credit``), whose unfinished jobs
#   of that kind (``StoreState.outstanding_kind``) stay within it too; pinned jobs
#   (``submit --worker``) are the caller's choice and bypass every check.
# - Among the workers that may take a job, the one with the most credit left wins (ties: by id),
#   so a busy worker never holds jobs an idle one could start.
# - Cost: a routing pass builds one heap per kind it meets, over the workers of that kind only;
#   O(log workers) per job after that.
from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from jobrelay.facilitator.store_ops import StoreState

__all__ = ["Candidates", "Offer", "Placer"]

_UNLIMITED: Final = 1 << 40  # the credit of a worker that set no limit


class Offer(NamedTuple):
    """A connected, non-draining worker and the credit it granted (None: no limit), in all and
    for the kinds that have their own."""

    worker: str
    credit: int | None
    kind_credit: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Candidates:
    """The workers that may take jobs now: by kind, those that run any kind, and all of them (a
    job pinned to one of them goes to it whatever its kind and credit)."""

    by_kind: Mapping[str, Sequence[Offer]] = field(default_factory=dict)
    any_kind: Sequence[Offer] = ()
    ready: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.by_kind) or bool(self.any_kind) or bool(self.ready)


class Placer:
    """Picks, job after job, the worker with the most credit left among those running its kind.

    One heap per kind, built when that kind is first asked for. A worker of several kinds sits in
    several heaps: an entry is checked against the live count when it reaches the top (a stale
    one is put back with its true credit), so a pick never exceeds a worker's grant.
    """

    def __init__(self, s: StoreState, candidates: Candidates) -> None:
        self._s = s
        self._candidates = candidates
        self._heaps: dict[str, list[tuple[int, str, Offer]]] = {}

    def _free(self, offer: Offer, kind: str) -> int:
        limit = _UNLIMITED if offer.credit is None else offer.credit
        free = limit - self._s.outstanding.get(offer.worker, 0)
        own = offer.kind_credit.get(kind) if offer.kind_credit else None
        if own is not None:
            free = min(free, own - self._s.outstanding_kind.get((offer.worker, kind), 0))
        return free

    def pick(self, kind: str) -> str:
        """A worker for one job of ``kind``, now counted as one more unfinished job there; ""
        when no worker of that kind has credit left."""
        heap = self._heaps.get(kind)
        if heap is None:
            offers = [*self._candidates.by_kind.get(kind, ()), *self._candidates.any_kind]
            heap = self._heaps[kind] = [(-self._free(o, kind), o.worker, o) for o in offers]
            heapq.heapify(heap)
        while heap:
            neg_free, worker, offer = heap[0]
            free = self._free(offer, kind)
            if free <= 0:
                heapq.heappop(heap)
            elif free != -neg_free:
                heapq.heapreplace(heap, (-free, worker, offer))  # picked for another kind meanwhile
            else:
                heapq.heapreplace(heap, (-(free - 1), worker, offer))
                self._s.add_outstanding(worker, 1, kind)
                return worker
        return ""
