# What the facilitator's store thread runs: its in-memory state beside the database, the result
# types, and the operations that touch several tables at once (submit, accept, status checks).
# Invariants:
# - Only the store thread calls these, inside a transaction and an operation's savepoint.
# - What StoreState keeps in memory (Outbox objects, outstanding jobs per worker) follows the
#   database through rollbacks: an operation's changes are undone when its savepoint rolls back,
#   the group's when its transaction does.
# - A job's request is appended to its worker's outbox in the same transaction that records and
#   routes it; a status update is recorded only if the job was routed to the worker sending it.
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import msgspec
from loguru import logger

from jobrelay.facilitator.placement import Candidates, Placer
from jobrelay.facilitator.retries import Retry, decide_retries, no_more_attempts
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.messages import (
    FacilitatorBody,
    JobCancel,
    JobRequest,
    JobStatus,
    JobStatusUpdate,
    MachineSpecs,
    WorkerBody,
    WorkerEvent,
)
from jobrelay.storage import routing
from jobrelay.storage.database import Database
from jobrelay.storage.inbox import AcceptResult, Inbox, InboxState
from jobrelay.storage.ledger import JobLedger, StatusResult, StatusUpdate
from jobrelay.storage.outbox import Outbox, OutboxStats

__all__ = [
    "ENCODER",
    "FACILITATOR_BODY",
    "JOB_REQUEST",
    "MACHINE_SPECS",
    "AcceptOutcome",
    "Assignment",
    "Refusal",
    "StoreState",
    "WorkerFacts",
    "accept_batch",
    "cancel_job",
    "release_jobs",
    "submit_jobs",
]

ENCODER: Final = msgspec.json.Encoder()
FACILITATOR_BODY: Final = msgspec.json.Decoder(FacilitatorBody)
JOB_REQUEST: Final = msgspec.json.Decoder(JobRequest)
MACHINE_SPECS: Final = msgspec.json.Decoder(MachineSpecs)


class Refusal(NamedTuple):
    """A status update that was not recorded. ``code`` is set when the worker is told."""

    job_id: str
    code: ErrorCode | None
    detail: str


class AcceptOutcome(NamedTuple):
    """What one received batch did.

    Attributes:
        upto: Highest seq now durable here (accepted now or before); 0 when none.
        accepted: Messages stored for the first time.
        duplicates: Messages the store already had (dropped).
        refused: Status updates not recorded (not this worker's job, or after a terminal one).
        gap: The store saw a seq gap (its mark disagrees with the session's): close the session.
        retries: Jobs whose next attempt the hub releases after its delay.
        released: Jobs the worker handed back, queued again here (route them: request a dispatch).
        recorded: The status updates recorded, in order, as recorded (a retried failure as its
            ``retrying``): what subscribers are told.
    """

    upto: int
    accepted: int
    duplicates: int
    refused: list[Refusal]
    gap: bool
    retries: Sequence[Retry] = ()
    released: int = 0
    recorded: Sequence[JobStatusUpdate] = ()


class Assignment(NamedTuple):
    """Where a submitted job went: ``worker`` "" (and ``seq`` 0) while it is queued."""

    job_id: str
    worker: str
    seq: int


class WorkerFacts(NamedTuple):
    """Stored facts of every known worker, for ``Facilitator.workers()``."""

    records: list[routing.WorkerRecord]
    outboxes: list[OutboxStats]
    inboxes: list[InboxState]
    outstanding: dict[str, int]


@dataclass
class _Undo:
    """In-memory changes made since a savepoint, to undo if it rolls back."""

    created: list[str] = field(default_factory=list)  # outbox streams opened (maybe created)
    counts: dict[str, int | None] = field(default_factory=dict)  # outstanding before (None: absent)
    kind_counts: dict[tuple[str, str], int | None] = field(default_factory=dict)  # the same, by kind


@dataclass
class StoreState:
    """Everything the store thread owns.

    Change ``outstanding`` (per worker) and ``outstanding_kind`` (per worker and kind) only
    through ``add_outstanding`` and get outboxes only through ``outbox``: all are journaled so
    ``rollback_op``/``rollback_group`` can undo them.
    """

    db: Database
    inbox: Inbox
    ledger: JobLedger
    outstanding: dict[str, int]
    outstanding_kind: dict[tuple[str, str], int] = field(default_factory=dict)
    outboxes: dict[str, Outbox] = field(default_factory=dict)
    # (deadline, job id) of queued jobs that must start by then (a heap; see queued.py)
    start_by: list[tuple[float, str]] = field(default_factory=list)
    op_undo: _Undo = field(default_factory=_Undo)
    group_undo: _Undo = field(default_factory=_Undo)

    def outbox(self, worker_id: str) -> Outbox:
        box = self.outboxes.get(worker_id)
        if box is None:
            # Opening may create the stream row in the current savepoint: if that rolls back,
            # the object must go too (it would point at a row that no longer exists).
            box = self.outboxes[worker_id] = Outbox(self.db, stream=worker_id)
            self.op_undo.created.append(worker_id)
        return box

    def add_outstanding(self, worker_id: str, delta: int, kind: str) -> None:
        self.op_undo.counts.setdefault(worker_id, self.outstanding.get(worker_id))
        self.outstanding[worker_id] = max(0, self.outstanding.get(worker_id, 0) + delta)
        key = (worker_id, kind)
        self.op_undo.kind_counts.setdefault(key, self.outstanding_kind.get(key))
        self.outstanding_kind[key] = max(0, self.outstanding_kind.get(key, 0) + delta)

    def begin_group(self) -> None:
        self.group_undo = _Undo()
        self.op_undo = _Undo()

    def commit_op(self) -> None:
        """The operation's savepoint was released: its changes belong to the group now."""
        op, self.op_undo = self.op_undo, _Undo()
        self.group_undo.created.extend(op.created)
        for worker_id, before in op.counts.items():
            self.group_undo.counts.setdefault(worker_id, before)
        for key, was in op.kind_counts.items():
            self.group_undo.kind_counts.setdefault(key, was)

    def rollback_op(self) -> None:
        self._undo(self.op_undo)
        self.op_undo = _Undo()

    def rollback_group(self) -> None:
        self.rollback_op()
        self._undo(self.group_undo)
        self.group_undo = _Undo()

    def _undo(self, undo: _Undo) -> None:
        for worker_id in undo.created:
            self.outboxes.pop(worker_id, None)
        for worker_id, before in undo.counts.items():
            if before is None:
                self.outstanding.pop(worker_id, None)
            else:
                self.outstanding[worker_id] = before
        for key, was in undo.kind_counts.items():
            if was is None:
                self.outstanding_kind.pop(key, None)
            else:
                self.outstanding_kind[key] = was


def submit_jobs(
    s: StoreState,
    requests: Sequence[JobRequest],
    worker_id: str | None,
    candidates: Candidates,
    start_by: float | None = None,
) -> list[Assignment]:
    """Record ``requests`` and route each: to ``worker_id`` if given, else as ``Placer`` picks
    (placement.py), else it stays queued, until ``start_by`` if given (queued.py ends it then)."""
    out: list[Assignment] = []
    routed: dict[str, list[tuple[str, bytes]]] = {}
    placer = Placer(s, candidates)
    for request in requests:
        existing = s.ledger.get(request.job_id)
        if existing is not None:
            out.append(Assignment(request.job_id, existing.peer, 0))
            continue
        worker = worker_id or placer.pick(request.kind)
        payload = ENCODER.encode(request)
        s.ledger.record_request(request.job_id, request.kind, payload, peer=worker, pinned=worker_id or "")
        if worker:
            if worker_id:
                s.add_outstanding(worker, 1, request.kind)  # the placer counted its own picks
            routed.setdefault(worker, []).append((request.job_id, payload))
        elif start_by is not None:
            heapq.heappush(s.start_by, (start_by, request.job_id))
        out.append(Assignment(request.job_id, worker, 0))
    seqs: dict[str, int] = {}
    for worker, jobs in routed.items():
        for (job_id, _), seq in zip(
            jobs, s.outbox(worker).append_many([("job_request", p) for _, p in jobs]), strict=True
        ):
            seqs[job_id] = seq
    return [a._replace(seq=seqs.get(a.job_id, 0)) if a.worker else a for a in out]


def accept_batch(
    s: StoreState, worker_id: str, epoch: str, items: Sequence[tuple[int, WorkerBody]]
) -> AcceptOutcome:
    if s.inbox.state(worker_id)[0] != epoch:
        logger.warning("facilitator: dropping a late batch of worker={} from old epoch {}", worker_id, epoch)
        return AcceptOutcome(upto=0, accepted=0, duplicates=0, refused=[], gap=True)
    # Applied below in this same transaction: only the hwm needs to move (no inbox rows).
    results = s.inbox.advance(worker_id, [seq for seq, _ in items])
    upto = duplicates = 0
    gap = False
    accepted: list[WorkerBody] = []
    for (seq, body), result in zip(items, results, strict=True):
        if result is AcceptResult.ACCEPTED:
            accepted.append(body)
            upto = seq
        elif result is AcceptResult.DUPLICATE:
            duplicates += 1
            upto = max(upto, seq)
        else:
            gap = True
            break
    refused: list[Refusal] = []
    retries: list[Retry] = []
    released = 0
    recorded: list[JobStatusUpdate] = []
    statuses = [b for b in accepted if isinstance(b, JobStatusUpdate)]
    if statuses:
        decided = decide_retries(s, worker_id, statuses)
        retries = decided.retries
        refused = [Refusal(job_id, None, "retrying: the facilitator's status") for job_id in decided.refused]
        refused += _record_statuses(s, worker_id, decided.updates, recorded)
        handed_back = [u for u in decided.updates if u.status is JobStatus.RELEASED]
        if handed_back:
            released = len(release_jobs(s, worker_id, handed_back))
    specs = [b for b in accepted if isinstance(b, MachineSpecs)]
    if specs:
        routing.record_specs(s.db, worker_id, ENCODER.encode(specs[-1]), specs[-1].at)
    events = [(b.event, b.detail, b.at) for b in accepted if isinstance(b, WorkerEvent)]
    if events:
        routing.record_worker_events(s.db, worker_id, events)
    return AcceptOutcome(upto, len(accepted), duplicates, refused, gap, retries, released, recorded)


def _record_statuses(
    s: StoreState, worker_id: str, statuses: list[JobStatusUpdate], recorded: list[JobStatusUpdate]
) -> list[Refusal]:
    """Record ``statuses`` of the jobs that are ``worker_id``'s (appended to ``recorded``, in
    order); the refusals of the others."""
    owners = routing.job_owners(s.db, [u.job_id for u in statuses])
    refused: list[Refusal] = []
    mine: list[JobStatusUpdate] = []
    for update in statuses:
        owner = owners.get(update.job_id)
        if owner is not None and owner.peer == worker_id:
            mine.append(update)
        elif owner is None:
            refused.append(Refusal(update.job_id, ErrorCode.JOB_NOT_YOURS, "unknown job"))
        else:
            refused.append(Refusal(update.job_id, ErrorCode.JOB_NOT_YOURS, "job was not sent to this worker"))
    if not mine:
        return refused
    results = s.ledger.record_statuses(
        [StatusUpdate(u.job_id, u.status.value, u.detail, u.progress, u.at) for u in mine]
    )
    for update, result in zip(mine, results, strict=True):
        if result is StatusResult.RECORDED:
            recorded.append(update)
            if update.status.terminal:
                s.add_outstanding(worker_id, -1, owners[update.job_id].kind)
        else:
            refused.append(Refusal(update.job_id, None, f"{update.status.value}: {result.value}"))
    return refused


def release_jobs(s: StoreState, worker_id: str, updates: Sequence[JobStatusUpdate]) -> list[str]:
    """Queue again the jobs a draining worker handed back (their ``released`` status is recorded);
    returns their ids. A job whose cancel is still in that worker's outbox is cancelled here
    instead: the worker will not see that cancel as its own any more, and queued again the job
    would run elsewhere although its cancel was accepted.
    """
    ids = {u.job_id for u in updates}
    cancels = _pending_cancels(s, worker_id, ids) if ids else {}
    queued: list[str] = []
    for update in updates:
        job_id = update.job_id
        record = s.ledger.get(job_id)
        if record is None or record.status != JobStatus.RELEASED.value:
            continue  # its status was refused above (not this worker's job, or it had ended)
        if not routing.release_job(s.db, job_id, worker_id):
            continue  # not this worker's (refused above) or released before: nothing to undo
        s.add_outstanding(worker_id, -1, record.kind)
        if job_id in cancels:
            s.ledger.record_status(job_id, JobStatus.CANCELLED.value, detail=cancels[job_id] or "cancelled")
            continue
        queued.append(job_id)
    return queued


def _pending_cancels(s: StoreState, worker_id: str, job_ids: set[str]) -> dict[str, str]:
    """``job_id → reason`` of the cancels for ``job_ids`` not yet acknowledged by ``worker_id``."""
    found: dict[str, str] = {}
    for row in s.outbox(worker_id).pending():
        if row.kind == "job_cancel":
            body = FACILITATOR_BODY.decode(row.payload)
            if isinstance(body, JobCancel) and body.job_id in job_ids:
                found[body.job_id] = body.reason
    return found


def cancel_job(s: StoreState, job_id: str, reason: str) -> tuple[bool, str, int]:
    """``(done, worker, seq)``: a queued job (or one between attempts) is cancelled in the ledger
    at once; a routed one gets a ``job_cancel`` in its worker's stream, and no further attempt."""
    record = s.ledger.get(job_id)
    if record is None:
        return False, "", 0
    if record.status is not None and JobStatus(record.status).terminal:
        return False, record.peer, 0
    if not record.peer or record.status == JobStatus.RETRYING.value:  # queued, or between attempts
        s.ledger.record_status(job_id, JobStatus.CANCELLED.value, detail=reason or "cancelled")
        return True, "", 0
    no_more_attempts(s, job_id)
    body = JobCancel(job_id=job_id, reason=reason)
    return True, record.peer, s.outbox(record.peer).append("job_cancel", ENCODER.encode(body))
