# The facilitator's routing facts: which worker a job was sent to, which jobs still wait for a
# worker, and what each worker reported about itself (machine specs, worker events).
# Invariants:
# - A job's owner is ``jobs.peer`` (the worker its request was appended for); "" means the job
#   is queued: recorded, not yet routed. An attempt is routed at most once (assign_job() only
#   moves a job from "" to a worker), and becomes "" again only by a retry's release
#   (storage/retries.py) or by its owner handing it back unstarted (release_job(): a draining
#   worker; the attempt keeps its number). A worker's unfinished jobs are those it owns
#   (outstanding_by_peer), so a release gives its credit back, in memory and after a restart.
# - facilitator_workers holds one row per worker that reported anything; its specs are the
#   latest reported. facilitator_worker_events keeps at most ``keep`` newest events per worker.
# - Every function runs inside the caller's transaction when there is one (Database.transaction
#   nests as a savepoint); the tables are schema migration v2 (storage/schema.py).
from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import msgspec

from jobrelay.protocol.messages import TERMINAL_STATUSES, JobStatus
from jobrelay.storage.database import Database
from jobrelay.storage.errors import StorageError

__all__ = [
    "JobOwner",
    "QueuedJob",
    "WorkerRecord",
    "assign_job",
    "job_owners",
    "outstanding_by_kind",
    "outstanding_by_peer",
    "queued_jobs",
    "queued_pinned",
    "record_specs",
    "record_worker_events",
    "release_job",
    "touch_worker",
    "worker_events",
    "worker_records",
]

_TERMINAL_SQL: Final = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))
_UNFINISHED: Final = f"(status IS NULL OR status NOT IN ({_TERMINAL_SQL}))"
# A job waiting for its next attempt still names the worker of the failed one, but holds none of
# its credit (that attempt is over; see facilitator/retries.py).
_HOLDS_CREDIT: Final = f"(status IS NULL OR status NOT IN ({_TERMINAL_SQL}, '{JobStatus.RETRYING.value}'))"
_CHUNK: Final = 500  # ids per IN (...) query
_NEWEST_BATCH: Final = (
    "SELECT last_n FROM facilitator_worker_event_batches WHERE worker_id = ? ORDER BY last_n DESC LIMIT 1"
)
# A worker's events, packed per batch: [[event, detail, at], ...]
_EVENTS_ENCODER: Final = msgspec.msgpack.Encoder()
_EVENTS_DECODER: Final = msgspec.msgpack.Decoder(list[tuple[str, str, float]])


class QueuedJob(NamedTuple):
    """A recorded job no worker has been chosen for yet."""

    job_id: str
    payload: bytes
    kind: str = ""


class WorkerRecord(NamedTuple):
    """What a worker reported about itself (``specs`` is the encoded MachineSpecs body)."""

    worker_id: str
    specs: bytes | None
    specs_at: float | None
    last_event: str
    last_seen: float | None


class JobOwner(NamedTuple):
    peer: str  # the worker it was routed to ("" while queued)
    kind: str


def job_owners(db: Database, job_ids: Sequence[str]) -> dict[str, JobOwner]:
    """The owner (``jobs.peer``) and kind of each known job among ``job_ids``; unknown ids are
    absent.

    Raises:
        StorageError: The read failed.
    """
    owners: dict[str, JobOwner] = {}
    unique = list(dict.fromkeys(job_ids))
    with db.guard("read job owners"):
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for job_id, peer, kind in db.conn.execute(
                f"SELECT job_id, peer, kind FROM jobs WHERE job_id IN ({marks})", chunk
            ):
                owners[job_id] = JobOwner(peer, kind)
    return owners


def assign_job(db: Database, job_id: str, worker_id: str) -> bool:
    """Route a queued job to ``worker_id``; False when it was not queued (unknown or routed).

    Raises:
        StorageError: The write failed.
    """
    with db.transaction(f"assign job {job_id!r}") as conn:
        cur = conn.execute("UPDATE jobs SET peer = ? WHERE job_id = ? AND peer = ''", (worker_id, job_id))
    return cur.rowcount == 1


def release_job(db: Database, job_id: str, worker_id: str) -> bool:
    """Queue again a job ``worker_id`` owned (it handed it back unstarted); False otherwise.

    Raises:
        StorageError: The write failed.
    """
    with db.transaction(f"release job {job_id!r}") as conn:
        cur = conn.execute("UPDATE jobs SET peer = '' WHERE job_id = ? AND peer = ?", (job_id, worker_id))
    return cur.rowcount == 1


def queued_jobs(
    db: Database, limit: int = 1000, kinds: Sequence[str] | None = None, excluding: Sequence[str] = ()
) -> list[QueuedJob]:
    """Unfinished jobs not routed to any worker yet, oldest first: of ``kinds`` only (None: of
    any kind), none of ``excluding``; ``limit`` -1: all.

    Raises:
        StorageError: The read failed.
    """
    where = f"peer = '' AND pinned = '' AND {_UNFINISHED}"
    args: list[object] = []
    if kinds is not None:
        where += f" AND kind IN ({','.join('?' * len(kinds))})"
        args.extend(kinds)
    if excluding:
        where += f" AND kind NOT IN ({','.join('?' * len(excluding))})"
        args.extend(excluding)
    rows = db.query(
        f"SELECT job_id, payload, kind FROM jobs WHERE {where} ORDER BY rowid LIMIT ?",
        (*args, limit),
        "list queued jobs",
    )
    return [QueuedJob(r[0], bytes(r[1]), r[2]) for r in rows]


def queued_pinned(db: Database) -> list[tuple[str, QueuedJob]]:
    """Unfinished jobs waiting for the worker they were pinned to, oldest first, as
    ``(worker, job)``: one read of the queued jobs (few are pinned), whatever the number of
    workers.

    Raises:
        StorageError: The read failed.
    """
    rows = db.query(
        f"SELECT job_id, payload, kind, pinned FROM jobs WHERE peer = '' AND pinned != '' AND {_UNFINISHED} "
        "ORDER BY rowid",
        (),
        "list pinned queued jobs",
    )
    return [(str(r[3]), QueuedJob(r[0], bytes(r[1]), r[2])) for r in rows]


def outstanding_by_kind(db: Database) -> dict[tuple[str, str], int]:
    """Unfinished routed jobs per ``(worker, kind)``.

    Raises:
        StorageError: The read failed.
    """
    rows = db.query(
        f"SELECT peer, kind, count(*) FROM jobs WHERE peer != '' AND {_HOLDS_CREDIT} GROUP BY peer, kind",
        (),
        "count outstanding jobs by kind",
    )
    return {(r[0], r[1]): int(r[2]) for r in rows}


def outstanding_by_peer(db: Database) -> dict[str, int]:
    """Unfinished routed jobs per worker.

    Raises:
        StorageError: The read failed.
    """
    rows = db.query(
        f"SELECT peer, count(*) FROM jobs WHERE peer != '' AND {_HOLDS_CREDIT} GROUP BY peer",
        (),
        "count outstanding jobs",
    )
    return {r[0]: int(r[1]) for r in rows}


def _upsert_worker(db: Database, worker_id: str) -> None:
    db.conn.execute("INSERT OR IGNORE INTO facilitator_workers (worker_id) VALUES (?)", (worker_id,))


def record_specs(db: Database, worker_id: str, specs: bytes, at: float) -> None:
    """Keep ``specs`` (an encoded MachineSpecs body) as the worker's latest.

    Raises:
        StorageError: The write failed.
    """
    with db.transaction(f"record specs of {worker_id!r}") as conn:
        _upsert_worker(db, worker_id)
        conn.execute(
            "UPDATE facilitator_workers SET specs = ?, specs_at = ? WHERE worker_id = ?",
            (specs, at, worker_id),
        )


def record_worker_events(
    db: Database, worker_id: str, events: Sequence[tuple[str, str, float]], keep: int = 1000
) -> None:
    """Append ``(event, detail, at)`` items; keep at least the newest ``keep`` per worker.

    One row per call (the events packed together): a row and an index entry per event, and a
    delete per event once ``keep`` is reached, took half the facilitator's store thread at a
    steady stream of events (scripts/bench_peers.py).

    Raises:
        ValueError: ``keep`` is below 1.
        StorageError: The write failed.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, not {keep}")
    if not events:
        return
    events = events[-keep:]  # older ones would go at once
    with db.transaction(f"record events of {worker_id!r}") as conn:
        _upsert_worker(db, worker_id)
        row = conn.execute(_NEWEST_BATCH, (worker_id,)).fetchone()
        newest = (row[0] if row else 0) + len(events)
        conn.execute(
            "INSERT INTO facilitator_worker_event_batches (worker_id, last_n, count, events) "
            "VALUES (?,?,?,?)",
            (worker_id, newest, len(events), _EVENTS_ENCODER.encode(list(events))),
        )
        conn.execute(
            "UPDATE facilitator_workers SET last_event = ? WHERE worker_id = ?", (events[-1][0], worker_id)
        )
        # Whole batches older than the newest ``keep`` events go; one that straddles stays.
        conn.execute(
            "DELETE FROM facilitator_worker_event_batches WHERE worker_id = ? AND last_n <= ?",
            (worker_id, newest - keep),
        )


def touch_worker(db: Database, worker_id: str, at: float) -> None:
    """Record the last time the worker was heard from.

    Raises:
        StorageError: The write failed.
    """
    with db.transaction(f"touch worker {worker_id!r}") as conn:
        _upsert_worker(db, worker_id)
        conn.execute("UPDATE facilitator_workers SET last_seen = ? WHERE worker_id = ?", (at, worker_id))


def worker_records(db: Database) -> list[WorkerRecord]:
    """Every worker that reported anything, by id.

    Raises:
        StorageError: The read failed.
    """
    rows = db.query(
        "SELECT worker_id, specs, specs_at, last_event, last_seen FROM facilitator_workers "
        "ORDER BY worker_id",
        (),
        "list workers",
    )
    return [WorkerRecord(r[0], None if r[1] is None else bytes(r[1]), r[2], r[3], r[4]) for r in rows]


def worker_events(db: Database, worker_id: str, limit: int = 100) -> list[tuple[str, str, float]]:
    """The newest ``limit`` events of a worker as ``(event, detail, at)``, oldest first.

    Raises:
        StorageError: The read failed (a batch that does not decode counts as a failed read).
    """
    action = f"read events of {worker_id!r}"
    found: list[tuple[str, str, float]] = []
    with db.guard(action):
        batches = db.conn.execute(
            "SELECT events FROM facilitator_worker_event_batches WHERE worker_id = ? ORDER BY last_n DESC",
            (worker_id,),
        )
        for (blob,) in batches:
            try:
                found[:0] = _EVENTS_DECODER.decode(blob)
            except msgspec.DecodeError as exc:
                raise StorageError(
                    f"{db.path}: {action}: a stored batch is corrupt: {exc}", path=db.path
                ) from None
            if len(found) >= limit:
                break
    return found[-limit:] if limit > 0 else []
