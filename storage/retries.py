# The facilitator's retry bookkeeping in its jobs table. A job waiting for its next attempt has
# last status ``retrying`` and still names the worker of the failed attempt (so nothing routes
# it during its backoff); releasing it makes it a queued job again (``peer = ''``, no status yet;
# its history keeps the ``retrying`` entry), to be routed like a new job: once routed it holds its
# worker's credit, and a restart or a cancel treats it as the routed job it is.
from __future__ import annotations

from collections.abc import Sequence

from jobrelay.protocol.messages import JobStatus
from jobrelay.storage.database import Database

__all__ = ["next_attempt", "release_retries", "retrying_jobs"]

_RETRYING = JobStatus.RETRYING.value


def next_attempt(db: Database, job_id: str, payload: bytes) -> None:
    """Store the job's request anew: its next attempt (its status is recorded separately), or
    its current one with no attempts left.

    Raises:
        StorageError: The write failed.
    """
    with db.transaction(f"store the next attempt of {job_id!r}") as conn:
        conn.execute("UPDATE jobs SET payload = ? WHERE job_id = ?", (payload, job_id))


def release_retries(db: Database, job_ids: Sequence[str]) -> list[str]:
    """Queue the jobs among ``job_ids`` still waiting for their next attempt (not cancelled
    meanwhile); returns those queued.

    Raises:
        StorageError: The write failed.
    """
    released: list[str] = []
    with db.transaction("release retries") as conn:
        for job_id in job_ids:
            cur = conn.execute(
                "UPDATE jobs SET peer = '', status = NULL WHERE job_id = ? AND status = ?",
                (job_id, _RETRYING),
            )
            if cur.rowcount:
                released.append(job_id)
    return released


def retrying_jobs(db: Database) -> list[str]:
    """Jobs waiting for their next attempt (after a restart: their timers are gone).

    Raises:
        StorageError: The read failed.
    """
    rows = db.query("SELECT job_id FROM jobs WHERE status = ? ORDER BY rowid", (_RETRYING,), "list retries")
    return [str(r[0]) for r in rows]
