# The worker's local-mode record: whether it runs without its facilitator, since when, when it last
# heard from it, and how often it went local. One row (id 1) in worker_local_state; the jobs it
# was assigned are the job ledger's unfinished jobs (storage/ledger.py), not copied here.
# Invariants: every write is one transaction; activations never decrease; a file without the
# row reads as "never local".
from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from jobrelay.storage.database import Database

__all__ = ["LocalState", "LocalStateStore"]


class LocalState(NamedTuple):
    """What the worker keeps of its local mode across restarts."""

    active: bool = False
    since: float | None = None  # when local mode began (None: not active)
    last_contact: float | None = None  # when a frame last came from the facilitator
    activations: int = 0  # times the worker entered local mode, over its database's life


class LocalStateStore:
    """Reads and writes the local-mode row of a worker's database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def load(self) -> LocalState:
        """The stored record (the defaults when none was written yet).

        Raises:
            StorageError: the read failed.
        """
        rows = self._db.query(
            "SELECT active, since, last_contact, activations FROM worker_local_state WHERE id = 1",
            action="read the local-mode state",
        )
        if not rows:
            return LocalState()
        active, since, last_contact, activations = rows[0]
        return LocalState(bool(active), since, last_contact, int(activations))

    def save(self, state: LocalState) -> None:
        """Store ``state`` (activations are kept if ``state`` has fewer: they only grow).

        Raises:
            StorageError: the write failed.
        """
        with self._db.transaction("store the local-mode state") as conn:
            conn.execute(
                "INSERT INTO worker_local_state (id, active, since, last_contact, activations, updated_at) "
                "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET active = excluded.active, "
                "since = excluded.since, last_contact = coalesce(excluded.last_contact, last_contact), "
                "activations = max(activations, excluded.activations), updated_at = excluded.updated_at",
                (int(state.active), state.since, state.last_contact, state.activations, self._clock()),
            )
