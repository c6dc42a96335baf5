# The durable outgoing stream: append → seq, cumulative ack, streamed replay, bounds.
# Messages are stored in segments (storage/segments.py): one row per append of up to
# MAX_MESSAGES messages, so a burst is one insert and an ack a few deletes.
# Invariants (per stream name within one database file):
# - Seqs start at 1, are assigned contiguously in append order and never reused: ``last_seq``
#   lives in outbox_streams and survives deleting every row and restarting the process.
# - Stored messages are the unacknowledged ones, seqs last_acked+1 … last_seq, contiguous, plus
#   the acknowledged head of the first segment (kept until all of it is acknowledged; never read:
#   every read starts after last_acked).
# - depth_rows/depth_bytes in outbox_streams equal the count and payload bytes of unacknowledged
#   messages, and never exceed max_rows/max_bytes through append (OutboxFull instead; nothing stored).
# - Every public call is one transaction: it happens completely or not at all.
# - ``epoch`` is created with the stream and changes only through restart_epoch().
from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, NamedTuple

from jobrelay.storage.database import Database
from jobrelay.storage.errors import AckOutOfRange, OutboxFull, StorageError
from jobrelay.storage.segments import CorruptSegment, OutboxRow, pack, payload_bytes, unpack

__all__ = ["Outbox", "OutboxRow", "OutboxStats", "outbox_streams"]

_CHUNK: Final = 1000  # messages read per step while streaming pending()
_RECLAIM_EVERY_BYTES: Final = 8 << 20  # check for free pages after this many deleted bytes

_INSERT: Final = (
    "INSERT INTO outbox_segments (stream_id, last_seq, first_seq, kinds, sizes, payloads, created_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
_STREAM: Final = (
    "SELECT id, epoch, last_seq, last_acked, depth_rows, depth_bytes FROM outbox_streams WHERE stream = ?"
)
_RESERVE: Final = (
    "UPDATE outbox_streams SET last_seq = last_seq + ?, depth_rows = depth_rows + ?, "
    "depth_bytes = depth_bytes + ? WHERE id = ? RETURNING last_seq, depth_rows, depth_bytes"
)
# The segment holding seq ? + 1 (segments are contiguous: the first one ending after it).
_HOLDING: Final = (
    "SELECT first_seq, last_seq, sizes FROM outbox_segments WHERE stream_id = ? AND last_seq > ? "
    "ORDER BY last_seq LIMIT 1"
)
_SEGMENTS: Final = (
    "SELECT first_seq, last_seq, kinds, sizes, payloads, created_at FROM outbox_segments "
    "WHERE stream_id = ? AND last_seq > ? AND last_seq <= ? ORDER BY last_seq"
)


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
        now = self._clock()
        with self._db.transaction(self._action_append) as conn:
            # Reserve the seqs and grow the depth in one statement; undone by the rollback
            # if the bounds are exceeded.
            row = conn.execute(_RESERVE, (n, n, nbytes, self._id)).fetchone()
            if row is None:
                self._state()  # raises: the stream row is gone
            last_seq, depth_rows, depth_bytes = row
            if depth_rows > self.max_rows or depth_bytes > self.max_bytes:
                raise OutboxFull(
                    self.stream,
                    depth_rows=depth_rows - n,
                    depth_bytes=depth_bytes - nbytes,
                    max_rows=self.max_rows,
                    max_bytes=self.max_bytes,
                    adding_rows=n,
                    adding_bytes=nbytes,
                )
            first = last_seq - n + 1
            seq = first
            for packed in pack(items):
                end = seq + packed.messages - 1
                conn.execute(_INSERT, (self._id, end, seq, packed.kinds, packed.sizes, packed.payloads, now))
                seq = end + 1
        return list(range(first, first + n))

    def ack(self, upto: int) -> int:
        """Record that the peer durably holds every seq ≤ ``upto``; delete those rows.

        Cumulative and idempotent: ``upto ≤ last_acked`` changes nothing.

        Args:
            upto: The peer's cumulative acknowledgement.

        Returns:
            The number of rows deleted.

        Raises:
            AckOutOfRange: ``upto`` is beyond the last assigned seq (nothing changed).
            ValueError: ``upto`` is negative.
            StorageError: The write failed; nothing changed.
        """
        if upto < 0:
            raise ValueError(f"ack must be >= 0, not {upto}")
        with self._db.transaction(f"ack outbox {self.stream!r}") as conn:
            sid, _, last_seq, last_acked, _, _ = self._state()
            if upto > last_seq:
                raise AckOutOfRange(self.stream, upto, last_seq, path=self._db.path)
            if upto <= last_acked:
                return 0
            count = upto - last_acked  # stored seqs are contiguous
            nbytes = self._bytes_between(sid, last_acked, upto)
            conn.execute("DELETE FROM outbox_segments WHERE stream_id = ? AND last_seq <= ?", (sid, upto))
            conn.execute(
                "UPDATE outbox_streams SET last_acked = ?, depth_rows = depth_rows - ?, "
                "depth_bytes = depth_bytes - ? WHERE id = ?",
                (upto, count, nbytes, sid),
            )
        self._deleted_bytes += nbytes
        if self._deleted_bytes >= _RECLAIM_EVERY_BYTES:
            self._deleted_bytes = 0
            # Best effort: the ack is committed; a failed vacuum is retried after the next 8 MB.
            with contextlib.suppress(StorageError):
                self._db.reclaim_space()
        return count

    def _bytes_between(self, sid: int, lo: int, hi: int) -> int:
        """Payload bytes of the stored messages with ``lo < seq <= hi`` (inside a transaction)."""
        conn = self._conn
        # Whole segments ending in the range, summed in SQL…
        (total,) = conn.execute(
            "SELECT coalesce(sum(length(payloads)), 0) FROM outbox_segments "
            "WHERE stream_id = ? AND last_seq > ? AND last_seq <= ?",
            (sid, lo, hi),
        ).fetchone()
        # …less the head of the first one when it starts at or before lo…
        head = conn.execute(_HOLDING, (sid, lo)).fetchone()
        if head is not None and head[0] <= lo and head[1] <= hi:
            total -= payload_bytes(head[0], head[2], head[0] - 1, lo)
        # …plus the part up to hi of a segment that goes on past it.
        tail = conn.execute(_HOLDING, (sid, hi)).fetchone()
        if tail is not None and tail[0] <= hi:
            total += payload_bytes(tail[0], tail[2], lo, hi)
        return int(total)

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
                # The segments holding cursor+1 … cursor+want: two lookups on the primary key.
                upto = self._conn.execute(_HOLDING, (self._id, cursor + want - 1)).fetchone()
                end = upto[1] if upto is not None else cursor + want
                segments = self._conn.execute(_SEGMENTS, (self._id, cursor, end)).fetchall()
            start = cursor
            for segment in segments:
                for row in self._unpack(segment, cursor):
                    yield row
                    cursor = row.seq
                    if remaining > 0:
                        remaining -= 1
                        if remaining == 0:
                            return
            if cursor == start:  # nothing after the cursor: the stream's end
                return

    def stats(self) -> OutboxStats:
        """Depth, age and position of the stream.

        Raises:
            StorageError: A read failed.
        """
        with self._db.guard(f"read stats of outbox {self.stream!r}"):
            sid, epoch, last_seq, last_acked, depth_rows, depth_bytes = self._state()
            oldest = self._conn.execute(
                "SELECT created_at FROM outbox_segments WHERE stream_id = ? ORDER BY last_seq LIMIT 1", (sid,)
            ).fetchone()
        age = max(0.0, self._clock() - oldest[0]) if oldest else None
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
        with self._db.transaction(f"restart epoch of outbox {self.stream!r}") as conn:
            sid, _, last_seq, last_acked, _, _ = self._state()
            self._drop_acked_head(sid, last_acked)
            # Two steps through negative seqs so no intermediate row collides with another.
            conn.execute(
                "UPDATE outbox_segments SET first_seq = -first_seq, last_seq = -last_seq WHERE stream_id = ?",
                (sid,),
            )
            conn.execute(
                "UPDATE outbox_segments SET first_seq = -first_seq - ?, last_seq = -last_seq - ? "
                "WHERE stream_id = ?",
                (last_acked, last_acked, sid),
            )
            conn.execute(
                "UPDATE outbox_streams SET epoch = ?, last_seq = ?, last_acked = 0 WHERE id = ?",
                (epoch, last_seq - last_acked, sid),
            )
        return epoch

    def _unpack(self, segment: tuple[int, int, str, bytes, bytes, float], after: int) -> list[OutboxRow]:
        try:
            return list(unpack(*segment, after=after))
        except CorruptSegment as exc:
            raise StorageError(
                f"{self._db.path}: outbox {self.stream!r}: {exc}; restore the file from a backup",
                path=self._db.path,
            ) from None

    def _drop_acked_head(self, sid: int, last_acked: int) -> None:
        """Rewrite the first segment without its acknowledged messages (inside a transaction)."""
        head = self._conn.execute(_HOLDING, (sid, last_acked)).fetchone()
        if head is None or head[0] > last_acked:
            return
        segment = self._conn.execute(
            "SELECT first_seq, last_seq, kinds, sizes, payloads, created_at FROM outbox_segments "
            "WHERE stream_id = ? AND last_seq = ?",
            (sid, head[1]),
        ).fetchone()
        kept = [(r.kind, r.payload) for r in self._unpack(segment, last_acked)]
        (packed,) = pack(kept)  # fewer messages than the segment held: one segment again
        self._conn.execute(
            "UPDATE outbox_segments SET first_seq = ?, kinds = ?, sizes = ?, payloads = ? "
            "WHERE stream_id = ? AND last_seq = ?",
            (last_acked + 1, packed.kinds, packed.sizes, packed.payloads, sid, head[1]),
        )


def outbox_streams(db: Database, *, now: float | None = None) -> list[OutboxStats]:
    """Stats of every outbox stream in the file (works on a read-only Database).

    Args:
        db: An open Database.
        now: The current time for ages (default: time.time()).

    Raises:
        StorageError: A read failed.
    """
    now = time.time() if now is None else now
    rows = db.query(
        "SELECT s.stream, s.epoch, s.depth_rows, s.depth_bytes, "
        "(SELECT created_at FROM outbox_segments o WHERE o.stream_id = s.id ORDER BY last_seq LIMIT 1), "
        "s.last_seq, s.last_acked FROM outbox_streams s ORDER BY s.stream",
        (),
        "list outbox streams",
    )
    return [
        OutboxStats(r[0], r[1], r[2], r[3], None if r[4] is None else max(0.0, now - r[4]), r[5], r[6])
        for r in rows
    ]
