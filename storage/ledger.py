# The job ledger: every job request seen, its status history and its last status.
# Invariants:
# - A job id is recorded once; a repeated request only increments ``attempts`` (the number of
#   times the request was delivered), so duplicates are recognised after restarts too.
# - Statuses are JobStatus values; history rows are kept in recording order and the job's
#   last status/detail/progress always equal its newest history row.
# - A job has at most one terminal status: once it has one, any further status is refused
#   (TerminalStatusError / StatusResult.ALREADY_TERMINAL) and nothing is written. On a worker
#   a retry is a new attempt of the same id: start_attempt() starts its status afresh (one
#   terminal status per attempt), keeping the history of the earlier ones.
# - Every public call is one transaction.
from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

import msgspec

from jobrelay.protocol.messages import TERMINAL_STATUSES, JobStatus
from jobrelay.storage.database import Database
from jobrelay.storage.errors import TerminalStatusError, UnknownJobError

__all__ = ["JobLedger", "JobRecord", "StatusEntry", "StatusResult", "StatusUpdate"]

_TERMINAL: Final = frozenset(s.value for s in TERMINAL_STATUSES)
_UNFINISHED_SQL: Final = "status IS NULL OR status NOT IN ({})".format(
    ", ".join(f"'{s}'" for s in sorted(_TERMINAL))
)
_COLUMNS: Final = (
    "job_id, kind, status, detail, progress, attempts, created_at, updated_at, peer, cancel_reason"
)


class JobRecord(NamedTuple):
    """A job's current state in the ledger (``status`` None until the first status)."""

    job_id: str
    kind: str
    status: str | None
    detail: str
    progress: float | None
    attempts: int
    created_at: float
    updated_at: float
    peer: str
    cancel_reason: str | None = None  # a cancel arrived for it (worker side); None: none did


class _Attempt(msgspec.Struct):
    """The one field of a stored job request that start_attempt() compares."""

    attempt: int = 1


_ATTEMPT: Final = msgspec.json.Decoder(_Attempt)


class StatusEntry(NamedTuple):
    """One recorded status."""

    status: str
    detail: str
    progress: float | None
    at: float


class StatusUpdate(NamedTuple):
    """An item for record_statuses()."""

    job_id: str
    status: str
    detail: str = ""
    progress: float | None = None
    at: float | None = None


class StatusResult(enum.Enum):
    """What record_statuses() did with one item."""

    RECORDED = "recorded"
    UNKNOWN_JOB = "unknown_job"  # no record_request() for this id
    ALREADY_TERMINAL = "already_terminal"  # the job had ended; the update was dropped
    INVALID = "invalid"  # not a JobStatus value, or progress outside [0, 1]


def _valid(status: str, progress: float | None) -> bool:
    if status not in JobStatus._value2member_map_:
        return False
    return progress is None or (not math.isnan(progress) and 0.0 <= progress <= 1.0)


class JobLedger:
    """Jobs and their statuses in a database (used from one thread)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        """Wrap ``db``.

        Args:
            db: An open Database.
            clock: Returns the current time in seconds.
        """
        self._db = db
        self._clock = clock

    def __repr__(self) -> str:
        return f"<JobLedger of {self._db.path}>"

    def record_request(
        self, job_id: str, kind: str, payload: bytes, peer: str = "", pinned: str = ""
    ) -> bool:
        """Record a job request; recognise a repeated one.

        Args:
            job_id: The job's id.
            kind: The job kind (handler name).
            payload: The encoded request payload.
            peer: The worker id it belongs to ("" on a worker's own ledger).
            pinned: The worker it was submitted for: its retries and hand-backs wait for it.

        Returns:
            True if the job is new; False if it was already recorded (its attempts count is
            incremented, nothing else changes).

        Raises:
            StorageError: The write failed; nothing changed.
        """
        now = self._clock()
        with self._db.transaction(f"record job request {job_id!r}") as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE job_id = ?", (job_id,))
                return False
            conn.execute(
                "INSERT INTO jobs (job_id, kind, payload, peer, pinned, status, detail, progress, "
                "attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, '', NULL, 1, ?, ?)",
                (job_id, kind, payload, peer, pinned, now, now),
            )
        return True

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Keep that a cancel arrived for the unfinished job ``job_id``; False when it is unknown
        or has ended. Call it in the transaction that takes the cancel in, so that a restart
        after a crash still ends the job ``cancelled`` (``JobRecord.cancel_reason``).

        Raises:
            StorageError: The write failed.
        """
        with self._db.transaction(f"keep the cancel of {job_id!r}") as conn:
            cur = conn.execute(
                f"UPDATE jobs SET cancel_reason = ? WHERE job_id = ? AND ({_UNFINISHED_SQL})",
                (reason, job_id),
            )
        return cur.rowcount == 1

    def start_attempt(self, job_id: str, attempt: int, payload: bytes) -> bool:
        """A later attempt of a recorded job (a retry): new work if ``attempt`` is above the
        stored request's. Its request replaces the stored one and its status starts again
        (history kept, so every attempt shows); otherwise nothing changes.

        Returns:
            True if this attempt is new work; False for a repeat or an older attempt.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        with self._db.transaction(f"start attempt {attempt} of job {job_id!r}") as conn:
            row = conn.execute("SELECT payload FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or attempt <= _ATTEMPT.decode(bytes(row[0])).attempt:
                return False
            conn.execute(
                "UPDATE jobs SET payload = ?, status = NULL, detail = '', progress = NULL, "
                "cancel_reason = NULL, attempts = attempts + 1, updated_at = ? WHERE job_id = ?",
                (payload, self._clock(), job_id),
            )
        return True

    def record_status(
        self,
        job_id: str,
        status: str,
        *,
        detail: str = "",
        progress: float | None = None,
        at: float | None = None,
    ) -> None:
        """Append a status to the job's history and make it the job's last status.

        Args:
            job_id: A job recorded with record_request().
            status: A JobStatus value.
            detail: Free text (e.g. a failure reason such as ``worker_restarted``).
            progress: Between 0 and 1, or None.
            at: When it happened (default: now).

        Raises:
            ValueError: ``status`` is not a JobStatus value or ``progress`` is outside [0, 1].
            UnknownJobError: The job was never recorded.
            TerminalStatusError: The job already has a terminal status.
            StorageError: The write failed; nothing changed.
        """
        if not _valid(status, progress):
            raise ValueError(f"invalid status {status!r} or progress {progress!r}")
        with self._db.transaction(f"record status of job {job_id!r}"):
            result, existing = self._apply(StatusUpdate(job_id, status, detail, progress, at))
        if result is StatusResult.UNKNOWN_JOB:
            raise UnknownJobError(job_id, path=self._db.path)
        if result is StatusResult.ALREADY_TERMINAL:
            raise TerminalStatusError(job_id, existing or "", status, path=self._db.path)

    def record_statuses(self, items: Sequence[StatusUpdate]) -> list[StatusResult]:
        """Record many statuses in one transaction; a bad item is reported, not fatal.

        Items are applied in order (so a terminal status early in the batch refuses later
        updates of the same job). Only RECORDED items are written.

        Args:
            items: The updates.

        Returns:
            One StatusResult per item.

        Raises:
            StorageError: The write failed; nothing from the batch was recorded.
        """
        results: list[StatusResult] = []
        with self._db.transaction("record job statuses"):
            for item in items:
                if not _valid(item.status, item.progress):
                    results.append(StatusResult.INVALID)
                    continue
                results.append(self._apply(item)[0])
        return results

    def _apply(self, item: StatusUpdate) -> tuple[StatusResult, str | None]:
        c = self._db.conn
        row = c.execute("SELECT status FROM jobs WHERE job_id = ?", (item.job_id,)).fetchone()
        if row is None:
            return StatusResult.UNKNOWN_JOB, None
        if row[0] in _TERMINAL:
            return StatusResult.ALREADY_TERMINAL, str(row[0])
        at = self._clock() if item.at is None else item.at
        status = JobStatus(item.status).value
        c.execute(
            "INSERT INTO job_history (job_id, status, detail, progress, at) VALUES (?,?,?,?,?)",
            (item.job_id, status, item.detail, item.progress, at),
        )
        c.execute(
            "UPDATE jobs SET status = ?, detail = ?, progress = ?, updated_at = ? WHERE job_id = ?",
            (status, item.detail, item.progress, at, item.job_id),
        )
        return StatusResult.RECORDED, None

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if unknown.

        Raises:
            StorageError: The read failed.
        """
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,), f"read job {job_id!r}"
        )
        return JobRecord._make(rows[0]) if rows else None

    def payload(self, job_id: str) -> bytes | None:
        """The job's request payload, or None if unknown.

        Raises:
            StorageError: The read failed.
        """
        rows = self._db.query("SELECT payload FROM jobs WHERE job_id = ?", (job_id,), f"read job {job_id!r}")
        return bytes(rows[0][0]) if rows else None

    def history(self, job_id: str) -> list[StatusEntry]:
        """Every status recorded for the job, oldest first (empty if unknown).

        Raises:
            StorageError: The read failed.
        """
        rows = self._db.query(
            "SELECT status, detail, progress, at FROM job_history WHERE job_id = ? ORDER BY id",
            (job_id,),
            f"read history of job {job_id!r}",
        )
        return [StatusEntry._make(r) for r in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs without a terminal status, oldest first (to close at start-up).

        Raises:
            StorageError: The read failed.
        """
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM jobs WHERE {_UNFINISHED_SQL} ORDER BY created_at, rowid",
            (),
            "list unfinished jobs",
        )
        return [JobRecord._make(r) for r in rows]

    def count(self, *, unfinished: bool = False) -> int:
        """How many jobs the ledger holds (only unfinished ones if asked).

        Raises:
            StorageError: The read failed.
        """
        where = f" WHERE {_UNFINISHED_SQL}" if unfinished else ""
        return int(self._db.query(f"SELECT count(*) FROM jobs{where}", (), "count jobs")[0][0])

    def jobs(self, *, limit: int = 1000, status: str | None = None) -> list[JobRecord]:
        """The most recently created jobs first, optionally only those whose last status is
        ``status``.

        Raises:
            StorageError: The read failed.
        """
        if status is None:
            rows = self._db.query(
                f"SELECT {_COLUMNS} FROM jobs ORDER BY rowid DESC LIMIT ?", (limit,), "list jobs"
            )
        else:
            rows = self._db.query(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY rowid DESC LIMIT ?",
                (status, limit),
                "list jobs",
            )
        return [JobRecord._make(r) for r in rows]

    def prune(self, finished_before: float) -> int:
        """Delete jobs that ended before ``finished_before`` (keeps the file bounded).

        A pruned job id is forgotten: a later request with it counts as new.

        Returns:
            The number of jobs deleted.

        Raises:
            StorageError: The write failed; nothing changed.
        """
        terminal = ", ".join(f"'{s}'" for s in sorted(_TERMINAL))
        where = f"status IN ({terminal}) AND updated_at < ?"
        with self._db.transaction("prune finished jobs") as conn:
            conn.execute(
                f"DELETE FROM job_history WHERE job_id IN (SELECT job_id FROM jobs WHERE {where})",
                (finished_before,),
            )
            cur = conn.execute(f"DELETE FROM jobs WHERE {where}", (finished_before,))
        return int(cur.rowcount)
