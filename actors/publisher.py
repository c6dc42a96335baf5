# The worker's outgoing stream as a plain class (the Outbox actor drives it from its thread):
# group commits of publishes together with their job-ledger records, publishes waiting in order
# for room (actors/room_wait.py), the recent rows kept decoded for sending (actors/recent_rows.py),
# and the hand-over of stored data to the session up to its send window's limit (Sender).
# Invariants: a publish future resolves only after its row is committed (durable before
# acknowledged to the caller); publishes are stored in the order they were made, also when some
# wait for room; nothing is handed over twice within a session, and after a new session handing
# over resumes right after the facilitator's acknowledged seq, in order.
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from loguru import logger

from jobrelay.actors.actor_messages import Count, Gauge, Observe, Publish
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.publish_batch import decode_body, encode_body, refusal, unsendable
from jobrelay.actors.recent_rows import RecentRows
from jobrelay.actors.room_wait import WaitingForRoom
from jobrelay.protocol.messages import JobStatusUpdate
from jobrelay.storage import (
    Database,
    Dispatch,
    Dispatches,
    JobLedger,
    Outbox,
    OutboxFull,
    OutboxStats,
    StatusResult,
    StatusUpdate,
    StorageError,
    open_database,
)

__all__ = ["Publisher", "decode_body", "encode_body"]

Items = list[tuple[int, Any]]

# Acknowledged messages whose rows may wait for a bulk delete while the stream is busy.
_DELETE_EVERY = 20_000
# Acknowledged messages whose mark may wait before a publish commit carries it (a beat, every
# 0.25 s, asks the next one to). The mark costs a commit five more statements; a crash that
# loses it only sends again what the facilitator already holds (and drops as duplicates).
_PERSIST_ACK_EVERY = 1_000


class Publisher:
    """The worker's durable outgoing stream (status updates, machine specs, worker events).

    Args:
        config: the worker configuration.
        report: receives Count/Gauge/Observe messages for the Metrics actor.
        clock: seconds since the epoch.
    """

    def __init__(
        self, config: WorkerConfig, *, report: Callable[[Any], object], clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._report = report
        self._clock = clock
        self._db: Database | None = None
        self._outbox: Outbox | None = None
        self._ledger: JobLedger | None = None
        self._blocked = WaitingForRoom(config.publish_timeout, clock)
        self._cache = RecentRows()
        self._busy = False  # something was published since the last beat
        self._ack_due = False  # a beat asked the next publish commit to carry the ack mark
        self._beats = 0
        self.session: str | None = None
        self._handed = 0  # highest seq handed to the session
        self._limit = 0  # highest seq the session's window lets us hand over
        self._as_stored = False  # the session sends JSON: fresh rows go over as their stored bytes
        self._acked = 0
        self._persisted_ack = 0
        self._deleted_through = 0  # acknowledged rows up to here are deleted too
        self._last_seq = 0

    # ------------------------------------------------------------ lifecycle (the actor's thread)

    def open(self) -> None:
        """Open the database (in the thread that will use it)."""
        self._db = open_database(self.config.db_path, durability=self.config.durability, check=False)
        self._outbox = Outbox(
            self._db, "out", max_rows=self.config.max_outbox_rows, max_bytes=self.config.max_outbox_bytes
        )
        self._ledger = JobLedger(self._db)
        self._acked = self._persisted_ack = self._deleted_through = self._outbox.last_acked
        self._outbox.delete_acked()  # what a stop before the bulk delete left
        self._last_seq = self._outbox.last_seq

    def close(self) -> None:
        """Fail what still waits for room and close the database."""
        self.fail([p for _, p in self._blocked.take()])
        if self._db is not None:
            self._db.close()

    def finish(self) -> None:
        """At stop: store what waits for room if it fits now, persist the ack, then close."""
        self.retry_blocked()
        self.persist_ack()
        self.close()

    # ------------------------------------------------------------ queries

    def out_marks(self) -> tuple[str, int, int]:
        """``(epoch, last_acked, last_seq)`` of the outgoing stream."""
        self.persist_ack()  # what a session resumes from is the mark as stored
        outbox = self._store()
        return outbox.epoch, outbox.last_acked, outbox.last_seq

    def stats(self) -> OutboxStats:
        self.persist_ack()  # the depth counts what is acknowledged only once the mark is stored
        return self._store().stats()

    def dispatch(self, job_id: str) -> Dispatch | None:
        assert self._db is not None
        return Dispatches(self._db).get(job_id)

    def in_flight(self) -> int:
        """Handed to the session and not yet acknowledged."""
        return self._handed - self._acked if self.session else 0

    @property
    def waiting(self) -> bool:
        """Publishes wait for room: new ones must queue behind them."""
        return bool(self._blocked)

    # ------------------------------------------------------------ publishing

    def wait(self, publishes: Sequence[Publish]) -> None:
        """Queue ``publishes`` behind those waiting for room (keeps their order)."""
        self._blocked.add(publishes)

    def write(self, batch: list[Publish]) -> bool:
        """Commit ``batch`` in one transaction and resolve its futures; False when it must wait
        for room (it is then kept, in order, to be retried)."""
        encoded = [encode_body(p.body) for p in batch]
        refused = unsendable(batch, encoded, self.config)
        updates = [
            (i, StatusUpdate(p.body.job_id, p.body.status.value, p.body.detail, p.body.progress, p.body.at))
            for i, p in enumerate(batch)
            if isinstance(p.body, JobStatusUpdate) and i not in refused
        ]
        persisted = self._persisted_ack, self._deleted_through, self._ack_due  # what a rollback takes back
        try:
            assigned = self._store_batch(batch, encoded, refused, updates)
        except OutboxFull:
            self._persisted_ack, self._deleted_through, self._ack_due = persisted
            with contextlib.suppress(StorageError):
                self.persist_ack()  # on its own: the room it frees is what the retry needs
            self._blocked.add(batch)
            if self._persisted_ack > persisted[0]:
                self.retry_blocked()  # full only until the stored mark counted the acks
            if self._blocked:
                self._report(Count("outbox_full"))
            return not self._blocked
        except Exception as exc:
            self._persisted_ack, self._deleted_through, self._ack_due = persisted
            for publish in batch:
                publish.future.set_exception(exc_info=(type(exc), exc, exc.__traceback__))
            logger.error("publish of {} messages failed: {}", len(batch), exc)
            return True
        self._resolve(batch, refused, assigned, encoded)
        return True

    def _store_batch(
        self,
        batch: list[Publish],
        encoded: list[tuple[str, bytes]],
        refused: dict[int, Exception],
        updates: list[tuple[int, StatusUpdate]],
    ) -> list[int]:
        """One transaction: the rows, with the statuses, dispatches and ack mark that go with them
        (refusals by the ledger are added to ``refused``); their seqs."""
        outbox, ledger, db = self._store(), self._ledger, self._db
        assert ledger is not None and db is not None
        unstored = self._acked - self._persisted_ack
        carry_ack = unstored >= _PERSIST_ACK_EVERY or (unstored > 0 and self._ack_due)
        if not updates and not carry_ack and all(p.dispatch is None and p.mark is None for p in batch):
            # The common commit (events, specs) is append_many alone: one statement. Each gives
            # up the GIL and waits to take it back behind the connection's threads.
            return outbox.append_many([item for i, item in enumerate(encoded) if i not in refused])
        with db.transaction("publish"):
            self.persist_ack()  # rides along: no fsync of its own
            if updates:
                results = ledger.record_statuses([u for _, u in updates])
                for (i, update), result in zip(updates, results, strict=True):
                    if result is not StatusResult.RECORDED:
                        refused[i] = refusal(update, result, db)
            assigned = outbox.append_many([item for i, item in enumerate(encoded) if i not in refused])
            for publish in batch:  # an external backend's records commit with their statuses
                if publish.dispatch is not None:
                    Dispatches(db).record(*publish.dispatch)
                if publish.mark is not None:
                    Dispatches(db).advance(*publish.mark)
        return assigned

    def _resolve(
        self,
        batch: list[Publish],
        refused: dict[int, Exception],
        assigned: list[int],
        encoded: list[tuple[str, bytes]],
    ) -> None:
        if assigned:
            self._last_seq = assigned[-1]
        now = self._clock()
        # Only what is about to be handed over is kept decoded in memory; the rest is read back.
        cache_limit = 2 * (self._limit - self._acked) if self.session else 0
        seqs, cache = iter(assigned), self._cache
        for i, publish in enumerate(batch):
            if refused and i in refused:
                refusal = refused[i]
                logger.warning("refused to publish: {}", refusal)
                publish.future.set_exception(exc_info=(type(refusal), refusal, None))
                continue
            seq = next(seqs)
            if cache_limit and len(cache) < cache_limit:
                cache.keep(seq, publish.body, encoded[i][1], now)
            publish.future.set(seq)
        self._report(Count("published", len(batch) - len(refused)))
        self._busy = True

    def retry_blocked(self) -> None:
        """Store the longest front part of the waiting publishes that fits now, in order."""
        if not self._blocked:
            return
        stats = self.stats()  # the mark stored first: a write below never finds it moving
        rows_free = self.config.max_outbox_rows - stats.depth_rows
        bytes_free = self.config.max_outbox_bytes - stats.depth_bytes
        fits = 0
        for publish in self._blocked.publishes():
            size = len(encode_body(publish.body)[1])
            if fits >= rows_free or size > bytes_free:
                break
            fits, bytes_free = fits + 1, bytes_free - size
        if not fits:
            return
        ready, waiting = self._blocked.take(fits), self._blocked.take()
        if self.write([p for _, p in ready]):
            self._blocked.restore([], waiting)
        else:  # the ledger or a concurrent change said otherwise: all back, in order
            self._blocked.restore(ready, waiting)

    def fail(self, publishes: list[Publish]) -> None:
        """Fail publishes that found no room before their deadline (or before the stop)."""
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

    # ------------------------------------------------------------ the session

    def fill(self) -> Items:
        """What to hand over to the session now, in seq order (fresh rows from memory, older
        ones from disk); empty when the session's limit or the stream's end is reached."""
        if self.session is None:
            return []
        upto = min(self._last_seq, self._limit)
        if self._handed >= upto:
            return []
        items: Items = []
        items = self._cache.run(self._handed + 1, upto, as_stored=self._as_stored)
        if not items:
            # Sent as stored (msgspec.Raw: no decode and re-encode per message on replay).
            for row in self._store().pending(after=self._handed, limit=upto - self._handed):
                items.append((row.seq, msgspec.Raw(row.payload)))
        if items:
            self._handed = items[-1][0]
        return items

    def opened(self, session_id: str, resume_after: int, limit: int, *, as_stored: bool = False) -> bool:
        """A session opened: hand over from ``resume_after`` on, up to ``limit``; ``as_stored``:
        fresh rows as their stored JSON bytes too (the session sends JSON), so a message is
        encoded once end to end. False (and no session) when rows after ``resume_after`` were
        already deleted: the session must go."""
        if resume_after < self._persisted_ack:
            # An earlier session acknowledged (and we deleted) rows up to _persisted_ack after
            # this session's auth read its marks, and this facilitator resumes below them (it
            # lost them, or lies). They cannot be replayed; the next auth carries the new mark.
            logger.warning(
                "facilitator resumes after seq {}, but seqs up to {} were acked and deleted; reconnecting",
                resume_after,
                self._persisted_ack,
            )
            return False
        if resume_after > self._persisted_ack:
            self._store().ack(resume_after)  # deletes through it, earlier leftovers included
            self._persisted_ack = self._deleted_through = resume_after
        replay = self._last_seq - resume_after
        self.session, self._limit, self._as_stored = session_id, limit, as_stored
        self._handed = self._acked = resume_after
        self._drop_cached(resume_after)
        if replay:
            logger.info("replaying {} messages after seq {}", replay, resume_after)
            self._report(Count("replayed", replay))
        return True

    def closed(self, session_id: str) -> None:
        if session_id == self.session:
            self.session = None

    def acked(self, upto: int, limit: int) -> None:
        """The facilitator holds our stream up to ``upto``; the window now reaches ``limit``."""
        # The window opens at once; the mark is stored later, with no fsync of its own (see
        # _PERSIST_ACK_EVERY). An ack the Outbox read early (actors/ack_slot.py) comes again.
        self._limit = max(self._limit, limit)
        if upto <= self._acked:
            return
        self._report(Count("acked", upto - self._acked))
        self._acked = upto
        self._drop_cached(upto)
        if self._blocked:  # publishers are waiting for room: free it now
            self.persist_ack()
            self.retry_blocked()

    def restart_epoch(self, reason: str) -> None:
        """The facilitator holds more of our stream than our store: start a new epoch."""
        outbox = self._store()
        old = outbox.epoch
        new = outbox.restart_epoch()
        self._cache.clear()  # cached seqs belong to the old numbering
        self.session, self._handed, self._acked, self._persisted_ack = None, 0, 0, 0
        self._deleted_through = 0  # the renumbering deleted every acknowledged row
        self._last_seq = outbox.last_seq
        logger.warning(
            "outbox starts a new stream: epoch {} -> {} ({}); {} unacknowledged messages will be sent again",
            old,
            new,
            reason,
            self._last_seq,
        )
        self._report(Count("epoch_restarts"))

    def persist_ack(self) -> None:
        # The only writer of this stream tracks its marks itself. Acknowledged rows are deleted
        # in bulk (idle beats, every _DELETE_EVERY): a delete per commit dirtied more pages.
        outbox = self._outbox
        if outbox is not None and self._acked > self._persisted_ack:
            delete = self._acked - self._deleted_through >= _DELETE_EVERY
            outbox.ack(self._acked, delete=delete)
            self._persisted_ack = self._acked
            self._ack_due = False
            if delete:
                self._deleted_through = self._acked

    def _drop_cached(self, upto: int) -> None:
        committed_at = self._cache.drop_through(upto)
        if committed_at is not None:
            self._report(Observe("ack_latency", self._clock() - committed_at))

    # ------------------------------------------------------------ beats

    def beat(self, now: float) -> None:
        """Persist the ack, expire publishes that waited too long, report gauges, and when idle
        give a drained backlog's pages back (a bounded step per beat)."""
        if self._busy:
            self._ack_due = True  # the next publish commit carries it: no fsync of its own
        else:
            self.persist_ack()
        self.retry_blocked()
        self.fail(self._blocked.expire(now))
        self._report(Gauge("outbox_depth", self._last_seq - self._acked))  # seqs are contiguous
        self._report(Gauge("in_flight", self.in_flight()))
        self._beats += 1
        if not self._busy or self._beats % 4 == 1:  # a read between commits: once a second when busy
            # Counts the bytes of rows acknowledged since the stored mark, until a commit stores it.
            self._report(Gauge("outbox_bytes", self._store().stats().depth_bytes))
        # Tidying waits for an idle stream: nothing published since the last beat and
        # everything acknowledged (a replay or a drain is not slowed by it).
        if not self._busy and self._acked >= self._last_seq:
            if self._deleted_through < self._persisted_ack:
                self._store().delete_acked()
                self._deleted_through = self._persisted_ack
            with contextlib.suppress(StorageError):
                self._store_db().reclaim_space()
        self._busy = False

    def _store_db(self) -> Database:
        assert self._db is not None, "Publisher not opened"
        return self._db

    def _store(self) -> Outbox:
        assert self._outbox is not None, "Publisher not opened"
        return self._outbox
