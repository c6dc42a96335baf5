# The facilitator's single database thread. It owns the Database (SQLite connections are
# thread-bound) and runs every operation queued by connection threads and API callers.
# Invariants:
# - Exactly one thread touches the Database: the store thread, from open to close.
# - Group commit: all operations waiting in the queue run in ONE transaction, each in its own
#   savepoint (a failing operation is rolled back alone). Results are released only after the
#   COMMIT returned, so a caller that acknowledges after result() never acks anything volatile.
# - The operations and the in-memory state that follows rollbacks live in store_ops.py.
from __future__ import annotations

import asyncio
import heapq
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Final, NamedTuple, TypeVar

from loguru import logger

from jobrelay.facilitator.placement import Candidates
from jobrelay.facilitator.queued import dispatch_queued, expire_queued
from jobrelay.facilitator.settle import Outcome, release
from jobrelay.facilitator.store_ops import (
    FACILITATOR_BODY,
    JOB_REQUEST,
    AcceptOutcome,
    Assignment,
    StoreState,
    WorkerFacts,
    accept_batch,
    cancel_job,
    submit_jobs,
)
from jobrelay.protocol.messages import FacilitatorBody, JobRequest, WorkerBody
from jobrelay.protocol.streams import StreamMarks
from jobrelay.storage import routing
from jobrelay.storage.database import Durability
from jobrelay.storage.errors import StorageError
from jobrelay.storage.inbox import Inbox
from jobrelay.storage.inspect import outbox_streams
from jobrelay.storage.ledger import JobLedger, JobRecord, StatusEntry
from jobrelay.storage.lock import lock_database
from jobrelay.storage.opening import open_database

__all__ = ["FacilitatorStore"]

T = TypeVar("T")

_MAX_GROUP: Final = 512  # operations per group commit
_CALL_TIMEOUT: Final = 30.0


class _Op(NamedTuple):
    name: str
    fn: Callable[[StoreState], Any]
    future: Future[Any] | asyncio.Future[Any]


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
        self._defaults_armed = False  # the default start deadline was given to jobs queued before start
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
            # One facilitator per database, for as long as this thread has it open.
            lock = lock_database(self.path)
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        try:
            self._serve()
        finally:
            lock.release()

    def _serve(self) -> None:
        try:
            db = open_database(self.path, durability=self.durability)
            by_kind = routing.outstanding_by_kind(db)
            per_worker: dict[str, int] = {}
            for (worker, _), count in by_kind.items():
                per_worker[worker] = per_worker.get(worker, 0) + count
            state = StoreState(db, Inbox(db), JobLedger(db), per_worker, by_kind)
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

    def _loop(self, state: StoreState) -> None:
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
                release([(op.future, None, StorageError("the facilitator store is stopped", path=self.path))])

    def _group(self, state: StoreState, ops: list[_Op]) -> None:
        done: list[Outcome] = []
        state.begin_group()
        try:
            with state.db.transaction("facilitator group commit"):
                for op in ops:
                    try:
                        with state.db.transaction(op.name):
                            result = op.fn(state)
                    except Exception as exc:  # the op, or releasing its savepoint, failed
                        state.rollback_op()
                        done.append((op.future, None, exc))
                    else:
                        state.commit_op()
                        done.append((op.future, result, None))
        except Exception as exc:
            logger.error("facilitator store: group commit of {} operations failed: {}", len(ops), exc)
            state.rollback_group()
            release([(op.future, None, exc) for op in ops])
            return
        self.commits += 1
        self.operations += len(ops)
        release(done)

    def queue_op(self, name: str, fn: Callable[[StoreState], T]) -> Future[T]:
        """Queue ``fn`` for the store thread; its future resolves after the group commit.

        Raises:
            StorageError: The store is stopped (nothing was queued).
        """
        future: Future[T] = Future()
        self._put(_Op(name, fn, future))
        return future

    def queue_async(self, name: str, fn: Callable[[StoreState], T]) -> asyncio.Future[T]:
        """Like ``queue_op``, for a caller on an event loop: an asyncio future of that loop. A
        group's results reach each loop in one wake-up (one call_soon_threadsafe per loop and
        group, not per operation): ten thousand connections share the store cheaply.

        Raises:
            StorageError: The store is stopped (nothing was queued).
            RuntimeError: Not called from a running event loop.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(_Op(name, fn, future))
        return future

    def _put(self, op: _Op) -> None:
        with self._gate:
            if self._stopping or not self._thread.is_alive():
                raise StorageError("the facilitator store is not running", path=self.path)
            self._queue.put(op)

    def _call(
        self,
        name: str,
        fn: Callable[[StoreState], T],
        timeout: float = _CALL_TIMEOUT,
        on_late: Callable[[T], object] | None = None,
    ) -> T:
        """Run ``fn`` and wait for its commit. When the wait times out the operation still runs:
        ``on_late`` then gets its result when it commits (so workers are woken for what it routed).

        Raises:
            TimeoutError: No commit within ``timeout`` seconds.
        """
        future = self.queue_op(name, fn)
        try:
            return future.result(timeout)
        except TimeoutError:
            if on_late is not None:
                late = on_late
                future.add_done_callback(lambda f: late(f.result()) if f.exception() is None else None)
            raise

    # ------------------------------------------------------------------ streams (the connections')
    # What a connection needs returns an asyncio future (called on the event loop, which awaits
    # it); what the API needs blocks its caller's thread until the commit (_CALL_TIMEOUT at most).

    def marks(self, worker_id: str) -> asyncio.Future[StreamMarks]:
        """The stored marks of both streams with ``worker_id`` (for ``session.accept``)."""

        def op(s: StoreState) -> StreamMarks:
            box = s.outbox(worker_id)
            stats = box.stats()
            in_epoch, in_hwm = s.inbox.state(worker_id)
            return StreamMarks(stats.epoch, stats.last_acked, stats.last_seq, in_epoch, in_hwm)

        return self.queue_async("read marks", op)

    def open_stream(
        self, worker_id: str, in_epoch: str, in_hwm: int, new_stream: bool
    ) -> asyncio.Future[bool]:
        """Persist where the worker's stream resumes; True when a new epoch was recorded."""

        def op(s: StoreState) -> bool:
            if new_stream:
                return s.inbox.start_epoch(worker_id, in_epoch, in_hwm)
            s.inbox.raise_hwm(worker_id, in_epoch, in_hwm)
            return False

        return self.queue_async("open stream", op)

    def restart_stream(self, worker_id: str) -> asyncio.Future[str]:
        """Give our stream to ``worker_id`` a new epoch (pending rows renumbered from 1)."""
        return self.queue_async("restart stream", lambda s: s.outbox(worker_id).restart_epoch())

    def accept(
        self, worker_id: str, epoch: str, items: Sequence[tuple[int, WorkerBody]]
    ) -> asyncio.Future[AcceptOutcome]:
        """Make a received batch of the worker's stream ``epoch`` durable and apply it
        (statuses, specs, events) in one commit. A batch of another epoch than the stored one
        (a replaced connection finishing late, after the worker came back with a new store)
        is not stored: ``gap`` is set and the session must close without acknowledging."""
        return self.queue_async("accept data", lambda s: accept_batch(s, worker_id, epoch, items))

    def ack(self, worker_id: str, upto: int) -> asyncio.Future[int]:
        """The worker holds our stream up to ``upto``: delete those rows."""
        return self.queue_async("ack outbox", lambda s: s.outbox(worker_id).ack(upto))

    def pending(
        self, worker_id: str, after: int, limit: int
    ) -> asyncio.Future[list[tuple[int, FacilitatorBody]]]:
        """Up to ``limit`` unacknowledged messages for the worker after seq ``after``."""

        def op(s: StoreState) -> list[tuple[int, FacilitatorBody]]:
            rows = s.outbox(worker_id).pending(after, limit)
            return [(row.seq, FACILITATOR_BODY.decode(row.payload)) for row in rows]

        return self.queue_async("read outbox", op)

    def touch(self, worker_id: str, at: float) -> asyncio.Future[None]:
        """Remember when the worker was last heard from."""
        return self.queue_async("touch worker", lambda s: routing.touch_worker(s.db, worker_id, at))

    # ------------------------------------------------------------------ jobs

    def submit(
        self,
        requests: Sequence[JobRequest],
        worker_id: str | None,
        candidates: Candidates,
        on_late: Callable[[list[Assignment]], object] | None = None,
        start_by: float | None = None,
    ) -> list[Assignment]:
        """Record and route jobs in one commit (an existing job id is left as it is); ``on_late``
        gets the assignments if the commit comes after the wait timed out. A job left queued
        fails with ``no_worker`` if it is still queued at ``start_by`` (see ``expire``)."""
        return self._call(
            "submit jobs",
            lambda s: submit_jobs(s, requests, worker_id, candidates, start_by),
            on_late=on_late,
        )

    def submit_async(
        self,
        requests: Sequence[JobRequest],
        worker_id: str | None,
        candidates: Candidates,
        start_by: float | None = None,
    ) -> asyncio.Future[list[Assignment]]:
        """``submit`` for a caller on the event loop: the future resolves after the commit."""
        return self.queue_async(
            "submit jobs", lambda s: submit_jobs(s, requests, worker_id, candidates, start_by)
        )

    def dispatch_queued(self, candidates: Candidates) -> asyncio.Future[tuple[list[Assignment], bool]]:
        """Route queued jobs to ``candidates`` that run their kinds and have credit left; and
        whether jobs are still queued."""
        return self.queue_async("dispatch queued jobs", lambda s: dispatch_queued(s, candidates))

    def expire(self, now: float, default: float | None) -> asyncio.Future[list[str]]:
        """End queued jobs whose start deadline passed (``failed: no_worker``); the first call
        with a ``default`` also gives that deadline to jobs queued before this start."""

        def op(s: StoreState) -> list[str]:
            if default is not None and not self._defaults_armed:
                self._defaults_armed = True
                for job in routing.queued_jobs(s.db, limit=-1):
                    at = JOB_REQUEST.decode(job.payload).submitted_at
                    heapq.heappush(s.start_by, (at + default, job.job_id))
            return expire_queued(s, now)

        return self.queue_async("expire queued jobs", op)

    def cancel(
        self, job_id: str, reason: str, on_late: Callable[[tuple[bool, str, int]], object] | None = None
    ) -> tuple[bool, str, int]:
        """Cancel a job: ``(done, worker, seq)``; a queued job is cancelled in the ledger."""

        return self._call("cancel job", lambda s: cancel_job(s, job_id, reason), on_late=on_late)

    def job(self, job_id: str) -> tuple[JobRecord, list[StatusEntry], bytes] | None:
        """The job's record, status history and encoded request, or None."""

        def op(s: StoreState) -> tuple[JobRecord, list[StatusEntry], bytes] | None:
            record = s.ledger.get(job_id)
            if record is None:
                return None
            return record, s.ledger.history(job_id), s.ledger.payload(job_id) or b""

        return self._call("read job", op)

    def jobs(self, status: str | None, limit: int) -> list[JobRecord]:
        """The newest jobs first, optionally only those whose last status is ``status``."""
        return self._call("list jobs", lambda s: s.ledger.jobs(limit=limit, status=status))

    def job_counts(self) -> dict[str, int]:
        """How many jobs have each last status ("queued": none yet), over every stored job."""
        return self._call("count jobs", lambda s: s.ledger.counts())

    def job_counts_by_worker(self) -> dict[tuple[str, str], int]:
        """Jobs by (worker, last status): see ``JobLedger.counts_by_worker``."""
        return self._call("count jobs by worker", lambda s: s.ledger.counts_by_worker())

    def worker_facts(self) -> WorkerFacts:
        """Stored facts of every worker (specs, outbox and inbox positions, outstanding jobs)."""

        def op(s: StoreState) -> WorkerFacts:
            return WorkerFacts(
                routing.worker_records(s.db), outbox_streams(s.db), s.inbox.streams(), dict(s.outstanding)
            )

        return self._call("read workers", op)
