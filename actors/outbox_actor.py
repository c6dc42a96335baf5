# Outbox actor: a thin pykka shell over Publisher (actors/publisher.py), which holds the logic.
# The actor owns the thread (SQLite connections are thread-bound), turns its mailbox into group
# commits, and tells the Connection what Publisher hands over.
# Invariants: a publish future resolves only after its row is committed; concurrent publishes
# share one commit; a publish accepted before stop() is stored or failed, never left unresolved.
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.ack_slot import AckSlot
from jobrelay.actors.actor_messages import (
    Beat,
    DropSession,
    PeerAcked,
    Publish,
    SendData,
    SessionClosed,
    SessionOpened,
    Tellable,
    send,
)
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.latch_future import LatchFuture
from jobrelay.actors.publish_batch import PublishBatch, PublishGroup
from jobrelay.actors.publisher import Publisher
from jobrelay.protocol.errors import JobrelayError
from jobrelay.protocol.events import RestartOwnStream
from jobrelay.protocol.messages import JobStatusUpdate, WorkerBody
from jobrelay.storage import Dispatch, OutboxStats

__all__ = ["OutboxActor", "OutboxBehind", "OutboxHandle", "PublishBacklog"]


# Most publishes one group commit takes while more wait in the mailbox: one fsync for a burst,
# but bounded, so the first futures of a long burst do not wait for the last.
_COMMIT_ROWS = 4096


class _Flush(msgspec.Struct, frozen=True):
    pass


class OutboxActor(pykka.ThreadingActor):
    """Durable outgoing stream of the worker (status updates, machine specs, worker events)."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        metrics: Tellable,
        clock: Callable[[], float] = time.time,
        acks: AckSlot | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._acks = acks  # the newest ack, read between the commits of a burst
        self._publisher = Publisher(config, report=lambda m: send(metrics, m), clock=clock)
        self._connection: pykka.ActorRef[Any] | None = None  # of the open session, from SessionOpened
        self._batch: list[Publish] = []
        self._flush_pending = False

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._publisher.open()

    def on_stop(self) -> None:
        # Publishes still in the mailbox were accepted by publish(): store them (or fail them)
        # rather than let pykka drop them with their futures unresolved.
        while not self.actor_inbox.empty():  # this thread is the only reader: get() won't block
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, Publish | PublishBatch):
                items: Sequence[Publish] = (
                    envelope.message.items
                    if isinstance(envelope.message, PublishBatch)
                    else [envelope.message]
                )
                self._accept(items)
                if len(self._batch) >= self.config.max_batch:
                    self._commit()  # chunks: futures resolve as they go, no giant transaction
            elif envelope.reply_to is not None:
                envelope.reply_to.set_exception(
                    exc_info=(pykka.ActorDeadError, pykka.ActorDeadError("Outbox stopped"), None)
                )
        self._commit()
        self._publisher.finish()

    def on_failure(self, *args: object) -> None:
        self._publisher.close()

    # ------------------------------------------------------------ proxy API

    def out_marks(self) -> tuple[str, int, int]:
        """``(epoch, last_acked, last_seq)`` of the outgoing stream."""
        return self._publisher.out_marks()

    def stats(self) -> OutboxStats:
        return self._publisher.stats()

    def dispatch(self, job_id: str) -> Dispatch | None:
        return self._publisher.dispatch(job_id)

    def in_flight(self) -> int:
        return self._publisher.in_flight()

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Publish | PublishBatch):
            # A publish_many batch is taken whole: committed together below.
            self._accept(message.items if isinstance(message, PublishBatch) else (message,))
            if message.backlog is not None:
                message.backlog.taken()
            if self.actor_inbox.empty() or len(self._batch) >= _COMMIT_ROWS:
                self._commit()
            else:
                self._flush_later()
            return
        if isinstance(message, PeerAcked) and not self._publisher.waiting:
            # An ack writes nothing now (the delete rides on the next commit), so it does not
            # cut the group commit short: at a steady trickle the acks interleave with the
            # publishes, and a commit per ack made each publish wait for a queue of fsyncs.
            if message.session_id == self._publisher.session:
                self._publisher.acked(message.upto, message.limit)
                if self._batch:
                    self._flush_later()  # hands over after that commit
                else:
                    self._hand_over()
            return
        self._commit()
        publisher = self._publisher
        match message:
            case _Flush():
                self._flush_pending = False
            case SessionOpened(session_id=sid, resume_after=after, limit=limit, connection=connection):
                self._forget_early_acks()
                self._connection = connection
                if publisher.opened(sid, after, limit, as_stored=message.as_stored):
                    self._hand_over()
                else:
                    send(connection, DropSession(sid, f"cannot resume after seq {after}: acked before"))
            case SessionClosed(session_id=sid):
                self._forget_early_acks()
                publisher.closed(sid)
            case PeerAcked(session_id=sid, upto=upto, limit=limit) if sid == publisher.session:
                publisher.acked(upto, limit)
                self._hand_over()
            case RestartOwnStream(detail=detail):
                publisher.restart_epoch(detail)
            case Beat(at=now):
                publisher.beat(now)
            case PeerAcked():
                pass  # of a session that ended
            case _:
                logger.error("Outbox got an unknown message {!r}", message)

    def _flush_later(self) -> None:
        """More messages are queued: commit after them, together (group commit)."""
        if self._batch and not self._flush_pending:
            self._flush_pending = True
            self.actor_ref.tell(_Flush())

    def _accept(self, publishes: Sequence[Publish]) -> None:
        if self._publisher.waiting:
            self._publisher.wait(publishes)  # behind the publishes waiting for room: order holds
        else:
            self._batch.extend(publishes)

    def _commit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._publisher.write(batch)
        self._hand_over()

    def _forget_early_acks(self) -> None:
        if self._acks is not None:
            self._acks.clear()

    def _hand_over(self) -> None:
        publisher = self._publisher
        newest = self._acks.newest() if self._acks is not None else None
        if newest is not None and newest.session_id == publisher.session and not publisher.waiting:
            publisher.acked(newest.upto, newest.limit)  # ahead of its copy in the mailbox
        items = publisher.fill()
        session = publisher.session
        if items and session is not None:
            send(self._connection, SendData(session, items))


class OutboxBehind(JobrelayError):
    """The Outbox has not taken the publishes queued before this one in time (back-pressure on
    a caller publishing faster than the disk commits); nothing was stored."""


class PublishBacklog:
    """Backpressure for publishes the Outbox has not taken from its mailbox yet.

    Without a bound a caller publishing in a loop grows the mailbox without end (memory, and a
    stop that waits behind it); past ``limit`` a publisher waits for the Outbox to catch up, up to
    ``timeout``, then the publish fails with OutboxFull like one that found no room.
    """

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._queued = 0
        self._changed = threading.Condition()

    def admit(self, *, always: bool = False) -> bool:
        """Count one more queued publish; False when none fits within ``timeout``. ``always``
        admits at once (a job's terminal status: it must never fail, and running jobs bound it)."""
        with self._changed:
            if (
                not always
                and self._queued >= self.limit
                and not self._changed.wait_for(lambda: self._queued < self.limit, self.timeout)
            ):
                return False
            self._queued += 1
            return True

    def taken(self) -> None:
        with self._changed:
            self._queued -= 1
            if self._queued == self.limit - 1:
                self._changed.notify_all()


class OutboxHandle:
    """What callers use: ``publish(body)`` returns a future resolved with the seq once durable.

    Publishing is a `tell` (no blocking ask per message); concurrent publishes share a commit.
    """

    def __init__(self, ref: pykka.ActorRef[OutboxActor], backlog: PublishBacklog | None = None) -> None:
        self.actor_ref = ref
        self._proxy = cast(Any, ref.proxy())
        self._backlog = backlog or PublishBacklog(limit=50_000, timeout=30.0)

    def publish(
        self,
        body: WorkerBody,
        *,
        mark: tuple[str, str, str] | None = None,
        dispatch: tuple[str, int, str, str] | None = None,
    ) -> pykka.Future[int]:
        """Durably queue ``body`` for the facilitator.

        ``mark`` (job id, task id, stream position): the relayed position of an external task's
        events; ``dispatch`` (job id, attempt, backend, task id): the job's dispatch to an external
        backend. Either is committed together with ``body`` (storage.Dispatches).

        The future fails with OutboxFull when there is no room within ``publish_timeout``,
        OutboxBehind when the Outbox has not taken ``backlog.limit`` earlier publishes within
        it, TerminalStatusError for a second terminal status of a job, or StorageError.
        """
        future: LatchFuture[int] = LatchFuture()
        terminal = isinstance(body, JobStatusUpdate) and body.status.terminal
        if not self._backlog.admit(always=terminal):
            backlog = self._backlog
            exc = OutboxBehind(f"{backlog.limit} publishes still queued after {backlog.timeout:g}s")
            future.set_exception(exc_info=(OutboxBehind, exc, None))
            return future
        try:
            self.actor_ref.tell(Publish(body, future, self._backlog, mark, dispatch))
        except pykka.ActorDeadError:
            self._backlog.taken()
            raise
        return future

    def publish_many(self, bodies: Sequence[WorkerBody]) -> pykka.Future[list[int]]:
        """Durably queue ``bodies``, in order, under one future: resolved with their seqs once
        all are durable (one mailbox message and, room permitting, one commit: the way to
        publish a burst). Each message keeps its own checks: the future fails with
        PublishManyError (which names the refused ones and the seqs of the stored ones) when
        any was refused, or OutboxBehind as ``publish`` does; nothing of the batch is then lost
        silently.
        """
        group = PublishGroup(len(bodies))
        if not bodies:
            return group.future
        terminal = any(isinstance(b, JobStatusUpdate) and b.status.terminal for b in bodies)
        if not self._backlog.admit(always=terminal):
            backlog = self._backlog
            exc = OutboxBehind(f"{backlog.limit} publishes still queued after {backlog.timeout:g}s")
            group.future.set_exception(exc_info=(OutboxBehind, exc, None))
            return group.future
        items = [Publish(body, part) for body, part in zip(bodies, group.parts, strict=True)]
        try:
            self.actor_ref.tell(PublishBatch(items, self._backlog))
        except pykka.ActorDeadError:
            self._backlog.taken()
            raise
        return group.future

    def stats(self) -> pykka.Future[OutboxStats]:
        return cast("pykka.Future[OutboxStats]", self._proxy.stats())

    def dispatch(self, job_id: str) -> pykka.Future[Dispatch | None]:
        """The job's dispatch to an external backend, as committed (None: none)."""
        return cast("pykka.Future[Dispatch | None]", self._proxy.dispatch(job_id))

    def in_flight(self) -> pykka.Future[int]:
        return cast("pykka.Future[int]", self._proxy.in_flight())

    def out_marks(self) -> pykka.Future[tuple[str, int, int]]:
        return cast("pykka.Future[tuple[str, int, int]]", self._proxy.out_marks())
