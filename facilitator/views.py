# What the facilitator's public API returns: read-only views of jobs, workers and counters.
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from jobrelay.facilitator.store_ops import MACHINE_SPECS, WorkerFacts
from jobrelay.storage.ledger import JobRecord, StatusEntry

__all__ = ["FacilitatorStats", "JobView", "Live", "WorkerView", "worker_views"]


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the facilitator knows it.

    Attributes:
        record: The ledger record (``record.peer`` is the worker it was routed to, "" if queued).
        history: Every recorded status, oldest first.
        payload: The payload given to submit().
    """

    record: JobRecord
    history: list[StatusEntry]
    payload: Any = None

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def status(self) -> str | None:
        return self.record.status

    @property
    def worker(self) -> str:
        return self.record.peer


class WorkerView(msgspec.Struct, frozen=True, kw_only=True):
    """A worker as the facilitator knows it.

    Attributes:
        worker_id: The worker's id.
        connected: An authenticated session is open now.
        draining: Its last heartbeat said it is draining (no new jobs are routed to it).
        last_contact: When a frame last arrived from it (seconds since the epoch), if ever.
        outbox_depth: Job requests/cancels stored for it and not yet acknowledged.
        outstanding_jobs: Jobs routed to it without a terminal status.
        specs: Its latest machine specs, if it sent any.
        last_event: The name of its latest worker event ("" if none).
        in_epoch: The epoch of its stream we accept from; in_hwm: our high-water mark there.
    """

    worker_id: str
    connected: bool
    draining: bool
    last_contact: float | None
    outbox_depth: int
    outstanding_jobs: int
    specs: dict[str, Any] | None = None
    last_event: str = ""
    in_epoch: str = ""
    in_hwm: int = 0


class FacilitatorStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since start (see docs/FACILITATOR.md)."""

    frames_in: int = 0
    frames_out: int = 0
    data_accepted: int = 0
    duplicates_dropped: int = 0
    new_streams: int = 0
    epoch_restarts: int = 0
    refused_updates: int = 0
    auth_failures: int = 0
    heartbeat_timeouts: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    connections_replaced: int = 0
    jobs_submitted: int = 0
    jobs_released: int = 0  # handed back by draining workers and queued again
    jobs_no_worker: int = 0  # queued past their start deadline: failed no_worker
    refused_capacity: int = 0
    refused_connections: int = 0
    refused_unauthenticated: int = 0
    refused_per_address: int = 0
    accept_errors: int = 0
    handshakes_abandoned: int = 0
    connected_workers: int = 0
    store_commits: int = 0
    store_operations: int = 0


class Live(NamedTuple):
    """What the connection of a connected worker knows now."""

    connected: bool
    draining: bool
    last_contact: float


def worker_views(facts: WorkerFacts, authorized: Iterable[str], live: Mapping[str, Live]) -> list[WorkerView]:
    """Every worker that is authorized, connected or has stored state, by id."""
    records = {r.worker_id: r for r in facts.records}
    outboxes = {o.stream: o for o in facts.outboxes}
    inboxes = {i.stream: i for i in facts.inboxes}
    ids = sorted(set(authorized) | set(live) | set(records) | set(outboxes) | set(inboxes))
    views: list[WorkerView] = []
    for worker_id in ids:
        conn = live.get(worker_id)
        record = records.get(worker_id)
        outbox = outboxes.get(worker_id)
        inbox = inboxes.get(worker_id)
        specs = None
        if record is not None and record.specs is not None:
            specs = MACHINE_SPECS.decode(record.specs).specs
        last = conn.last_contact if conn is not None else (record.last_seen if record else None)
        views.append(
            WorkerView(
                worker_id=worker_id,
                connected=conn is not None and conn.connected,
                draining=conn is not None and conn.draining,
                last_contact=last,
                outbox_depth=outbox.depth_rows if outbox else 0,
                outstanding_jobs=facts.outstanding.get(worker_id, 0),
                specs=specs,
                last_event=record.last_event if record else "",
                in_epoch=inbox.epoch if inbox else "",
                in_hwm=inbox.hwm if inbox else 0,
            )
        )
    return views
