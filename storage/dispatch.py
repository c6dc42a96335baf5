# Jobs a worker handed to an external backend (Celery): which task runs each job's current attempt
# and how far the task's events were relayed.
# Invariants:
# - A job has at most one dispatch row, for its latest attempt; record() for a later attempt
#   starts the row afresh (a new task, nothing relayed), for the same attempt it changes nothing,
#   so recording before sending and sending again after a crash name the same task.
# - ``position`` only moves forward (stream ids compare as (milliseconds, sequence)).
# - record() and advance() nest in the caller's transaction: the worker's Outbox commits them with
#   the status they belong to (the job's `running`, a relayed event), so each is durable exactly
#   when that status is.
# - A row goes with its job (ON DELETE CASCADE when the ledger prunes it).
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple

from jobrelay.storage.database import Database

__all__ = ["START", "Dispatch", "Dispatches", "position_key"]

START: Final = "0-0"
"""The position before a stream's first entry."""

_COLUMNS: Final = "job_id, attempt, backend, task_id, position, dispatched_at"


class Dispatch(NamedTuple):
    """A job's dispatch to an external backend."""

    job_id: str
    attempt: int
    backend: str
    task_id: str
    position: str  # the last relayed stream entry id (START: none yet)
    dispatched_at: float


def position_key(position: str) -> tuple[int, int]:
    """A stream entry id (``"1700000000000-3"``) as a comparable pair.

    Raises:
        ValueError: not a stream entry id.
    """
    millis, _, seq = position.partition("-")
    return int(millis), int(seq or 0)


class Dispatches:
    """Dispatch rows in a database (each call one transaction, or part of the caller's)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def record(self, job_id: str, attempt: int, backend: str, task_id: str) -> Dispatch:
        """Record that ``attempt`` of ``job_id`` goes to ``task_id`` (before it is sent).

        Returns:
            The job's dispatch row: the one already recorded for this attempt, else the new one.

        Raises:
            StorageError: The write failed; nothing changed (also: the job is not in the ledger).
        """
        with self._db.transaction(f"record dispatch of job {job_id!r}") as conn:
            found = self._get(job_id)
            if found is not None and found.attempt >= attempt:
                return found
            conn.execute(
                "INSERT OR REPLACE INTO job_dispatches (job_id, attempt, backend, task_id, position, "
                "dispatched_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, backend, task_id, START, self._clock()),
            )
        created = self._get(job_id)
        assert created is not None
        return created

    def advance(self, job_id: str, task_id: str, position: str) -> bool:
        """Move the relayed position of ``task_id`` forward to ``position`` (never back).

        Returns:
            True if it moved.

        Raises:
            ValueError: ``position`` is not a stream entry id.
            StorageError: The write failed.
        """
        new = position_key(position)
        with self._db.transaction(f"advance dispatch of job {job_id!r}") as conn:
            found = self._get(job_id)
            if found is None or found.task_id != task_id or position_key(found.position) >= new:
                return False
            conn.execute(
                "UPDATE job_dispatches SET position = ? WHERE job_id = ? AND task_id = ?",
                (position, job_id, task_id),
            )
        return True

    def get(self, job_id: str) -> Dispatch | None:
        """The job's dispatch row, or None.

        Raises:
            StorageError: The read failed.
        """
        return self._get(job_id)

    def _get(self, job_id: str) -> Dispatch | None:
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM job_dispatches WHERE job_id = ?", (job_id,), f"read dispatch {job_id!r}"
        )
        if not rows:
            return None
        return Dispatch._make(rows[0])

    def count(self, backend: str | None = None) -> int:
        """How many dispatch rows there are (of ``backend`` only, if given).

        Raises:
            StorageError: The read failed.
        """
        if backend is None:
            rows = self._db.query("SELECT count(*) FROM job_dispatches", (), "count dispatches")
        else:
            rows = self._db.query(
                "SELECT count(*) FROM job_dispatches WHERE backend = ?", (backend,), "count dispatches"
            )
        return int(rows[0][0])
