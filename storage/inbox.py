# What this side accepted of each remote stream: epoch, high-water mark and the messages the
# application has not consumed yet.
# Invariants (per remote stream name):
# - hwm only grows within an epoch; a seq is accepted only when it is exactly hwm + 1, and the
#   message row and the new hwm commit in the same transaction, so an ack sent after accept()
#   returned is never ahead of what is on disk.
# - A new epoch starts a new generation: its seq 1 never collides with (or is mistaken for a
#   duplicate of) the old epoch's seq 1; unconsumed rows of older generations are kept and come
#   first in unconsumed().
# - Consumed rows are deleted; the hwm stays.
from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from jobrelay.storage.database import Database

__all__ = ["AcceptResult", "Inbox", "InboxRow", "InboxState"]

_STREAM: Final = "SELECT epoch, generation, hwm FROM inbox_streams WHERE stream = ?"
_INSERT: Final = (
    "INSERT INTO inbox (stream, generation, seq, epoch, kind, payload, accepted_at) VALUES (?,?,?,?,?,?,?)"
)


class AcceptResult(enum.Enum):
    """What accept() did with a message."""

    ACCEPTED = "accepted"  # seq == hwm + 1: stored, hwm advanced
    DUPLICATE = "duplicate"  # seq <= hwm: already accepted, dropped
    GAP = "gap"  # seq > hwm + 1: a protocol violation, dropped


class InboxRow(NamedTuple):
    """An accepted message the application has not consumed yet."""

    stream: str
    seq: int
    kind: str
    payload: bytes
    accepted_at: float
    epoch: str = ""


class InboxState(NamedTuple):
    """A remote stream's position here."""

    stream: str
    epoch: str
    hwm: int
    unconsumed: int


class Inbox:
    """Accepted data of every remote stream in a database (used from one thread)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        """Wrap ``db``; nothing is read or written yet.

        Args:
            db: An open Database.
            clock: Returns the current time in seconds (for accepted_at).
        """
        self._db = db
        self._conn = db.conn
        self._clock = clock

    def __repr__(self) -> str:
        return f"<Inbox of {self._db.path}>"

    def _row(self, stream: str) -> tuple[str, int, int] | None:
        row: tuple[str, int, int] | None = self._conn.execute(_STREAM, (stream,)).fetchone()
        return row

    def state(self, stream: str) -> tuple[str, int]:
        """The stream's epoch (``""`` if none yet) and high-water mark.

        Raises:
            StorageError: The read failed.
        """
        with self._db.guard(f"read inbox {stream!r}"):
            row = self._row(stream)
        return ("", 0) if row is None else (row[0], row[2])

    def hwm(self, stream: str) -> int:
        """The highest accepted seq of the stream's current epoch (0 if none).

        Raises:
            StorageError: The read failed.
        """
        return self.state(stream)[1]

    def start_epoch(self, stream: str, epoch: str, hwm: int = 0) -> bool:
        """Record that the peer's stream now has ``epoch``, resuming after ``hwm``.

        A new epoch (the peer's store was replaced) starts a new generation; unconsumed rows of
        the old one stay. Presenting the current epoch again changes nothing.

        Args:
            stream: The remote stream name.
            epoch: The epoch the peer presented (non-empty).
            hwm: The mark the new epoch starts after (usually 0).

        Returns:
            True when a new epoch was recorded, False when it was already current.

        Raises:
            ValueError: ``epoch`` is empty or ``hwm`` negative.
            StorageError: The write failed; nothing changed.
        """
        if not epoch:
            raise ValueError("epoch must not be empty")
        if hwm < 0:
            raise ValueError(f"hwm must be >= 0, not {hwm}")
        with self._db.transaction(f"start epoch of inbox {stream!r}") as conn:
            row = self._row(stream)
            if row is not None and row[0] == epoch:
                return False
            if row is None:
                conn.execute(
                    "INSERT INTO inbox_streams (stream, epoch, generation, hwm, updated_at) "
                    "VALUES (?, ?, 1, ?, ?)",
                    (stream, epoch, hwm, self._clock()),
                )
            else:
                conn.execute(
                    "UPDATE inbox_streams SET epoch = ?, generation = generation + 1, hwm = ?, "
                    "updated_at = ? WHERE stream = ?",
                    (epoch, hwm, self._clock(), stream),
                )
        return True

    def raise_hwm(self, stream: str, epoch: str, hwm: int) -> bool:
        """Raise the stream's high-water mark to ``hwm`` within its current ``epoch``.

        Used when the peer proves it holds acknowledgements we no longer have (our store was
        restored from an older copy): its resume point is then above ours, and without this the
        next message would be a gap. Never lowers the mark; another epoch changes nothing.

        Returns:
            True when the mark moved.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        with self._db.transaction(f"raise hwm of inbox {stream!r}") as conn:
            cur = conn.execute(
                "UPDATE inbox_streams SET hwm = ?, updated_at = ? WHERE stream = ? AND epoch = ? AND hwm < ?",
                (hwm, self._clock(), stream, epoch, hwm),
            )
        return cur.rowcount == 1

    def accept(self, stream: str, seq: int, kind: str, payload: bytes) -> AcceptResult:
        """Accept one message in one transaction (stored and hwm advanced, or dropped).

        A stream never started with start_epoch() is created with epoch ``""``.

        Args:
            stream: The remote stream name.
            seq: The message's seq (>= 1).
            kind: The message kind.
            payload: The encoded message.

        Returns:
            ACCEPTED, DUPLICATE (seq <= hwm) or GAP (seq > hwm + 1).

        Raises:
            ValueError: ``seq`` < 1.
            StorageError: The write failed; nothing changed.
        """
        return self.accept_many(stream, ((seq, kind, payload),))[0]

    def accept_many(self, stream: str, items: Sequence[tuple[int, str, bytes]]) -> list[AcceptResult]:
        """Accept a batch in one transaction; each item is judged against the running hwm.

        Args:
            stream: The remote stream name.
            items: ``(seq, kind, payload)`` in arrival order.

        Returns:
            One AcceptResult per item.

        Raises:
            ValueError: A seq < 1 (nothing changed).
            StorageError: The write failed; nothing changed.
        """
        if not items:
            return []
        now = self._clock()
        with self._db.transaction(f"accept into inbox {stream!r}") as conn:
            epoch, generation, results = self._advance(conn, stream, [seq for seq, _, _ in items], now)
            rows = [
                (stream, generation, seq, epoch, kind, payload, now)
                for (seq, kind, payload), result in zip(items, results, strict=True)
                if result is AcceptResult.ACCEPTED
            ]
            if rows:
                conn.executemany(_INSERT, rows)
        return results

    def advance(self, stream: str, seqs: Sequence[int]) -> list[AcceptResult]:
        """accept_many() for a receiver that applies what it accepts in the caller's transaction
        (see Database.transaction): the hwm moves as accept_many() would move it, and no row is
        stored, since one that is consumed in the same commit would only be written to be deleted.

        Returns:
            One AcceptResult per seq.

        Raises:
            ValueError: A seq < 1 (nothing changed).
            StorageError: The write failed; nothing changed.
        """
        if not seqs:
            return []
        with self._db.transaction(f"advance inbox {stream!r}") as conn:
            return self._advance(conn, stream, seqs, self._clock())[2]

    def _advance(
        self, conn: sqlite3.Connection, stream: str, seqs: Sequence[int], now: float
    ) -> tuple[str, int, list[AcceptResult]]:
        """Judge ``seqs`` against the running hwm and store the new hwm: ``(epoch, generation,
        results)``. A stream never started with start_epoch() is created with epoch ``""``."""
        if any(seq < 1 for seq in seqs):
            raise ValueError("seqs must be >= 1")
        row = self._row(stream)
        if row is None:
            conn.execute(
                "INSERT INTO inbox_streams (stream, epoch, generation, hwm, updated_at) "
                "VALUES (?, '', 1, 0, ?)",
                (stream, now),
            )
            row = ("", 1, 0)
        epoch, generation, hwm = row
        results: list[AcceptResult] = []
        start = hwm
        for seq in seqs:
            if seq <= hwm:
                results.append(AcceptResult.DUPLICATE)
            elif seq == hwm + 1:
                hwm = seq
                results.append(AcceptResult.ACCEPTED)
            else:
                results.append(AcceptResult.GAP)
        if hwm > start:
            conn.execute(
                "UPDATE inbox_streams SET hwm = ?, updated_at = ? WHERE stream = ?", (hwm, now, stream)
            )
        return epoch, generation, results

    def unconsumed(self, stream: str | None = None, limit: int | None = None) -> list[InboxRow]:
        """Accepted messages not yet marked consumed: what a restarted application must process.

        Args:
            stream: One remote stream, or None for all (ordered by stream name).
            limit: At most this many rows (None: all).

        Returns:
            Rows in acceptance order (older epochs first, then seq).

        Raises:
            StorageError: The read failed.
        """
        sql = "SELECT stream, seq, kind, payload, accepted_at, epoch FROM inbox"
        params: tuple[object, ...] = ()
        if stream is not None:
            sql += " WHERE stream = ?"
            params = (stream,)
        sql += " ORDER BY stream, generation, seq"
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        rows = self._db.query(sql, params, "read unconsumed inbox rows")
        return [InboxRow._make(r) for r in rows]

    def mark_consumed(self, stream: str, upto: int, epoch: str | None = None) -> int:
        """The application finished every message up to ``upto``: delete those rows.

        Consumption is in order, so this also covers every row of older epochs. The hwm stays.

        Args:
            stream: The remote stream name.
            upto: The last consumed seq of ``epoch``.
            epoch: The epoch ``upto`` belongs to (None: the current one). An epoch with no rows
                left consumes nothing.

        Returns:
            The number of rows deleted.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        with self._db.transaction(f"mark consumed in inbox {stream!r}") as conn:
            row = self._row(stream)
            if row is None:
                return 0
            generation = row[1]
            if epoch is not None and epoch != row[0]:
                found = conn.execute(
                    "SELECT generation FROM inbox WHERE stream = ? AND epoch = ? "
                    "ORDER BY generation DESC LIMIT 1",
                    (stream, epoch),
                ).fetchone()
                if found is None:
                    return 0
                generation = found[0]
            cur = conn.execute(
                "DELETE FROM inbox WHERE stream = ? AND (generation < ? OR (generation = ? AND seq <= ?))",
                (stream, generation, generation, upto),
            )
            return int(cur.rowcount)

    def streams(self) -> list[InboxState]:
        """Every remote stream with its epoch, hwm and unconsumed row count.

        Raises:
            StorageError: The read failed.
        """
        rows = self._db.query(
            "SELECT s.stream, s.epoch, s.hwm, "
            "(SELECT count(*) FROM inbox i WHERE i.stream = s.stream) "
            "FROM inbox_streams s ORDER BY s.stream",
            (),
            "list inbox streams",
        )
        return [InboxState._make(r) for r in rows]
