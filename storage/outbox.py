# The durable outgoing stream: append → seq, cumulative ack, streamed replay, bounds.
# Messages are stored in segments (storage/segments.py): one row per append of up to
# MAX_MESSAGES messages, so a burst is one insert and an ack a few deletes.
# Invariants (per stream name within one database file):
# - Seqs start at 1, are assigned contiguously in append order and never reused: ``last_seq``
#   lives in outbox_streams and survives deleting every row and restarting the process.
# - Stored messages are the unacknowledged ones, seqs last_acked+1 … last_seq, contiguous, plus
#   acknowledged ones not deleted yet: the head of a segment not acknowledged whole, and what
#   ack(delete=False) left for delete_acked(). They are never read: every read starts after
#   last_acked, and the depth counters leave them out.
# - depth_rows/depth_bytes in outbox_streams equal the count and payload bytes of unacknowledged
#   messages, and never exceed max_rows/max_bytes through append (OutboxFull instead; nothing stored).
# - Every public call is one transaction: it happens completely or not at all.
# - Inserting a segment moves last_seq and the depth (the schema's triggers, v9), and is refused
#   unless it starts right after last_seq. ``_tail`` (last_seq and depth as committed) lets an
#   append outside a transaction be that one insert; anything else that writes drops it.
# - ``epoch`` is created with the stream and changes only through restart_epoch().
from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, NamedTuple, TypeVar

from jobrelay.storage.database import Database
from jobrelay.storage.errors import AckOutOfRange, OutboxFull, StorageError
from jobrelay.storage.segment_table import SegmentTable
from jobrelay.storage.segments import CorruptSegment, OutboxRow, pack

__all__ = ["Outbox", "OutboxRow", "OutboxStats"]

T = TypeVar("T")

_CHUNK: Final = 1000  # messages read per step while streaming pending()
_RECLAIM_EVERY_BYTES: Final = 8 << 20  # check for free pages after this many deleted bytes

_STREAM: Final = (
    "SELECT id, epoch, last_seq, last_acked, depth_rows, depth_bytes FROM outbox_streams WHERE stream = ?"
)
_OUT_OF_SEQUENCE: Final = "outbox segment out of sequence"  # the v9 trigger's message


class OutboxStats(NamedTuple):
    """A stream's depth and position.

    Attributes:
        stream: The stream name.
        epoch: The stream's epoch.
        depth_rows: Unacknowledged rows stored.
        depth_bytes: Payload bytes of those rows.
        oldest_unacked_age: Seconds since the oldest unacknowledged row was appended, or None.
        last_seq: The last assigned seq (0 before the first append).
        last_acked: The highest acknowledged seq (0 before the first ack).
    """

    stream: str
    epoch: str
    depth_rows: int
    depth_bytes: int
    oldest_unacked_age: float | None
    last_seq: int
    last_acked: int


class Outbox:
    """One outgoing stream of a database (a file may hold several, e.g. one per worker).

    Use from one thread: the one that opened ``db``. Another thread or process may read the
    same file through its own read-only Database.

    Attributes:
        chunk_rows: Messages read per step by pending() (memory per step).
    """

    chunk_rows: int = _CHUNK

    def __init__(
        self,
        db: Database,
        stream: str = "out",
        *,
        max_rows: int = 1_000_000,
        max_bytes: int = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the stream, creating it (with a fresh epoch) if the file does not have it.

        Args:
            db: An open Database.
            stream: The stream name.
            max_rows: Most unacknowledged rows; appending beyond raises OutboxFull.
            max_bytes: Most unacknowledged payload bytes; appending beyond raises OutboxFull.
            clock: Returns the current time in seconds (for created_at and ages).

        Raises:
            ValueError: A bound is not positive or the stream name is empty.
            StorageError: The stream could not be read or created (on a read-only
                Database: it does not exist).
        """
        if not stream:
            raise ValueError("stream name must not be empty")
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("max_rows and max_bytes must be positive")
        self._db = db
        self._conn = db.conn
        self.stream = stream
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._clock = clock
        self._deleted_bytes = 0
        self._action_append = f"append to outbox {stream!r}"
        rows = db.query(_STREAM, (stream,), f"open outbox {stream!r}")
        if not rows:
            if db.readonly:
                raise StorageError(f"{db.path} has no outbox stream {stream!r}", path=db.path)
            with db.transaction(f"create outbox {stream!r}") as conn:
                conn.execute(
                    "INSERT INTO outbox_streams (stream, epoch, last_seq, last_acked, depth_rows,"
                    " depth_bytes, created_at) VALUES (?, ?, 0, 0, 0, 0, ?)",
                    (stream, secrets.token_hex(8), clock()),
                )
            rows = db.query(_STREAM, (stream,), f"open outbox {stream!r}")
        self._id: int = rows[0][0]
        self._tail: tuple[int, int, int] | None = None  # committed (last_seq, depth_rows, depth_bytes)

    def __repr__(self) -> str:
        return f"<Outbox {self.stream!r} of {self._db.path}>"

    def _state(self) -> tuple[int, str, int, int, int, int]:
        row: tuple[int, str, int, int, int, int] = self._conn.execute(_STREAM, (self.stream,)).fetchone()
        if row is None:
            raise StorageError(
                f"outbox stream {self.stream!r} vanished from {self._db.path}", path=self._db.path
            )
        return row

    @property
    def epoch(self) -> str:
        """The stream's epoch (random id made with the stream; see restart_epoch).

        Raises:
            StorageError: It could not be read.
        """
        with self._db.guard(f"read outbox {self.stream!r}"):
            return self._state()[1]

    @property
    def last_seq(self) -> int:
        """The last assigned seq (0 before the first append).

        Raises:
            StorageError: It could not be read.
        """
        with self._db.guard(f"read outbox {self.stream!r}"):
            return self._state()[2]

    @property
    def last_acked(self) -> int:
        """The highest acknowledged seq.

        Raises:
            StorageError: It could not be read.
        """
        with self._db.guard(f"read outbox {self.stream!r}"):
            return self._state()[3]

    def append(self, kind: str, payload: bytes) -> int:
        """Durably append one message (one commit).

        Args:
            kind: The message kind (e.g. ``"job_status"``).
            payload: The encoded message.

        Returns:
            Its seq.

        Raises:
            OutboxFull: The bounds would be exceeded; nothing was stored.
            StorageError: The write failed (disk full, locked, corrupt…); nothing was stored.
        """
        return self.append_many(((kind, payload),))[0]

    def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Durably append several messages in one transaction (group commit): all or nothing.

        Args:
            items: ``(kind, payload)`` pairs in sending order.

        Returns:
            Their seqs, contiguous, in the same order.

        Raises:
            OutboxFull: The bounds would be exceeded; nothing was stored.
            StorageError: The write failed; nothing was stored.
        """
        n = len(items)
        if n == 0:
            return []
        nbytes = sum(len(p) for _, p in items)
        segments, now = list(pack(items)), self._clock()
        outermost = not self._db.closed and not self._conn.in_transaction
        if len(segments) == 1 and outermost:
            # The common append (one segment, not inside the caller's transaction): one insert,
            # committed by itself; the triggers move the seq and depth. Each statement of a
            # transaction gives up the GIL and waits to take it back behind the other threads.
            tail = self._tail or self._committed_tail()
            last_seq, depth_rows, depth_bytes = tail
            if depth_rows + n <= self.max_rows and depth_bytes + nbytes <= self.max_bytes:
                self._tail = None
                try:
                    with self._db.statement(self._action_append) as conn:
                        SegmentTable(conn, self._id).insert(last_seq + 1, segments, now)
                except StorageError as exc:
                    if _OUT_OF_SEQUENCE not in str(exc):
                        raise
                    # Another writer moved the stream: the transaction below reads it afresh.
                else:
                    self._tail = (last_seq + n, depth_rows + n, depth_bytes + nbytes)
                    return list(range(last_seq + 1, last_seq + n + 1))
        self._tail = None
        with self._db.transaction(self._action_append) as conn:
            _, _, last_seq, _, depth_rows, depth_bytes = self._state()
            if depth_rows + n > self.max_rows or depth_bytes + nbytes > self.max_bytes:
                raise OutboxFull(
                    self.stream,
                    depth_rows=depth_rows,
                    depth_bytes=depth_bytes,
                    max_rows=self.max_rows,
                    max_bytes=self.max_bytes,
                    adding_rows=n,
                    adding_bytes=nbytes,
                )
            SegmentTable(conn, self._id).insert(last_seq + 1, segments, now)
        if outermost:  # committed: a caller's transaction may still roll this back
            self._tail = (last_seq + n, depth_rows + n, depth_bytes + nbytes)
        return list(range(last_seq + 1, last_seq + n + 1))

    def _committed_tail(self) -> tuple[int, int, int]:
        with self._db.guard(f"read outbox {self.stream!r}"):
            _, _, last_seq, _, depth_rows, depth_bytes = self._state()
        return last_seq, depth_rows, depth_bytes

    def ack(self, upto: int, *, delete: bool = True) -> int:
        """Record that the peer durably holds every seq ≤ ``upto``; delete those messages.

        Cumulative and idempotent: ``upto ≤ last_acked`` changes nothing.

        Args:
            upto: The peer's cumulative acknowledgement.
            delete: False: only move the mark and the depth now (one page written); the
                acknowledged segments stay, unread, until delete_acked() or a later ack.

        Returns:
            The number of messages acknowledged.

        Raises:
            AckOutOfRange: ``upto`` is beyond the last assigned seq (nothing changed).
            ValueError: ``upto`` is negative.
            StorageError: The write failed; nothing changed.
        """
        if upto < 0:
            raise ValueError(f"ack must be >= 0, not {upto}")
        self._tail = None  # the depth moves, and a caller's transaction may roll that back
        with self._db.transaction(f"ack outbox {self.stream!r}") as conn:
            sid, _, last_seq, last_acked, _, _ = self._state()
            if upto > last_seq:
                raise AckOutOfRange(self.stream, upto, last_seq, path=self._db.path)
            if upto <= last_acked:
                return 0
            count = upto - last_acked  # stored seqs are contiguous
            segments = SegmentTable(conn, sid)
            nbytes = segments.bytes_between(last_acked, upto)
            if delete:
                segments.delete_through(upto)
            conn.execute(
                "UPDATE outbox_streams SET last_acked = ?, depth_rows = depth_rows - ?, "
                "depth_bytes = depth_bytes - ? WHERE id = ?",
                (upto, count, nbytes, sid),
            )
        self._deleted_bytes += nbytes
        if delete:
            self._reclaim()
        return count

    def delete_acked(self) -> int:
        """Delete the segments acknowledged whole that ``ack(delete=False)`` left; how many.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        with self._db.transaction(f"delete acknowledged rows of outbox {self.stream!r}") as conn:
            deleted = SegmentTable(conn, self._id).delete_through(self._state()[3])
        if deleted:
            self._reclaim()
        return deleted

    def _reclaim(self) -> None:
        if self._deleted_bytes >= _RECLAIM_EVERY_BYTES:
            self._deleted_bytes = 0
            # Best effort: the delete is committed; a failed vacuum is retried after the next 8 MB.
            with contextlib.suppress(StorageError):
                self._db.reclaim_space()

    def pending(self, after: int = 0, limit: int | None = None) -> Iterator[OutboxRow]:
        """Stream the unacknowledged messages with seq > max(after, last_acked), in seq order.

        They are read about ``chunk_rows`` (1000) at a time, whole segments, with no transaction
        held between reads, so memory stays flat however deep the backlog; messages acknowledged
        while iterating may still be yielded from the current read.

        Args:
            after: Skip seqs up to and including this one (e.g. already in flight).
            limit: Yield at most this many rows (None: all).

        Yields:
            OutboxRow in seq order.

        Raises:
            StorageError: A read failed.
        """
        action = f"read pending rows of outbox {self.stream!r}"
        with self._db.guard(action):
            cursor = max(after, self._state()[3])
        remaining = limit if limit is not None else -1
        while remaining != 0:
            want = self.chunk_rows if remaining < 0 else min(self.chunk_rows, remaining)
            with self._db.guard(action):
                rows = self._read(SegmentTable(self._conn, self._id), cursor, want)
            if not rows:
                return
            yield from rows if remaining < 0 else rows[:remaining]
            cursor = rows[-1].seq
            if remaining > 0:
                remaining = max(0, remaining - len(rows))

    def stats(self) -> OutboxStats:
        """Depth, age and position of the stream.

        Raises:
            StorageError: A read failed.
        """
        with self._db.guard(f"read stats of outbox {self.stream!r}"):
            sid, epoch, last_seq, last_acked, depth_rows, depth_bytes = self._state()
            oldest = SegmentTable(self._conn, sid).oldest_created_at(last_acked)
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        return OutboxStats(self.stream, epoch, depth_rows, depth_bytes, age, last_seq, last_acked)

    def restart_epoch(self) -> str:
        """Start a new epoch: pending rows are renumbered 1… in order, last_acked becomes 0.

        Used when the peer proves this store regressed (e.g. restored from a backup): the old
        numbering means nothing to it any more.

        Returns:
            The new epoch.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        epoch = secrets.token_hex(8)
        self._tail = None
        with self._db.transaction(f"restart epoch of outbox {self.stream!r}") as conn:
            sid, _, last_seq, last_acked, _, _ = self._state()
            self._read_guard(lambda: SegmentTable(conn, sid).renumber(last_acked))
            conn.execute(
                "UPDATE outbox_streams SET epoch = ?, last_seq = ?, last_acked = 0 WHERE id = ?",
                (epoch, last_seq - last_acked, sid),
            )
        return epoch

    def _read(self, segments: SegmentTable, after: int, want: int) -> list[OutboxRow]:
        return self._read_guard(lambda: segments.read(after, want))

    def _read_guard(self, read: Callable[[], T]) -> T:
        """A corrupt segment is a StorageError naming the file."""
        try:
            return read()
        except CorruptSegment as exc:
            raise StorageError(
                f"{self._db.path}: outbox {self.stream!r}: {exc}; restore the file from a backup",
                path=self._db.path,
            ) from None
