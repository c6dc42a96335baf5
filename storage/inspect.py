# Read-only summary of a jobrelay database, for `jobrelay status` and operators.
# Invariants: opens the file with mode=ro (no migrations, no writes, no new streams), so it is
# safe against a running worker's database from another process or thread; the summary is one
# consistent snapshot (read in one read transaction).
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

from jobrelay.storage.database import Database
from jobrelay.storage.inbox import Inbox, InboxState
from jobrelay.storage.ledger import JobLedger, JobRecord, StatusEntry
from jobrelay.storage.opening import open_database
from jobrelay.storage.outbox import OutboxStats
from jobrelay.storage.totals import read_totals

__all__ = ["DatabaseSummary", "JobRecordView", "inspect_database", "inspect_job", "outbox_streams"]


class DatabaseSummary(NamedTuple):
    """What a jobrelay database holds right now.

    Attributes:
        path: The file.
        schema_version: Its schema version.
        file_bytes: Size of the main file.
        wal_bytes: Size of its -wal file.
        outbox: Stats of each outgoing stream.
        inbox: Epoch, hwm and unconsumed rows of each remote stream.
        jobs_total: Jobs in the ledger.
        jobs_unfinished: Jobs without a terminal status.
        totals: Counters kept across restarts (replayed, duplicates_dropped, reconnects, ...).
    """

    path: str
    schema_version: int
    file_bytes: int
    wal_bytes: int
    outbox: list[OutboxStats]
    inbox: list[InboxState]
    jobs_total: int
    jobs_unfinished: int
    totals: dict[str, int]


def inspect_database(path: str | Path, *, now: float | None = None) -> DatabaseSummary:
    """Summarise a jobrelay database without modifying it.

    Args:
        path: The database file (may be in use by a running worker).
        now: The current time for ages (default: time.time()).

    Returns:
        The summary.

    Raises:
        StorageError: The file is missing, corrupt, not a jobrelay database or of another
            schema version.
    """
    with open_database(path, readonly=True, check=False) as db:
        with db.guard("begin read snapshot"):
            db.conn.execute("BEGIN")
        try:
            ledger = JobLedger(db)
            summary = DatabaseSummary(
                path=str(db.path),
                schema_version=db.schema_version,
                file_bytes=db.file_sizes()[0],
                wal_bytes=db.file_sizes()[1],
                outbox=outbox_streams(db, now=time.time() if now is None else now),
                inbox=Inbox(db).streams(),
                jobs_total=ledger.count(),
                jobs_unfinished=ledger.count(unfinished=True),
                totals=read_totals(db),
            )
        finally:
            with db.guard("end read snapshot"):
                db.conn.execute("COMMIT")
    return summary


class JobRecordView(NamedTuple):
    """A database's own record of one job: its ledger row and every status it recorded (on a
    worker: each status it published, in the same transaction that queued it to be sent)."""

    record: JobRecord
    history: list[StatusEntry]


def inspect_job(path: str | Path, job_id: str) -> JobRecordView | None:
    """One job as a jobrelay database records it (None if it does not know the job), read-only.

    Raises:
        StorageError: The file is missing, corrupt, not a jobrelay database or of another
            schema version.
    """
    with open_database(path, readonly=True, check=False) as db:
        with db.guard("begin read snapshot"):
            db.conn.execute("BEGIN")
        try:
            ledger = JobLedger(db)
            record = ledger.get(job_id)
            return None if record is None else JobRecordView(record, ledger.history(job_id))
        finally:
            with db.guard("end read snapshot"):
                db.conn.execute("COMMIT")


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
        "(SELECT created_at FROM outbox_segments o WHERE o.stream_id = s.id AND o.last_seq > s.last_acked "
        "ORDER BY o.last_seq LIMIT 1), "
        "s.last_seq, s.last_acked FROM outbox_streams s ORDER BY s.stream",
        (),
        "list outbox streams",
    )
    return [
        OutboxStats(r[0], r[1], r[2], r[3], None if r[4] is None else max(0.0, now - r[4]), r[5], r[6])
        for r in rows
    ]
