# What the store thread does with jobs that wait for a worker: route them when workers with
# credit for their kind appear, and end those whose start deadline passed.
# Invariants:
# - Queued jobs are routed oldest first; a kind no candidate can take any more is left out of the
#   following reads, so one pass costs O(jobs routed + kinds), not O(queued) per freed slot.
# - A job pinned to a worker that waits (its retry, or a hand-back when that worker drained) goes
#   only to that worker, when it is ready again; other workers never see it.
# - A job still queued when its start deadline passes ends ``failed`` with detail ``no_worker``
#   (exactly once: the ledger keeps one terminal status). Deadlines live in memory: a restarted
#   facilitator applies its default (``schedule_to_start_timeout``) to the jobs it finds queued.
from __future__ import annotations

import heapq
from typing import Final

from jobrelay.facilitator.placement import Candidates, Placer
from jobrelay.facilitator.store_ops import Assignment, StoreState
from jobrelay.protocol.messages import JobStatus
from jobrelay.storage import routing
from jobrelay.storage.ledger import StatusResult, StatusUpdate

__all__ = ["NO_WORKER", "dispatch_queued", "expire_queued"]

NO_WORKER: Final = "no_worker"
_PAGE: Final = 500  # queued jobs read per query


def dispatch_queued(s: StoreState, candidates: Candidates) -> tuple[list[Assignment], bool]:
    """Route queued jobs, oldest first, to ``candidates`` while they have credit. A kind no
    candidate can take any more is left out of the following reads.

    Returns:
        The assignments, and whether jobs are still queued.
    """
    out, pinned_left = _dispatch_pinned(s, candidates)
    if not candidates.by_kind and not candidates.any_kind:
        return out, pinned_left or bool(routing.queued_jobs(s.db, 1))
    placer = Placer(s, candidates)
    only = None if candidates.any_kind else sorted(candidates.by_kind)
    blocked: set[str] = set()
    while True:
        queued = routing.queued_jobs(s.db, _PAGE, kinds=only, excluding=sorted(blocked))
        if not queued:
            left = bool(blocked) or (only is not None and bool(routing.queued_jobs(s.db, 1)))
            return out, left or pinned_left
        for job in queued:
            if job.kind in blocked:
                continue
            worker = placer.pick(job.kind)
            if not worker:
                blocked.add(job.kind)
                continue
            routing.assign_job(s.db, job.job_id, worker)
            out.append(Assignment(job.job_id, worker, s.outbox(worker).append("job_request", job.payload)))
        if only is not None and blocked.issuperset(only):
            return out, True


def _dispatch_pinned(s: StoreState, candidates: Candidates) -> tuple[list[Assignment], bool]:
    """Jobs pinned to a worker (``submit --worker``) whose retry or hand-back waits for it go
    back to it once it is ready, whatever their kind and its credit (the operator's choice).

    Returns:
        The assignments, and whether pinned jobs still wait for workers that are not ready.
    """
    out: list[Assignment] = []
    left = False
    for worker, job in routing.queued_pinned(s.db):
        if worker not in candidates.ready:
            left = True
            continue
        routing.assign_job(s.db, job.job_id, worker)
        s.add_outstanding(worker, 1, job.kind)
        out.append(Assignment(job.job_id, worker, s.outbox(worker).append("job_request", job.payload)))
    return out, left


def expire_queued(s: StoreState, now: float) -> list[str]:
    """End the queued jobs whose start deadline passed: ``failed`` with detail ``no_worker``.
    Returns their ids."""
    expired: list[str] = []
    heap = s.start_by
    while heap and heap[0][0] <= now:
        _, job_id = heapq.heappop(heap)
        record = s.ledger.get(job_id)
        if record is None or record.peer or (record.status is not None and JobStatus(record.status).terminal):
            continue  # routed (or ended) in time
        update = StatusUpdate(job_id, JobStatus.FAILED.value, NO_WORKER, None, now)
        if s.ledger.record_statuses([update]) == [StatusResult.RECORDED]:
            expired.append(job_id)
    return expired
