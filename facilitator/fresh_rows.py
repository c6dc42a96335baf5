# Rows of our stream to one worker just committed, kept as stored so the next send needs no store
# read. A cache only: a seq missing here is read from the store, so bounding it loses nothing.
from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from jobrelay.protocol.messages import FacilitatorBody

__all__ = ["FreshRows"]

_FRESH_MAX: Final = 1000  # rows kept in memory; beyond, the store is read


class FreshRows:
    """seq → body of rows just committed and not yet sent (see module comment)."""

    def __init__(self) -> None:
        self._rows: dict[int, FacilitatorBody] = {}

    def add(self, rows: Sequence[tuple[int, FacilitatorBody]], sent: int) -> None:
        """Keep ``rows`` above ``sent`` (the last seq sent), unless that would keep too many."""
        if len(self._rows) + len(rows) <= _FRESH_MAX:
            self._rows.update((seq, body) for seq, body in rows if seq > sent)

    def take(self, after: int, limit: int) -> list[tuple[int, FacilitatorBody]]:
        """Up to ``limit`` consecutive rows after seq ``after`` (none if seq ``after + 1`` is
        not among them: the store has it)."""
        fresh = self._rows
        if not fresh:
            return []
        for seq in [seq for seq in fresh if seq <= after]:
            del fresh[seq]  # sent meanwhile from a store read
        rows: list[tuple[int, FacilitatorBody]] = []
        seq = after + 1
        while len(rows) < limit and seq in fresh:
            rows.append((seq, fresh.pop(seq)))
            seq += 1
        return rows

    def clear(self) -> None:
        """Our stream was renumbered: what is kept no longer matches the store."""
        self._rows.clear()
