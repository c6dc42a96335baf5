# The facilitator's single database thread. It owns the Database (SQLite connections are
# thread-bound) and runs every operation queued by connection threads and API callers.
# Invariants:
# - Exactly one thread touches the Database: the store thread, from open to close.
# - Group commit: all operations waiting in the queue run in ONE transaction, each in its own
#   savepoint (a failing operation is rolled back alone). Results are released only after the
#   COMMIT returned, so a caller that acknowledges after result() never acks anything volatile.
# - What the thread keeps in memory (Outbox objects, outstanding jobs per worker) follows the
#   database through rollbacks: an operation's changes are undone when its savepoint rolls back,
#   the group's when its transaction does.
# - A job's request is appended to its worker's outbox in the same transaction that records and
#   routes it; a status update is recorded only if the job was routed to the worker sending it.
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeVar

import msgspec
from loguru import logger

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
from jobrelay.protocol.streams import StreamMarks
from jobrelay.storage import routing
from jobrelay.storage.database import Database, Durability, open_database
from jobrelay.storage.errors import StorageError
from jobrelay.storage.inbox import AcceptResult, Inbox, InboxState
from jobrelay.storage.ledger import JobLedger, JobRecord, StatusEntry, StatusResult, StatusUpdate
from jobrelay.storage.outbox import Outbox, OutboxStats, outbox_streams

__all__ = ["AcceptOutcome", "Assignment", "FacilitatorStore", "Refusal", "WorkerFacts"]

T = TypeVar("T")

ENCODER: Final = msgspec.json.Encoder()
FACILITATOR_BODY: Final = msgspec.json.Decoder(FacilitatorBody)
JOB_REQUEST: Final = msgspec.json.Decoder(JobRequest)
MACHINE_SPECS: Final = msgspec.json.Decoder(MachineSpecs)
_TAGS: Final[dict[type, str]] = {
    JobStatusUpdate: "job_status",
    MachineSpecs: "machine_specs",
    WorkerEvent: "worker_event",
    JobRequest: "job_request",
    JobCancel: "job_cancel",
}
_MAX_GROUP: Final = 512  # operations per group commit
_CALL_TIMEOUT: Final = 30.0


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
    """

    upto: int
    accepted: int
    duplicates: int
    refused: list[Refusal]
    gap: bool


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


@dataclass
class _State:
    """Everything the store thread owns.

    Change ``outstanding`` only through ``add_outstanding`` and get outboxes only through
    ``outbox``: both are journaled so ``rollback_op``/``rollback_group`` can undo them.
    """

    db: Database
    inbox: Inbox
    ledger: JobLedger
    outstanding: dict[str, int]
    outboxes: dict[str, Outbox] = field(default_factory=dict)
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

    def add_outstanding(self, worker_id: str, delta: int) -> None:
        self.op_undo.counts.setdefault(worker_id, self.outstanding.get(worker_id))
        self.outstanding[worker_id] = max(0, self.outstanding.get(worker_id, 0) + delta)

    def begin_group(self) -> None:
        self.group_undo = _Undo()
        self.op_undo = _Undo()

    def commit_op(self) -> None:
        """The operation's savepoint was released: its changes belong to the group now."""
        op, self.op_undo = self.op_undo, _Undo()
        self.group_undo.created.extend(op.created)
        for worker_id, before in op.counts.items():
            self.group_undo.counts.setdefault(worker_id, before)

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


class _Op(NamedTuple):
    name: str
    fn: Callable[[_State], Any]
    future: Future[Any]


_STOP: Final = _Op("stop", lambda _s: None, Future())


class FacilitatorStore:
    """The facilitator's database, behind one thread with group commit.

    Every public method blocks until its operation committed (or failed) and returns its result.

    Args:
        path: The SQLite file.
        durability: ``"full"`` or ``"normal"``.
    """

    def __init__(self, path: str, durability: Durability = "full") -> None:
        self.path = path
        self.durability: Durability = durability
        self.commits = 0
        self.operations = 0
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._gate = threading.Lock()  # no operation is queued behind _STOP (it would never run)
        self._stopping = False
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="facilitator-store", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread, open the database and wait until it is usable.

        Raises:
            StorageError: The database could not be opened (the message says why).
            TimeoutError: Opening took longer than ``timeout``.
        """
        self._thread.start()
        self._ready.result(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Run what is queued, close the database and end the thread.

        Returns:
            True if the thread ended within ``timeout``.
        """
        with self._gate:
            if self._thread.is_alive() and not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            db = open_database(self.path, durability=self.durability)
            state = _State(db, Inbox(db), JobLedger(db), routing.outstanding_by_peer(db))
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            self._loop(state)
        finally:
            try:
                db.close()
            except StorageError as exc:  # pragma: no cover - closing a healthy file does not fail
                logger.error("facilitator store: closing {} failed: {}", self.path, exc)

    def _loop(self, state: _State) -> None:
        while True:
            ops = [self._queue.get()]
            while len(ops) < _MAX_GROUP:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(op is _STOP for op in ops)
            work = [op for op in ops if op is not _STOP]
            if work:
                self._group(state, work)
            if stopping:
                self._drain_after_stop()
                return

    def _drain_after_stop(self) -> None:
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return
            if op is not _STOP:
                op.future.set_exception(StorageError("the facilitator store is stopped", path=self.path))

    def _group(self, state: _State, ops: list[_Op]) -> None:
        done: list[tuple[_Op, Any, BaseException | None]] = []
        state.begin_group()
        try:
            with state.db.transaction("facilitator group commit"):
                for op in ops:
                    try:
                        with state.db.transaction(op.name):
                            result = op.fn(state)
                    except Exception as exc:  # the op, or releasing its savepoint, failed
                        state.rollback_op()
                        done.append((op, None, exc))
                    else:
                        state.commit_op()
                        done.append((op, result, None))
        except Exception as exc:
            logger.error("facilitator store: group commit of {} operations failed: {}", len(ops), exc)
            state.rollback_group()
            for op in ops:
                op.future.set_exception(exc)
            return
        self.commits += 1
        self.operations += len(ops)
        for op, value, error in done:
            if error is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(error)

    def _call(self, name: str, fn: Callable[[_State], T], timeout: float = _CALL_TIMEOUT) -> T:
        future: Future[T] = Future()
        with self._gate:
            if self._stopping or not self._thread.is_alive():
                raise StorageError("the facilitator store is not running", path=self.path)
            self._queue.put(_Op(name, fn, future))
        return future.result(timeout)

    # ------------------------------------------------------------------ streams

    def marks(self, worker_id: str) -> StreamMarks:
        """The stored marks of both streams with ``worker_id`` (for ``session.accept``)."""

        def op(s: _State) -> StreamMarks:
            box = s.outbox(worker_id)
            stats = box.stats()
            in_epoch, in_hwm = s.inbox.state(worker_id)
            return StreamMarks(stats.epoch, stats.last_acked, stats.last_seq, in_epoch, in_hwm)

        return self._call("read marks", op)

    def open_stream(self, worker_id: str, in_epoch: str, in_hwm: int, new_stream: bool) -> bool:
        """Persist where the worker's stream resumes; True when a new epoch was recorded."""

        def op(s: _State) -> bool:
            if new_stream:
                return s.inbox.start_epoch(worker_id, in_epoch, in_hwm)
            s.inbox.raise_hwm(worker_id, in_epoch, in_hwm)
            return False

        return self._call("open stream", op)

    def restart_stream(self, worker_id: str) -> str:
        """Give our stream to ``worker_id`` a new epoch (pending rows renumbered from 1)."""
        return self._call("restart stream", lambda s: s.outbox(worker_id).restart_epoch())

    def accept(self, worker_id: str, epoch: str, items: Sequence[tuple[int, WorkerBody]]) -> AcceptOutcome:
        """Make a received batch of the worker's stream ``epoch`` durable and apply it
        (statuses, specs, events) in one commit. A batch of another epoch than the stored one
        (a replaced connection finishing late, after the worker came back with a new store)
        is not stored: ``gap`` is set and the session must close without acknowledging."""
        return self._call("accept data", lambda s: _accept(s, worker_id, epoch, items))

    def ack(self, worker_id: str, upto: int) -> int:
        """The worker holds our stream up to ``upto``: delete those rows."""
        return self._call("ack outbox", lambda s: s.outbox(worker_id).ack(upto))

    def pending(self, worker_id: str, after: int, limit: int) -> list[tuple[int, FacilitatorBody]]:
        """Up to ``limit`` unacknowledged messages for the worker after seq ``after``."""

        def op(s: _State) -> list[tuple[int, FacilitatorBody]]:
            rows = s.outbox(worker_id).pending(after, limit)
            return [(row.seq, FACILITATOR_BODY.decode(row.payload)) for row in rows]

        return self._call("read outbox", op)

    def touch(self, worker_id: str, at: float) -> None:
        """Remember when the worker was last heard from."""
        self._call("touch worker", lambda s: routing.touch_worker(s.db, worker_id, at))

    # ------------------------------------------------------------------ jobs

    def submit(
        self, requests: Sequence[JobRequest], worker_id: str | None, eligible: Sequence[str]
    ) -> list[Assignment]:
        """Record and route jobs in one commit (an existing job id is left as it is)."""
        return self._call("submit jobs", lambda s: _submit(s, requests, worker_id, eligible))

    def dispatch_queued(self, eligible: Sequence[str]) -> list[Assignment]:
        """Route queued jobs to the least busy of ``eligible`` workers."""

        def op(s: _State) -> list[Assignment]:
            out: list[Assignment] = []
            while eligible:
                queued = routing.queued_jobs(s.db, 500)
                if not queued:
                    break
                for job in queued:
                    worker = _least_busy(s, eligible)
                    routing.assign_job(s.db, job.job_id, worker)
                    seq = s.outbox(worker).append("job_request", job.payload)
                    s.add_outstanding(worker, 1)
                    out.append(Assignment(job.job_id, worker, seq))
            return out

        return self._call("dispatch queued jobs", op)

    def cancel(self, job_id: str, reason: str) -> tuple[bool, str, int]:
        """Cancel a job: ``(done, worker, seq)``; a queued job is cancelled in the ledger."""

        def op(s: _State) -> tuple[bool, str, int]:
            record = s.ledger.get(job_id)
            if record is None:
                return False, "", 0
            if record.status is not None and JobStatus(record.status).terminal:
                return False, record.peer, 0
            if not record.peer:
                s.ledger.record_status(job_id, JobStatus.CANCELLED.value, detail=reason or "cancelled")
                return True, "", 0
            body = JobCancel(job_id=job_id, reason=reason)
            return True, record.peer, s.outbox(record.peer).append("job_cancel", ENCODER.encode(body))

        return self._call("cancel job", op)

    def job(self, job_id: str) -> tuple[JobRecord, list[StatusEntry], bytes] | None:
        """The job's record, status history and encoded request, or None."""

        def op(s: _State) -> tuple[JobRecord, list[StatusEntry], bytes] | None:
            record = s.ledger.get(job_id)
            if record is None:
                return None
            return record, s.ledger.history(job_id), s.ledger.payload(job_id) or b""

        return self._call("read job", op)

    def jobs(self, status: str | None, limit: int) -> list[JobRecord]:
        """The newest jobs first, optionally only those whose last status is ``status``."""
        return self._call("list jobs", lambda s: s.ledger.jobs(limit=limit, status=status))

    def worker_facts(self) -> WorkerFacts:
        """Stored facts of every worker (specs, outbox and inbox positions, outstanding jobs)."""

        def op(s: _State) -> WorkerFacts:
            return WorkerFacts(
                routing.worker_records(s.db), outbox_streams(s.db), s.inbox.streams(), dict(s.outstanding)
            )

        return self._call("read workers", op)


def _least_busy(s: _State, eligible: Sequence[str]) -> str:
    return min(eligible, key=lambda w: (s.outstanding.get(w, 0), w))


def _submit(
    s: _State, requests: Sequence[JobRequest], worker_id: str | None, eligible: Sequence[str]
) -> list[Assignment]:
    out: list[Assignment] = []
    routed: dict[str, list[tuple[str, bytes]]] = {}
    for request in requests:
        existing = s.ledger.get(request.job_id)
        if existing is not None:
            out.append(Assignment(request.job_id, existing.peer, 0))
            continue
        worker = worker_id or (_least_busy(s, eligible) if eligible else "")
        payload = ENCODER.encode(request)
        s.ledger.record_request(request.job_id, request.kind, payload, peer=worker)
        if worker:
            s.add_outstanding(worker, 1)
            routed.setdefault(worker, []).append((request.job_id, payload))
        out.append(Assignment(request.job_id, worker, 0))
    seqs: dict[str, int] = {}
    for worker, jobs in routed.items():
        for (job_id, _), seq in zip(
            jobs, s.outbox(worker).append_many([("job_request", p) for _, p in jobs]), strict=True
        ):
            seqs[job_id] = seq
    return [a._replace(seq=seqs.get(a.job_id, 0)) if a.worker else a for a in out]


def _accept(s: _State, worker_id: str, epoch: str, items: Sequence[tuple[int, WorkerBody]]) -> AcceptOutcome:
    if s.inbox.state(worker_id)[0] != epoch:
        logger.warning("facilitator: dropping a late batch of worker={} from old epoch {}", worker_id, epoch)
        return AcceptOutcome(upto=0, accepted=0, duplicates=0, refused=[], gap=True)
    rows = [(seq, _TAGS[type(body)], ENCODER.encode(body)) for seq, body in items]
    results = s.inbox.accept_many(worker_id, rows)
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
    statuses = [b for b in accepted if isinstance(b, JobStatusUpdate)]
    if statuses:
        refused = _record_statuses(s, worker_id, statuses)
    specs = [b for b in accepted if isinstance(b, MachineSpecs)]
    if specs:
        routing.record_specs(s.db, worker_id, ENCODER.encode(specs[-1]), specs[-1].at)
    events = [(b.event, b.detail, b.at) for b in accepted if isinstance(b, WorkerEvent)]
    if events:
        routing.record_worker_events(s.db, worker_id, events)
    if accepted:
        s.inbox.mark_consumed(worker_id, upto)  # applied in this same transaction
    return AcceptOutcome(upto, len(accepted), duplicates, refused, gap)


def _record_statuses(s: _State, worker_id: str, statuses: list[JobStatusUpdate]) -> list[Refusal]:
    owners = routing.job_owners(s.db, [u.job_id for u in statuses])
    refused: list[Refusal] = []
    mine: list[JobStatusUpdate] = []
    for update in statuses:
        owner = owners.get(update.job_id)
        if owner == worker_id:
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
            if update.status.terminal:
                s.add_outstanding(worker_id, -1)
        else:
            refused.append(Refusal(update.job_id, None, f"{update.status.value}: {result.value}"))
    return refused
