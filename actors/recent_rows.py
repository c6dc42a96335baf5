# The rows the worker committed last, kept (decoded, and as stored) until the facilitator
# acknowledges them: the session is handed them from memory instead of a store read, and each
# ack's latency is measured from the moment its row was committed. A cache only: a seq missing
# here is read from the store.
# Invariants: seqs are kept in increasing order and consecutive runs are handed over in order.
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from jobrelay.protocol.messages import WorkerBody

__all__ = ["RecentRows"]


class RecentRows:
    """seq → (body, its stored bytes, committed at) of rows committed and not yet acknowledged."""

    def __init__(self) -> None:
        self._rows: OrderedDict[int, tuple[WorkerBody, msgspec.Raw, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, seq: int) -> bool:
        return seq in self._rows

    def keep(self, seq: int, body: WorkerBody, stored: bytes, at: float) -> None:
        self._rows[seq] = (body, msgspec.Raw(stored), at)

    def run(self, first: int, upto: int, *, as_stored: bool = False) -> list[tuple[int, Any]]:
        """The consecutive kept rows from ``first`` to at most ``upto`` (none when ``first``
        is not kept): their bodies, or with ``as_stored`` their stored JSON bytes (a JSON
        frame embeds them as they are: the message is not encoded a second time)."""
        rows: list[tuple[int, Any]] = []
        seq, kept, part = first, self._rows, 1 if as_stored else 0
        while seq <= upto and seq in kept:
            rows.append((seq, kept[seq][part]))
            seq += 1
        return rows

    def drop_through(self, upto: int) -> float | None:
        """Forget the rows up to ``upto`` (acknowledged); when ``upto`` itself was kept, the
        time it was committed (one ack-latency sample per ack keeps the histogram cheap)."""
        rows = self._rows
        while rows:
            seq, (_, _, at) = next(iter(rows.items()))
            if seq > upto:
                break
            del rows[seq]
            if seq == upto:
                return at
        return None

    def clear(self) -> None:
        """The stream was renumbered: what is kept no longer matches the store."""
        self._rows.clear()
