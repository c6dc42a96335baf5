# The outbox_segments table of one stream, in SQL (storage/segments.py packs the rows): inserts,
# the reads behind Outbox.pending(), the byte count of an acknowledged range, deletes. Every
# method runs on the caller's connection inside the caller's transaction (or read).
# Invariants: segments of a stream are contiguous and ordered by last_seq, so "the segment
# holding seq s" is the first one whose last_seq ≥ s: one lookup on the primary key.
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from jobrelay.storage.segments import OutboxRow, Packed, pack, payload_bytes, unpack

__all__ = ["SegmentTable"]

_INSERT: Final = (
    "INSERT INTO outbox_segments (stream_id, last_seq, first_seq, kinds, sizes, payloads, created_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
_HOLDING: Final = (
    "SELECT first_seq, last_seq, sizes FROM outbox_segments WHERE stream_id = ? AND last_seq > ? "
    "ORDER BY last_seq LIMIT 1"
)
_COLUMNS: Final = "first_seq, last_seq, kinds, sizes, payloads, created_at"
_RANGE: Final = (
    f"SELECT {_COLUMNS} FROM outbox_segments "
    "WHERE stream_id = ? AND last_seq > ? AND last_seq <= ? ORDER BY last_seq"
)

Segment = tuple[int, int, str, bytes, bytes, float]


class SegmentTable:
    """The segments of stream ``sid`` over ``conn``."""

    def __init__(self, conn: sqlite3.Connection, sid: int) -> None:
        self._conn = conn
        self._sid = sid

    def insert(self, first: int, segments: Sequence[Packed], now: float) -> None:
        """Store ``segments`` (``pack``'s) from seq ``first`` on; the schema's triggers check
        that ``first`` follows the stream's last seq and move the stream's seq and depth."""
        seq = first
        for packed in segments:
            end = seq + packed.messages - 1
            self._conn.execute(
                _INSERT, (self._sid, end, seq, packed.kinds, packed.sizes, packed.payloads, now)
            )
            seq = end + 1

    def read(self, after: int, want: int) -> list[OutboxRow]:
        """The messages after seq ``after``: at least ``want`` of them when stored, and the rest
        of the last segment read (whole segments: two lookups on the primary key)."""
        holding = self._conn.execute(_HOLDING, (self._sid, after + want - 1)).fetchone()
        end = holding[1] if holding is not None else after + want
        rows: list[OutboxRow] = []
        for segment in self._conn.execute(_RANGE, (self._sid, after, end)).fetchall():
            rows.extend(_unpack(segment, after))
        return rows

    def oldest_created_at(self, last_acked: int) -> float | None:
        row = self._conn.execute(
            "SELECT created_at FROM outbox_segments WHERE stream_id = ? AND last_seq > ? "
            "ORDER BY last_seq LIMIT 1",
            (self._sid, last_acked),
        ).fetchone()
        return None if row is None else float(row[0])

    def bytes_between(self, lo: int, hi: int) -> int:
        """Payload bytes of the stored messages with ``lo < seq <= hi``."""
        conn, sid = self._conn, self._sid
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

    def delete_through(self, seq: int) -> int:
        """Delete the segments whose messages all have seqs ≤ ``seq``; how many."""
        cursor = self._conn.execute(
            "DELETE FROM outbox_segments WHERE stream_id = ? AND last_seq <= ?", (self._sid, seq)
        )
        return cursor.rowcount

    def renumber(self, last_acked: int) -> None:
        """Seqs last_acked+1… become 1…: the acknowledged segments go, the head is trimmed."""
        conn, sid = self._conn, self._sid
        self.delete_through(last_acked)
        head = conn.execute(
            f"SELECT {_COLUMNS} FROM outbox_segments WHERE stream_id = ? AND last_seq > ? "
            "ORDER BY last_seq LIMIT 1",
            (sid, last_acked),
        ).fetchone()
        if head is not None and head[0] <= last_acked:
            kept = [(r.kind, r.payload) for r in _unpack(head, last_acked)]
            (packed,) = pack(kept)  # a part of one segment is one segment again
            conn.execute(
                "UPDATE outbox_segments SET first_seq = ?, kinds = ?, sizes = ?, payloads = ? "
                "WHERE stream_id = ? AND last_seq = ?",
                (last_acked + 1, packed.kinds, packed.sizes, packed.payloads, sid, head[1]),
            )
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


def _unpack(segment: Segment, after: int) -> list[OutboxRow]:
    """Raises CorruptSegment (the caller names the file)."""
    return list(unpack(*segment, after=after))
