# Outbox actor: a thin pykka shell over Publisher (actors/publisher.py), which holds the logic.
# The actor owns the thread (SQLite connections are thread-bound), turns its mailbox into group
# commits, and tells the Connection what Publisher hands over.
# Invariants: a publish future resolves only after its row is committed; concurrent publishes
# share one commit; a publish accepted before stop() is stored or failed, never left unresolved.
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pykka
from loguru import logger

from jobrelay.actors.actor_messages import (
    Beat,
    DropSession,
    PeerAcked,
    Publish,
    SendData,
    SessionClosed,
    SessionOpened,
    send,
)
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.publisher import Publisher
from jobrelay.protocol.events import RestartOwnStream
from jobrelay.protocol.messages import WorkerBody
from jobrelay.storage import OutboxStats

__all__ = ["OutboxActor", "OutboxHandle"]


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
            if isinstance(envelope.message, Publish):
                self._accept(envelope.message)
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

    def in_flight(self) -> int:
        return self._publisher.in_flight()

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Publish):
            self._accept(message)
            if self.actor_inbox.empty() or len(self._batch) >= self.config.max_batch:
                self._commit()
            elif self._batch and not self._flush_pending:
                # More messages are queued: commit after them, together (group commit).
                self._flush_pending = True
                self.actor_ref.tell(_Flush())
            return
        self._commit()
        publisher = self._publisher
        match message:
            case _Flush():
                self._flush_pending = False
            case SessionOpened(session_id=sid, resume_after=after, limit=limit, connection=connection):
                self._connection = connection
                if publisher.opened(sid, after, limit):
                    self._hand_over()
                else:
                    send(connection, DropSession(sid, f"cannot resume after seq {after}: acked before"))
            case SessionClosed(session_id=sid):
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

    def _accept(self, publish: Publish) -> None:
        if self._publisher.waiting:
            self._publisher.wait(publish)  # behind the publishes waiting for room: order holds
        else:
            self._batch.append(publish)

    def _commit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._publisher.write(batch)
        self._hand_over()

    def _hand_over(self) -> None:
        items = self._publisher.fill()
        session = self._publisher.session
        if items and session is not None:
            send(self._connection, SendData(session, items))


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
