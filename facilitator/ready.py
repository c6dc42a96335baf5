# The connections that may take jobs now (open, not draining), by worker and by the job kinds
# their hellos announced, so routing looks only at the workers of the kinds it routes.
# Invariants: not thread-safe (the hub calls it under its lock); a connection is in ``by_kind``
# for exactly the kinds of its hello (or in the any-kind set when it announced none) while it is
# in ``by_worker``, and never after a newer connection of its worker replaced it.
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from jobrelay.facilitator.placement import Candidates, Offer

if TYPE_CHECKING:
    from jobrelay.facilitator.connection import WorkerConnection

__all__ = ["ReadyWorkers"]


class ReadyWorkers:
    """Ready connections by worker id and by kind (see module invariants)."""

    def __init__(self) -> None:
        self.by_worker: dict[str, WorkerConnection] = {}
        self._by_kind: dict[str, dict[str, WorkerConnection]] = {}
        self._any_kind: dict[str, WorkerConnection] = {}

    def get(self, worker_id: str) -> WorkerConnection | None:
        return self.by_worker.get(worker_id)

    def add(self, conn: WorkerConnection) -> None:
        self.remove(self.by_worker.get(conn.worker_id))
        worker = conn.worker_id
        self.by_worker[worker] = conn
        hello = conn.session.hello
        kinds = hello.kinds if hello is not None else None
        if kinds is None:
            self._any_kind[worker] = conn
        for kind in kinds or ():
            self._by_kind.setdefault(kind, {})[worker] = conn

    def remove(self, conn: WorkerConnection | None) -> None:
        """Forget ``conn`` (nothing when it is not the ready connection of its worker)."""
        if conn is None or self.by_worker.get(conn.worker_id) is not conn:
            return
        worker = conn.worker_id
        del self.by_worker[worker]
        self._any_kind.pop(worker, None)
        hello = conn.session.hello
        for kind in (hello.kinds or ()) if hello is not None else ():
            takers = self._by_kind.get(kind)
            if takers is not None and takers.get(worker) is conn:
                del takers[worker]
                if not takers:
                    del self._by_kind[kind]

    def candidates(self, kinds: Iterable[str] | None, workers: Iterable[str] | None) -> Candidates:
        """The open ones that run any of ``kinds`` (None: every kind, and every open one as
        ``ready``), with the credit each granted; only those among ``workers`` if given.
        O(workers of those kinds)."""
        only = None if workers is None else list(workers)

        def offers(conns: Mapping[str, WorkerConnection]) -> list[Offer]:
            chosen = conns.values() if only is None else [c for w in only if (c := conns.get(w)) is not None]
            return [
                Offer(c.worker_id, hello.credit, hello.kind_credit)
                if (hello := c.session.hello)
                else Offer(c.worker_id, None)
                for c in chosen
                if c.is_open
            ]

        wanted = self._by_kind.keys() if kinds is None else kinds
        by_kind: dict[str, list[Offer]] = {}
        for kind in wanted:
            takers = self._by_kind.get(kind)
            found = offers(takers) if takers else []
            if found:
                by_kind[kind] = found
        # Pinned jobs are only waited for by routing passes (kinds None): a submit skips the cost.
        ready = frozenset(o.worker for o in offers(self.by_worker)) if kinds is None else frozenset()
        return Candidates(by_kind, offers(self._any_kind), ready)
