# Outbox actor: owns the worker's SQLite connection for outgoing data (storage.Outbox) and the
# job ledger's status records, so a status update and its ledger entry commit together.
# Invariants: a publish future resolves only after its row is committed (durable before
# acknowledged to the caller); concurrent publishes share one commit (group commit); at most
# `window` seqs are in flight; after a new session, sending resumes right after the
# facilitator's acknowledged seq, in order; nothing is resent within a session.
from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.messages import (
    Beat,
    Count,
    Gauge,
    Observe,
    PeerAcked,
    Publish,
    RestartEpoch,
    SendData,
    SessionClosed,
    SessionOpened,
    send,
)
from jobrelay.protocol.codec import check_sendable
from jobrelay.protocol.errors import LocalProtocolError
from jobrelay.protocol.messages import JobStatusUpdate, WorkerBody
from jobrelay.storage import (
    Database,
    JobLedger,
    Outbox,
    OutboxFull,
    OutboxStats,
    StatusResult,
    StatusUpdate,
    StorageError,
    TerminalStatusError,
    UnknownJobError,
    open_database,
)

__all__ = ["OutboxActor", "OutboxHandle", "decode_body", "encode_body"]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(WorkerBody)
PREFETCH = 4


def encode_body(body: WorkerBody) -> tuple[str, bytes]:
    """``(kind, payload)`` as stored: the body's tag and its JSON encoding."""
    return type(body).__struct_config__.tag, _ENCODER.encode(body)  # type: ignore[return-value]


def decode_body(payload: bytes) -> WorkerBody:
    body: WorkerBody = _DECODER.decode(payload)
    return body


class _Flush(msgspec.Struct, frozen=True):
    pass


class OutboxActor(pykka.ThreadingActor):
    """Durable outgoing stream of the worker (status updates, machine specs, worker events)."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        metrics: pykka.ActorRef[Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.config = config
        self._metrics = metrics
        self._clock = clock
        self._db: Database | None = None
        self._outbox: Outbox | None = None
        self._ledger: JobLedger | None = None
        self._connection: pykka.ActorRef[Any] | None = None
        self._batch: list[Publish] = []
        self._flush_pending = False
        self._blocked: list[tuple[float, Publish]] = []
        self._cache: OrderedDict[int, tuple[WorkerBody, float]] = OrderedDict()
        self._session: str | None = None
        self._busy = False  # something was published since the last beat
        self._window = 0
        self._sent = 0
        self._acked = 0

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._db = open_database(self.config.db_path, durability=self.config.durability, check=False)
        self._outbox = Outbox(
            self._db, "out", max_rows=self.config.max_outbox_rows, max_bytes=self.config.max_outbox_bytes
        )
        self._ledger = JobLedger(self._db)
        self._acked = self._persisted_ack = self._outbox.last_acked
        self._last_seq = self._outbox.last_seq

    def on_stop(self) -> None:
        # Publishes still in the mailbox were accepted by publish(): store them (or fail them)
        # rather than let pykka drop them with their futures unresolved.
        while not self.actor_inbox.empty():  # this thread is the only reader: get() won't block
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, Publish):
                if self._blocked:
                    self._blocked.append((0.0, envelope.message))
                else:
                    self._batch.append(envelope.message)
            elif envelope.reply_to is not None:
                envelope.reply_to.set_exception(
                    exc_info=(pykka.ActorDeadError, pykka.ActorDeadError("Outbox stopped"), None)
                )
        self._commit()
        self._retry_blocked()
        self._persist_ack()
        self._close()

    def on_failure(self, *args: object) -> None:
        self._close()

    def _close(self) -> None:
        blocked, self._blocked = self._blocked, []
        self._fail_blocked([p for _, p in blocked])
        if self._db is not None:
            self._db.close()

    # ------------------------------------------------------------ proxy API

    def attach(self, connection: pykka.ActorRef[Any]) -> None:
        """Where SendData goes (set before the Connection starts)."""
        self._connection = connection

    def out_marks(self) -> tuple[str, int, int]:
        """``(epoch, last_acked, last_seq)`` of the outgoing stream."""
        outbox = self._store()
        return outbox.epoch, outbox.last_acked, outbox.last_seq

    def stats(self) -> OutboxStats:
        return self._store().stats()

    def in_flight(self) -> int:
        return self._sent - self._acked if self._session else 0

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Publish):
            if self._blocked:
                # Waiting for room: queue behind the blocked ones so order holds.
                self._blocked.append((self._deadline(message), message))
                return
            self._batch.append(message)
            if self.actor_inbox.empty() or len(self._batch) >= self.config.max_batch:
                self._commit()
            elif not self._flush_pending:
                # More messages are queued: commit after them, together (group commit).
                self._flush_pending = True
                self.actor_ref.tell(_Flush())
            return
        self._commit()
        match message:
            case _Flush():
                self._flush_pending = False
            case SessionOpened(session_id=sid, resume_after=after, window=window):
                self._on_opened(sid, after, window)
            case SessionClosed(session_id=sid) if sid == self._session:
                self._session = None
            case PeerAcked(session_id=sid, upto=upto) if sid == self._session:
                self._on_acked(upto)
            case RestartEpoch(reason=reason):
                self._restart_epoch(reason)
            case Beat(at=now):
                self._persist_ack()
                self._expire_blocked(now)
                self._report_gauges()
                if not self._busy:  # idle: give a drained backlog's pages back, a step a beat
                    with contextlib.suppress(StorageError):
                        self._store_db().reclaim_space()
                self._busy = False
            case SessionClosed() | PeerAcked():
                pass
            case _:
                logger.error("Outbox got an unknown message {!r}", message)

    # ------------------------------------------------------------ internals

    def _store_db(self) -> Database:
        assert self._db is not None, "Outbox actor not started"
        return self._db

    def _store(self) -> Outbox:
        assert self._outbox is not None, "Outbox actor not started"
        return self._outbox

    def _commit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._write(batch)
        self._fill()

    def _write(self, batch: list[Publish]) -> bool:
        """Commit ``batch`` in one transaction; False if it has to wait for room (then it is
        kept, in order, in ``_blocked``)."""
        outbox, ledger, db = self._store(), self._ledger, self._db
        assert ledger is not None and db is not None
        encoded = [encode_body(p.body) for p in batch]
        refused: dict[int, Exception] = {}
        for i, (publish, (_, payload)) in enumerate(zip(batch, encoded, strict=True)):
            try:
                check_sendable(
                    publish.body,
                    max_frame_bytes=self.config.max_frame_bytes,
                    formats=self.config.formats,
                    json_body_size=len(payload),
                )
            except LocalProtocolError as exc:
                refused[i] = exc
        updates = [
            (i, StatusUpdate(p.body.job_id, p.body.status.value, p.body.detail, p.body.progress, p.body.at))
            for i, p in enumerate(batch)
            if isinstance(p.body, JobStatusUpdate) and i not in refused
        ]
        try:
            with db.transaction("publish"):
                self._persist_ack()  # rides along: no fsync of its own
                if updates:
                    results = ledger.record_statuses([u for _, u in updates])
                    for (i, update), result in zip(updates, results, strict=True):
                        if result is not StatusResult.RECORDED:
                            refused[i] = _refusal(update, result, db)
                keep = [item for i, item in enumerate(encoded) if i not in refused]
                assigned = outbox.append_many(keep)
                seqs = iter(assigned)
        except OutboxFull:
            self._blocked.extend((self._deadline(p), p) for p in batch)
            send(self._metrics, Count("outbox_full"))
            return False
        except Exception as exc:
            for publish in batch:
                publish.future.set_exception(exc_info=(type(exc), exc, exc.__traceback__))
            logger.error("publish of {} messages failed: {}", len(batch), exc)
            return True
        if assigned:
            self._last_seq = assigned[-1]
        now = self._clock()
        cache_limit = self._window * PREFETCH * 2 if self._session else 0
        for i, publish in enumerate(batch):
            if i in refused:
                refusal = refused[i]
                logger.warning("refused to publish: {}", refusal)
                publish.future.set_exception(exc_info=(type(refusal), refusal, None))
                continue
            seq = next(seqs)
            # Only what is about to be sent is kept decoded in memory; the rest is read back.
            if len(self._cache) < cache_limit:
                self._cache[seq] = (publish.body, now)
            publish.future.set(seq)
        send(self._metrics, Count("published", len(batch) - len(refused)))
        self._busy = True
        return True

    def _deadline(self, publish: Publish) -> float:
        """When a publish waiting for room fails. A job's terminal status never does: the
        job must end exactly once, so it waits for the facilitator to free room."""
        body = publish.body
        if isinstance(body, JobStatusUpdate) and body.status.terminal:
            return math.inf
        return self._clock() + self.config.publish_timeout

    def _fill(self) -> None:
        """Send what the window allows, in seq order (fresh rows from memory, older from disk)."""
        if self._session is None or self._connection is None:
            return
        outbox = self._store()
        # Hand over up to PREFETCH windows: the Connection keeps the surplus and sends it the
        # moment an ack opens the window (acks reach us only after queued publishes).
        capacity = self._window * PREFETCH - (self._sent - self._acked)
        last = self._last_seq
        if capacity <= 0 or self._sent >= last:
            return
        upto = min(last, self._sent + capacity)
        items: list[tuple[int, Any]] = []
        seq = self._sent + 1
        if seq in self._cache:
            while seq <= upto and seq in self._cache:
                items.append((seq, self._cache[seq][0]))
                seq += 1
        else:
            for row in outbox.pending(after=self._sent, limit=upto - self._sent):
                items.append((row.seq, decode_body(row.payload)))
        if items:
            self._sent = items[-1][0]
            send(self._connection, SendData(self._session, items))

    def _on_opened(self, session_id: str, resume_after: int, window: int) -> None:
        outbox = self._store()
        if resume_after > self._persisted_ack:
            outbox.ack(resume_after)
            self._persisted_ack = resume_after
        replay = self._last_seq - resume_after
        self._session, self._window = session_id, window
        self._sent = self._acked = resume_after
        self._drop_cached(resume_after)
        if replay:
            logger.info("replaying {} messages after seq {}", replay, resume_after)
            send(self._metrics, Count("replayed", replay))
        self._fill()

    def _restart_epoch(self, reason: str) -> None:
        outbox = self._store()
        old = outbox.epoch
        new = outbox.restart_epoch()
        self._cache.clear()  # cached seqs belong to the old numbering
        self._session, self._sent, self._acked, self._persisted_ack = None, 0, 0, 0
        self._last_seq = outbox.last_seq
        logger.warning(
            "outbox starts a new stream: epoch {} -> {} ({}); {} unacknowledged messages will be sent again",
            old,
            new,
            reason,
            self._last_seq,
        )
        send(self._metrics, Count("epoch_restarts"))

    def _on_acked(self, upto: int) -> None:
        # The window opens at once; deleting the acked rows waits for the next commit or beat.
        # Losing that delete in a crash only re-sends rows the facilitator already holds (and
        # drops as duplicates), so it needs no fsync of its own.
        send(self._metrics, Count("acked", upto - self._acked))
        self._acked = upto
        self._drop_cached(upto)
        if self._blocked:  # publishers are waiting for room: free it now
            self._persist_ack()
            self._retry_blocked()
        self._fill()

    def _persist_ack(self) -> None:
        # This actor is the stream's only writer, so it tracks the marks itself instead of
        # reading them back from SQLite on every commit.
        outbox = self._outbox
        if outbox is not None and self._acked > self._persisted_ack:
            outbox.ack(self._acked)
            self._persisted_ack = self._acked

    def _drop_cached(self, upto: int) -> None:
        now = self._clock()
        cache = self._cache
        while cache:
            seq, (_, at) = next(iter(cache.items()))
            if seq > upto:
                break
            del cache[seq]
            if seq == upto:  # one sample per ack keeps the histogram cheap
                send(self._metrics, Observe("ack_latency", now - at))

    def _retry_blocked(self) -> None:
        """Store the longest front part of the waiting publishes that fits now, in order."""
        if not self._blocked:
            return
        stats = self._store().stats()
        rows_free = self.config.max_outbox_rows - stats.depth_rows
        bytes_free = self.config.max_outbox_bytes - stats.depth_bytes
        fits = 0
        for _, publish in self._blocked:
            size = len(encode_body(publish.body)[1])
            if fits >= rows_free or size > bytes_free:
                break
            fits, bytes_free = fits + 1, bytes_free - size
        if not fits:
            return
        ready, waiting = self._blocked[:fits], self._blocked[fits:]
        self._blocked = []
        if not self._write([p for _, p in ready]):
            self._blocked = ready  # the ledger or a concurrent change said otherwise: keep order
        self._blocked.extend(waiting)

    def _expire_blocked(self, now: float) -> None:
        self._retry_blocked()
        expired = [p for deadline, p in self._blocked if deadline <= now]
        if not expired:
            return
        self._blocked = [(d, p) for d, p in self._blocked if d > now]
        self._fail_blocked(expired)

    def _fail_blocked(self, publishes: list[Publish]) -> None:
        """Fail publishes that found no room before their deadline (or before the stop); the
        caller has already taken them out of ``_blocked``."""
        if not publishes or self._outbox is None:
            return
        stats = self._outbox.stats()
        exc = OutboxFull(
            "out",
            depth_rows=stats.depth_rows,
            depth_bytes=stats.depth_bytes,
            max_rows=self.config.max_outbox_rows,
            max_bytes=self.config.max_outbox_bytes,
            adding_rows=len(publishes),
            adding_bytes=0,
        )
        for publish in publishes:
            publish.future.set_exception(exc_info=(OutboxFull, exc, None))

    def _report_gauges(self) -> None:
        stats = self._store().stats()
        send(self._metrics, Gauge("outbox_depth", stats.depth_rows))
        send(self._metrics, Gauge("outbox_bytes", stats.depth_bytes))
        send(self._metrics, Gauge("outbox_oldest_age", stats.oldest_unacked_age or 0.0))
        send(self._metrics, Gauge("in_flight", self.in_flight()))


def _refusal(update: StatusUpdate, result: StatusResult, db: Database) -> Exception:
    if result is StatusResult.UNKNOWN_JOB:
        return UnknownJobError(update.job_id, path=db.path)
    if result is StatusResult.ALREADY_TERMINAL:
        return TerminalStatusError(update.job_id, "terminal", update.status, path=db.path)
    return ValueError(f"invalid status update {update!r}")


class OutboxHandle:
    """What callers use: ``publish(body)`` returns a future resolved with the seq once durable.

    Publishing is a `tell` (no blocking ask per message); concurrent publishes share a commit.
    """

    def __init__(self, ref: pykka.ActorRef[OutboxActor]) -> None:
        self.actor_ref = ref
        self._proxy = cast(Any, ref.proxy())

    def publish(self, body: WorkerBody) -> pykka.Future[int]:
        """Durably queue ``body`` for the facilitator.

        The future fails with OutboxFull when there is no room within ``publish_timeout``,
        TerminalStatusError for a second terminal status of a job, or StorageError.
        """
        future: pykka.ThreadingFuture[int] = pykka.ThreadingFuture()
        self.actor_ref.tell(Publish(body, future))
        return future

    def stats(self) -> pykka.Future[OutboxStats]:
        return cast("pykka.Future[OutboxStats]", self._proxy.stats())

    def in_flight(self) -> pykka.Future[int]:
        return cast("pykka.Future[int]", self._proxy.in_flight())

    def out_marks(self) -> pykka.Future[tuple[str, int, int]]:
        return cast("pykka.Future[tuple[str, int, int]]", self._proxy.out_marks())
