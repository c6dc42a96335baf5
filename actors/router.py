# JobRouter actor: owns the inbox (what the facilitator sent) and routes job requests to
# handlers. Invariants: data is committed to the inbox before the Connection is told to ack it;
# a job id is started at most once (ledger dedup); at most `max_concurrent_jobs` handlers run;
# every job gets exactly one terminal status (the Outbox's ledger check refuses a second one);
# a handler starts only after its `running` status is durable, so at start-up a job that reached
# `running` before a crash ends as failed: worker_restarted, and one that never did is run now.
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.handlers import Handler, JobContext, run_handler
from jobrelay.actors.messages import (
    Count,
    DropSession,
    Gauge,
    Incoming,
    JobDone,
    NewInStream,
    Persisted,
    send,
)
from jobrelay.actors.outbox import OutboxHandle
from jobrelay.protocol.messages import FacilitatorBody, JobCancel, JobRequest, JobStatus, JobStatusUpdate
from jobrelay.storage import AcceptResult, Database, Inbox, JobLedger, open_database

__all__ = ["STREAM", "JobRouter"]

STREAM = "facilitator"
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(FacilitatorBody)


class JobRouter(pykka.ThreadingActor):
    """Accepts job requests and cancels from the facilitator and runs them through handlers."""

    def __init__(
        self,
        config: WorkerConfig,
        handlers: dict[str, Handler],
        *,
        outbox: OutboxHandle,
        metrics: pykka.ActorRef[Any],
        clock: Callable[[], float],
    ) -> None:
        super().__init__()
        self.config = config
        self._handlers = dict(handlers)
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._connection: pykka.ActorRef[Any] | None = None
        self._db: Database | None = None
        self._inbox: Inbox | None = None
        self._ledger: JobLedger | None = None
        self._running: dict[str, JobContext] = {}
        # Job ids only: a long backlog costs a few bytes per job; requests are read back from
        # the ledger when their turn comes.
        self._queued: deque[str] = deque()
        self._queued_ids: set[str] = set()
        self._draining = False

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._db = open_database(self.config.db_path, durability=self.config.durability, check=False)
        self._inbox = Inbox(self._db)
        self._ledger = JobLedger(self._db)
        for record in self._ledger.unfinished():
            payload = self._ledger.payload(record.job_id)
            if record.status is None and payload is not None:
                self._route(msgspec.json.decode(payload, type=JobRequest))  # recorded, not yet accepted
                continue
            if record.status == JobStatus.ACCEPTED.value:
                self._queue(record.job_id)  # never started: this is its first and only run
                continue
            if getattr(self._handlers.get(record.kind), "resumable", False):
                logger.info("job {} was interrupted by a restart: its handler resumes it", record.job_id)
                self._queue(record.job_id)
                continue
            logger.warning("job {} was interrupted by a restart: failing it", record.job_id)
            self._publish(record.job_id, JobStatus.FAILED, detail="worker_restarted")
            send(self._metrics, Count("jobs_failed"))
        for row in self._inbox.unconsumed(STREAM):
            self._apply(row.seq, _DECODER.decode(row.payload))

    def on_stop(self) -> None:
        self.drain("worker stopping")
        if self._db is not None:
            self._db.close()

    def on_failure(self, *args: object) -> None:
        self.drain("worker crashed")
        if self._db is not None:
            self._db.close()

    # ------------------------------------------------------------ proxy API

    def attach(self, connection: pykka.ActorRef[Any]) -> None:
        self._connection = connection

    def in_marks(self) -> tuple[str, int]:
        """``(epoch, high-water mark)`` of the facilitator's stream."""
        assert self._inbox is not None
        return self._inbox.state(STREAM)

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def running(self) -> list[str]:
        return list(self._running)

    def drain(self, reason: str) -> int:
        """Stop taking work: ask every running handler to stop and start nothing new.

        Jobs still queued are left as they are: they never started, their requests are
        durable, and the next start of the worker runs them. Returns how many were running.
        """
        self._draining = True
        for ctx in self._running.values():
            ctx.cancel(reason)
        return len(self._running)

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        match message:
            case Incoming(session_id=sid, items=items):
                self._on_incoming(sid, items)
            case NewInStream(epoch=epoch, hwm=hwm):
                assert self._inbox is not None
                if self._inbox.start_epoch(STREAM, epoch, hwm):
                    logger.info("facilitator stream epoch {} starts after seq {}", epoch, hwm)
                elif self._inbox.raise_hwm(STREAM, epoch, hwm):
                    logger.warning(
                        "our inbox was behind the facilitator's acknowledged seq {} "
                        "(database restored from an older copy?); resuming after it",
                        hwm,
                    )
            case JobDone(job_id=job_id):
                self._running.pop(job_id, None)
                self._start_queued()
            case _:
                logger.error("JobRouter got an unknown message {!r}", message)

    # ------------------------------------------------------------ internals

    def _on_incoming(self, session_id: str, items: list[tuple[int, Any]]) -> None:
        assert self._inbox is not None and self._connection is not None
        rows = [(seq, type(body).__struct_config__.tag, _ENCODER.encode(body)) for seq, body in items]
        results = self._inbox.accept_many(STREAM, rows)
        accepted: list[tuple[int, Any]] = []
        durable_upto = 0
        for (seq, body), result in zip(items, results, strict=True):
            if result is AcceptResult.GAP:
                # Our inbox disagrees with the session about where the stream is: acknowledge
                # nothing past the gap and reconnect, so the stream resumes from what is durable.
                logger.error("seq {} from the facilitator leaves a gap in our inbox; reconnecting", seq)
                send(self._connection, DropSession(session_id, f"inbox gap at seq {seq}"))
                break
            durable_upto = seq
            if result is AcceptResult.ACCEPTED:
                accepted.append((seq, body))
        duplicates = (durable_upto - items[0][0] + 1 if durable_upto else 0) - len(accepted)
        if duplicates:
            send(self._metrics, Count("duplicates_dropped", duplicates))
        if durable_upto:
            # Durable now: the facilitator may forget these.
            send(self._connection, Persisted(session_id, durable_upto))
        for seq, body in accepted:
            self._apply(seq, body)

    def _apply(self, seq: int, body: FacilitatorBody) -> None:
        assert self._inbox is not None and self._ledger is not None
        match body:
            case JobRequest():
                send(self._metrics, Count("jobs_received"))
                if self._ledger.record_request(body.job_id, body.kind, _ENCODER.encode(body)):
                    self._route(body)
                else:
                    logger.info("job {} arrived again; already handled", body.job_id)
                    send(self._metrics, Count("jobs_duplicate"))
            case JobCancel():
                self._cancel(body.job_id, body.reason or "cancelled by facilitator")
        self._inbox.mark_consumed(STREAM, seq)

    def _route(self, job: JobRequest) -> None:
        if job.kind not in self._handlers:
            logger.warning("job {}: no handler for kind {!r}", job.job_id, job.kind)
            self._finish(job.job_id, JobStatus.REJECTED, f"unknown job kind {job.kind!r}")
            send(self._metrics, Count("jobs_rejected"))
            return
        self._publish(job.job_id, JobStatus.ACCEPTED)
        self._queue(job.job_id)

    def _queue(self, job_id: str) -> None:
        self._queued.append(job_id)
        self._queued_ids.add(job_id)
        self._start_queued()

    def _start_queued(self) -> None:
        assert self._ledger is not None
        while not self._draining and self._queued and len(self._running) < self.config.max_concurrent_jobs:
            job_id = self._queued.popleft()
            self._queued_ids.discard(job_id)
            payload = self._ledger.payload(job_id)
            if payload is None:  # pragma: no cover - the ledger keeps unfinished jobs
                logger.error("job {} vanished from the ledger before it could start", job_id)
                continue
            job = msgspec.json.decode(payload, type=JobRequest)
            if job.kind not in self._handlers:  # its handler was removed since it was accepted
                self._finish(job_id, JobStatus.REJECTED, f"no handler for job kind {job.kind!r}")
                continue
            ctx = JobContext(job, publish=self._publish, clock=self._clock)
            self._running[job.job_id] = ctx
            send(self._metrics, Count("jobs_started"))
            threading.Thread(
                target=run_handler,
                args=(self._handlers[job.kind], ctx, self.actor_ref, self._metrics),
                name=f"jobrelay-job-{job.job_id}",
                daemon=True,
            ).start()
        send(self._metrics, Gauge("running_jobs", len(self._running)))

    def _cancel(self, job_id: str, reason: str) -> None:
        ctx = self._running.get(job_id)
        if ctx is not None:
            ctx.cancel(reason)
            return
        if job_id in self._queued_ids:
            self._queued.remove(job_id)
            self._queued_ids.discard(job_id)
            self._finish(job_id, JobStatus.CANCELLED, reason)
            return
        logger.info("cancel for job {} that is not running (finished or unknown)", job_id)

    def _finish(self, job_id: str, status: JobStatus, detail: str) -> None:
        self._publish(job_id, status, detail=detail)
        send(self._metrics, Count(f"jobs_{status.value}"))

    def _publish(
        self, job_id: str, status: JobStatus, *, detail: str = "", progress: float | None = None
    ) -> pykka.Future[int]:
        update = JobStatusUpdate(
            job_id=job_id, status=status, at=self._clock(), progress=progress, detail=detail
        )
        return self._outbox.publish(update)


class JobRouterProxy:
    """Typed handle on the JobRouter (calls return pykka Futures)."""

    def __init__(self, ref: pykka.ActorRef[JobRouter]) -> None:
        self.actor_ref = ref
        self._proxy = cast(Any, ref.proxy())

    def register(self, kind: str, handler: Handler) -> pykka.Future[None]:
        return cast("pykka.Future[None]", self._proxy.register(kind, handler))

    def running(self) -> pykka.Future[list[str]]:
        return cast("pykka.Future[list[str]]", self._proxy.running())

    def drain(self, reason: str) -> pykka.Future[int]:
        return cast("pykka.Future[int]", self._proxy.drain(reason))

    def in_marks(self) -> pykka.Future[tuple[str, int]]:
        return cast("pykka.Future[tuple[str, int]]", self._proxy.in_marks())
