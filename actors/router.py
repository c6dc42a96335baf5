# JobRouter actor: owns the inbox (what the facilitator sent) and routes job requests to
# handlers. A received batch is accepted into the inbox, its job requests recorded in the ledger
# and the batch marked consumed in ONE transaction; each payload is stored once (in the ledger).
# Invariants: data is committed before the Connection is told to ack it;
# a job id is started at most once (ledger dedup); at most `max_concurrent_jobs` handlers run;
# every job gets exactly one terminal status (the Outbox's ledger check refuses a second one);
# a handler starts only after its `running` status is durable, so at start-up a job that reached
# `running` before a crash ends as failed: worker_restarted, and one that never did is run now;
# a draining worker hands queued jobs back (`released`, not an ending) to a facilitator that takes
# them, and never starts one it released (unless the facilitator sends it here again).
from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.actor_messages import Count, DropSession, Gauge, Incoming, JobDone, Persisted, send
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.handlers import Handler, JobContext, publish_status, run_handler
from jobrelay.actors.outbox_actor import OutboxHandle
from jobrelay.actors.processes import ProcessJournal
from jobrelay.common.logs import Repeats
from jobrelay.protocol.events import Opened, PeerStreamAdvanced, PeerStreamStarted
from jobrelay.protocol.messages import FacilitatorBody, JobCancel, JobRequest, JobStatus
from jobrelay.storage import AcceptResult, Database, Inbox, JobLedger, open_database

if TYPE_CHECKING:
    from jobrelay.actors.actor_messages import Tellable

__all__ = ["STREAM", "JobRouter"]

STREAM = "facilitator"
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(FacilitatorBody)
_KEEP_DECODED = 1024  # queued requests kept decoded; beyond that they are read back from the ledger


class JobRouter(pykka.ThreadingActor):
    """Accepts job requests and cancels from the facilitator and runs them through handlers."""

    def __init__(
        self,
        config: WorkerConfig,
        handlers: dict[str, Handler],
        *,
        outbox: OutboxHandle,
        metrics: Tellable,
        clock: Callable[[], float],
    ) -> None:
        super().__init__()
        self.config = config
        self._handlers = dict(handlers)
        self._unknown_kinds = Repeats()  # a warning for the first job of each unknown kind only
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._db: Database | None = None
        self._inbox: Inbox | None = None
        self._ledger: JobLedger | None = None
        self._running: dict[str, JobContext] = {}
        self._running_kinds: Counter[str] = Counter()  # for handlers with a `concurrency` limit
        # Command handlers journal their process groups next to the database (never for :memory:).
        db_path = str(config.db_path)
        self._processes = None if db_path == ":memory:" else ProcessJournal(Path(db_path + ".handlers"))
        # Job ids only: a long backlog costs a few bytes per job; requests are read back from
        # the ledger when their turn comes.
        self._queued: deque[str] = deque()
        self._queued_ids: set[str] = set()
        self._decoded: dict[str, JobRequest] = {}
        self._draining = False
        self._releasing = False  # draining, and the facilitator takes back what we release
        self._peer_takes_releases = False  # from the last welcome
        self._resuming: set[str] = set()  # started before a restart, waiting to resume here

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._db = open_database(self.config.db_path, durability=self.config.durability, check=False)
        self._inbox = Inbox(self._db)
        self._ledger = JobLedger(self._db)
        if self._processes is not None:
            # Before any interrupted job is reported or run again: no command of a previous life
            # may still be working on it (its watchdog kills it with the worker; this makes sure).
            self._processes.end_leftovers()
        for record in self._ledger.unfinished():
            if record.cancel_reason is not None and record.status != JobStatus.RELEASED.value:
                # Its cancel arrived before the restart: that is its ending, whatever it was doing.
                logger.info("job {} was cancelled before the restart: ending it cancelled", record.job_id)
                self._stop_elsewhere(record.job_id, record.kind, record.cancel_reason)
                self._finish(record.job_id, JobStatus.CANCELLED, record.cancel_reason)
                continue
            payload = self._ledger.payload(record.job_id)
            if record.status is None and payload is not None:
                self._route(msgspec.json.decode(payload, type=JobRequest))  # recorded, not yet accepted
                continue
            if record.status == JobStatus.RELEASED.value:
                continue  # handed back before the restart: the facilitator owns it again
            if record.status == JobStatus.ACCEPTED.value:
                self._queue(record.job_id)  # never started: this is its first and only run
                continue
            if getattr(self._handlers.get(record.kind), "resumable", False):
                logger.info("job {} was interrupted by a restart: its handler resumes it", record.job_id)
                self._resuming.add(record.job_id)  # it started here: never handed back
                self._queue(record.job_id)
                continue
            logger.warning("job {} was interrupted by a restart: failing it", record.job_id)
            # Retryable: the job itself did not fail, its worker did.
            self._publish(record.job_id, JobStatus.FAILED, detail="worker_restarted", retryable=True)
            send(self._metrics, Count("jobs_failed"))
        # Rows accepted but not consumed exist only in databases written before intake became one
        # transaction: act on them now, in order.
        for row in self._inbox.unconsumed(STREAM):
            body = _DECODER.decode(row.payload)
            if not isinstance(body, JobRequest) or self._is_new(body, row.payload):
                self._apply(body)
            self._inbox.mark_consumed(STREAM, row.seq)

    def _stop_elsewhere(self, job_id: str, kind: str, reason: str) -> None:
        """A handler whose jobs run elsewhere (Celery) stops one that a cancel ended meanwhile."""
        stop = getattr(self._handlers.get(kind), "cancel_interrupted", None)
        job = self._read_request(job_id)
        if stop is not None and job is not None:  # in a thread: it may wait on the network
            threading.Thread(
                target=stop, args=(job, reason), name=f"jobrelay-stop-{job_id}", daemon=True
            ).start()

    def on_stop(self) -> None:
        self.drain("worker stopping")
        if self._db is not None:
            self._db.close()

    def on_failure(self, *args: object) -> None:
        self.drain("worker crashed")
        if self._db is not None:
            self._db.close()

    # ------------------------------------------------------------ proxy API

    def in_marks(self) -> tuple[str, int]:
        """``(epoch, high-water mark)`` of the facilitator's stream."""
        assert self._inbox is not None
        return self._inbox.state(STREAM)

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def running(self) -> list[str]:
        return list(self._running)

    def drain(self, reason: str, *, cancel_running: bool = True) -> int:
        """Stop taking work: start nothing new, hand queued jobs back, and (with
        ``cancel_running``) ask every running handler to stop. Returns how many are running.

        Queued jobs go back to the facilitator (status ``released``, so another worker can take
        them) when its welcome said it takes them, except a resumable job that started here before
        a restart (it resumes here). Without that welcome they stay: their requests are durable,
        and the next start of the worker runs them.
        """
        self._draining = True
        self._releasing = self._peer_takes_releases
        if self._releasing:
            kept = [j for j in self._queued if j in self._resuming]
            for job_id in self._queued:
                if job_id not in self._resuming:
                    self._release(job_id)
            self._queued = deque(kept)
        if cancel_running:
            for ctx in self._running.values():
                ctx.cancel(reason, stopping=True)
        return len(self._running)

    def _release(self, job_id: str) -> None:
        self._queued_ids.discard(job_id)
        # Its current attempt (a release is not a retry: the next worker runs the same attempt).
        self._publish(job_id, JobStatus.RELEASED, detail="worker draining")
        self._decoded.pop(job_id, None)
        send(self._metrics, Count("jobs_released"))

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        match message:
            case Incoming(session_id=sid, items=items, connection=connection):
                self._on_incoming(sid, items, connection)
            case PeerStreamStarted(epoch=epoch, after=after, previous_epoch=previous):
                assert self._inbox is not None
                self._inbox.start_epoch(STREAM, epoch, after)
                # Routine on a first connection; a replaced epoch is the Connection's WARNING.
                logger.debug(
                    "facilitator stream epoch {} starts after seq {} (was {!r})", epoch, after, previous
                )
            case PeerStreamAdvanced(epoch=epoch, hwm=hwm):
                assert self._inbox is not None
                if self._inbox.raise_hwm(STREAM, epoch, hwm):
                    logger.warning(
                        "our inbox was behind the facilitator's acknowledged seq {} "
                        "(database restored from an older copy?); resuming after it",
                        hwm,
                    )
            case Opened(takes_releases=takes):
                self._peer_takes_releases = takes
            case JobDone(job_id=job_id, attempt=attempt, kind=kind):
                self._running_kinds[kind] -= 1  # this run has ended, whichever attempt it was
                ctx = self._running.get(job_id)
                if ctx is not None and ctx.job.attempt == attempt:
                    del self._running[job_id]
                self._start_queued()
            case _:
                logger.error("JobRouter got an unknown message {!r}", message)

    # ------------------------------------------------------------ internals

    def _on_incoming(self, session_id: str, items: list[tuple[int, Any]], connection: Any) -> None:
        """Accept, record and consume a batch in one transaction, then act on what was new."""
        assert self._db is not None and self._inbox is not None and self._ledger is not None
        # Requests: the ledger keeps the payload, the inbox row only the position (it is consumed
        # in this same transaction). Cancels are small and kept whole.
        encoded = [_ENCODER.encode(body) for _, body in items]
        rows = [
            (seq, type(body).__struct_config__.tag, b"" if isinstance(body, JobRequest) else payload)
            for (seq, body), payload in zip(items, encoded, strict=True)
        ]
        accepted: list[FacilitatorBody] = []
        new = durable_upto = gap = 0
        with self._db.transaction("accept facilitator data"):
            for (seq, body), payload, result in zip(
                items, encoded, self._inbox.accept_many(STREAM, rows), strict=True
            ):
                if result is AcceptResult.GAP:
                    gap = seq
                    break
                durable_upto = seq
                if result is AcceptResult.ACCEPTED:
                    new += 1
                    if self._record(body, payload):
                        accepted.append(body)
            if durable_upto:
                self._inbox.mark_consumed(STREAM, durable_upto)
        if gap:
            # Our inbox disagrees with the session about where the stream is: acknowledge
            # nothing past the gap and reconnect, so the stream resumes from what is durable.
            logger.error("seq {} from the facilitator leaves a gap in our inbox; reconnecting", gap)
            send(connection, DropSession(session_id, f"inbox gap at seq {gap}"))
        duplicates = (durable_upto - items[0][0] + 1 if durable_upto else 0) - new
        if duplicates:
            send(self._metrics, Count("duplicates_dropped", duplicates))
        if durable_upto:
            send(
                connection, Persisted(session_id, durable_upto)
            )  # durable now: the facilitator may forget these
        for body in accepted:
            self._apply(body)

    def _record(self, body: FacilitatorBody, payload: bytes) -> bool:
        """Inside the intake transaction: True when ``body`` must be acted on (a new job, a cancel)."""
        assert self._ledger is not None
        if isinstance(body, JobCancel):
            # Kept with the intake: a kill -9 before the handler stops still ends it cancelled.
            self._ledger.request_cancel(body.job_id, _cancel_reason(body))
            return True
        send(self._metrics, Count("jobs_received"))
        if self._is_new(body, payload):
            return True
        record = self._ledger.get(body.job_id)
        if record is not None and record.status == JobStatus.RELEASED.value:
            return True  # we handed it back before a restart and the facilitator sent it here again
        logger.debug("job {} arrived again; already handled", body.job_id)  # counted: jobs_duplicate
        send(self._metrics, Count("jobs_duplicate"))
        return False

    def _is_new(self, job: JobRequest, payload: bytes) -> bool:
        """Record ``job`` in the ledger: True for new work, a new id or a later attempt of a
        known one (a retry, perhaps of a job this worker ran before); False for a repeat."""
        assert self._ledger is not None
        if self._ledger.record_request(job.job_id, job.kind, payload):
            return True
        return job.attempt > 1 and self._ledger.start_attempt(job.job_id, job.attempt, payload)

    def _apply(self, body: FacilitatorBody) -> None:
        match body:
            case JobRequest():
                self._route(body)
            case JobCancel():
                self._cancel(body.job_id, _cancel_reason(body))

    def _route(self, job: JobRequest) -> None:
        if job.kind not in self._handlers:
            # The facilitator decides how many jobs come: one line per unknown kind (at most 100
            # kinds), not per job; each is still rejected, and counted in jobs_rejected.
            kinds = self._unknown_kinds
            if kinds.first(job.kind if len(kinds.counts) < 100 else "(more kinds)"):
                logger.warning("job {}: no handler for kind {!r} (more: not logged)", job.job_id, job.kind)
            self._finish(job.job_id, JobStatus.REJECTED, f"unknown job kind {job.kind!r}", job.attempt)
            send(self._metrics, Count("jobs_rejected"))
            return
        self._publish(job.job_id, JobStatus.ACCEPTED, attempt=job.attempt)
        self._queue(job.job_id, job)

    def _queue(self, job_id: str, job: JobRequest | None = None) -> None:
        if self._releasing:  # sent before the facilitator saw we are draining: hand it back
            self._release(job_id)
            return
        if job is not None and len(self._decoded) < _KEEP_DECODED:
            self._decoded[job_id] = job
        self._queued.append(job_id)
        self._queued_ids.add(job_id)
        self._start_queued()

    def _start_queued(self) -> None:
        assert self._ledger is not None
        skipped: list[str] = []  # jobs whose kind is at its concurrency limit keep their place
        while not self._draining and self._queued and len(self._running) < self.config.max_concurrent_jobs:
            job_id = self._queued.popleft()
            job = self._decoded.pop(job_id, None) or self._read_request(job_id)
            if job is None:  # pragma: no cover - the ledger keeps unfinished jobs
                self._queued_ids.discard(job_id)
                logger.error("job {} vanished from the ledger before it could start", job_id)
                continue
            handler = self._handlers.get(job.kind)
            if handler is None:  # its handler was removed since it was accepted
                self._queued_ids.discard(job_id)
                self._finish(job_id, JobStatus.REJECTED, f"no handler for job kind {job.kind!r}", job.attempt)
                continue
            limit = getattr(handler, "concurrency", None)
            if limit is not None and self._running_kinds[job.kind] >= limit:
                skipped.append(job_id)
                if len(self._decoded) < _KEEP_DECODED:
                    self._decoded[job_id] = job
                continue
            self._queued_ids.discard(job_id)
            ctx = JobContext(
                job,
                outbox=self._outbox,
                clock=self._clock,
                processes=self._processes,
                metrics=self._metrics,
                resumed=job_id in self._resuming,
            )
            self._running[job.job_id] = ctx
            self._running_kinds[job.kind] += 1
            send(self._metrics, Count("jobs_started"))
            threading.Thread(
                target=run_handler,
                args=(handler, ctx, self.actor_ref, self._metrics),
                name=f"jobrelay-job-{job.job_id}",
                daemon=True,
            ).start()
        self._queued.extendleft(reversed(skipped))
        send(self._metrics, Gauge("running_jobs", len(self._running)))

    def _cancel(self, job_id: str, reason: str) -> None:
        ctx = self._running.get(job_id)
        if ctx is not None:
            ctx.cancel(reason)
            return
        if job_id in self._queued_ids:
            self._queued.remove(job_id)
            self._queued_ids.discard(job_id)
            self._decoded.pop(job_id, None)
            self._finish(job_id, JobStatus.CANCELLED, reason)
            return
        # Routine (a cancel racing the job's end) and free for a facilitator to send in bulk: not
        # worth a line each at the default level.
        logger.debug("cancel for job {} that is not running (finished or unknown)", job_id)

    def _finish(self, job_id: str, status: JobStatus, detail: str, attempt: int = 0) -> None:
        self._publish(job_id, status, detail=detail, attempt=attempt)
        send(self._metrics, Count(f"jobs_{status.value}"))

    def _read_request(self, job_id: str) -> JobRequest | None:
        assert self._ledger is not None
        payload = self._ledger.payload(job_id)
        return None if payload is None else msgspec.json.decode(payload, type=JobRequest)

    def _publish(
        self, job_id: str, status: JobStatus, *, detail: str = "", attempt: int = 0, retryable: bool = False
    ) -> pykka.Future[int]:
        """Publish a status of ``job_id``'s current attempt (read from the ledger unless given)."""
        if not attempt:
            job = self._decoded.get(job_id) or self._read_request(job_id)
            attempt = job.attempt if job is not None else 1
        return publish_status(
            self._outbox,
            job_id,
            status,
            at=self._clock(),
            detail=detail,
            attempt=attempt,
            retryable=retryable,
        )


def _cancel_reason(cancel: JobCancel) -> str:
    return cancel.reason or "cancelled by facilitator"
